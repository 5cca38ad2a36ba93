"""Score token grids generated elsewhere (another machine, a study) the way the evaluate stage scores samples.

    python studies/score_samples.py RUN.npz|samples.h5 [...] [--out scores.json] [--params params.yaml]

Each run is a sample stage's samples.h5 or an .npz holding `tokens` (uint16 (N, H*W)) and `labels` (uint8
(N,), conditional samples) from `pipeline.gpt.sampling.sample_tokens`. They are decoded by this checkout's
decoder (data/models/decoder) and scored by the evaluate stage's scorer (`pipeline.gpt.evaluate.score_token_grids`,
pipeline/evaluation/distribution.py `SampleScorer`) against this checkout's reference stage output and raw
images, with the evaluate section of params.yaml (evaluator, n_samples: the first min(n_samples, N) of a
seeded draw, seed): Inception FID/KID vs the train statistics next to the floor, class agreement by the
independent evaluator. So a GPT trained on a lent GPU (whose images cannot travel there) is scored here
with the same code and the same reference as the CPU pipeline's eval.json.
Run it from the project root after `dvc repro reference decoder` (or a whole run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.core.atomic import write_json
from pipeline.evaluation.distribution import SampleScorer, score_summary
from pipeline.gpt.evaluate import score_token_grids
from pipeline.gpt.sampling import read_token_grids, sample_set_name
from pipeline.params import DEFAULT_PARAMS, load_params
from pipeline.paths import DECODER_DIR, RAW, REFERENCE
from pipeline.tokenizer.decoding import load_token_decoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="samples.h5 or .npz files with tokens and labels")
    ap.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    ap.add_argument("--out", type=Path, help="write every run's scores here as JSON")
    args = ap.parse_args()
    scorer = SampleScorer.load(load_params(args.params).evaluate, RAW, REFERENCE)
    decoder = load_token_decoder(DECODER_DIR)
    scores = {}
    for run in args.runs:
        name = sample_set_name(run)
        scores[name] = score_token_grids(scorer, decoder, *read_token_grids(run))
        print(f"{name}: {score_summary(scores[name])}", flush=True)
    if args.out:
        write_json(args.out, scores)


if __name__ == "__main__":
    main()
