"""Score token grids generated elsewhere (another machine, a study) the way the evaluate stage scores samples.

    python tools/score_samples.py RUN.npz|samples.h5 [...] [--out scores.json] [--params params.yaml]

Each run is a sample stage's samples.h5 or an .npz holding `tokens` (uint16 (N, H*W)) and `labels` (uint8
(N,), conditional samples) from `pipeline.gpt.sampling.sample_tokens`. They are decoded by this checkout's decoder (data/models/decoder)
and scored with pipeline/evaluation/distribution.py against this checkout's reference stage output and
raw images, with the evaluate section of params.yaml (evaluator, n_samples: the first
min(n_samples, N) of a seeded draw, seed): Inception FID/KID vs the train statistics next to the floor, class
agreement by the independent evaluator. So a GPT trained on a lent GPU (whose images cannot travel there)
is scored here with the same code and the same reference as the CPU pipeline's eval.json.
Run it from the project root after `dvc repro reference decoder` (or a whole run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the project root

from pipeline.core.atomic import write_json  # noqa: E402
from pipeline.core.runtime import resolve_device  # noqa: E402
from pipeline.data import cifar10  # noqa: E402
from pipeline.evaluation.classifier import load_evaluator  # noqa: E402
from pipeline.evaluation.distribution import sample_quality  # noqa: E402
from pipeline.evaluation.reference import description, read_reference  # noqa: E402
from pipeline.gpt.sampling import read_token_grids, sample_set_name  # noqa: E402
from pipeline.params import DEFAULT_PARAMS, load_params  # noqa: E402
from pipeline.tokenizer.decoding import load_token_decoder  # noqa: E402
from stages.paths import DECODER_DIR, RAW, REFERENCE  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="samples.h5 or .npz files with tokens and labels")
    ap.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    ap.add_argument("--out", type=Path, help="write every run's scores here as JSON")
    args = ap.parse_args()
    p = load_params(args.params).evaluate
    device = resolve_device(p.device)
    decoder, ref, evaluator = load_token_decoder(DECODER_DIR), read_reference(REFERENCE), load_evaluator(p.evaluator)
    raw_train, raw_test = cifar10.read_split(RAW, "train"), cifar10.read_split(RAW, "test")
    scores = {}
    for run in args.runs:
        name, (tokens, labels) = sample_set_name(run), read_token_grids(run)
        images = decoder.decode(tokens, p.batch_size, device)
        n = min(p.n_samples, len(images))
        quality, _ = sample_quality(
            images, labels, raw_test.images, raw_train.images, ref, evaluator=evaluator,
            evaluator_name=p.evaluator, n=n, batch_size=p.batch_size, kid_subset_size=p.kid_subset_size,
            device=device, seed=p.seed,
        )  # fmt: skip
        scores[name] = {**quality, "inception": description(ref, n, "train"), "evaluator": p.evaluator}
        s, floor = quality["samples"], quality["floor_test_images"]
        agreement = "n/a" if s["class_agreement"] is None else f"{100 * s['class_agreement']:.1f} %"
        print(f"{name}: {n} samples, Inception FID {s['fid_inception']:.2f} (floor {floor['fid_inception']:.2f} "
              f"at {floor['n']}), KID {s['kid_inception_mean']:.4f}, class agreement {agreement}", flush=True)  # fmt: skip
    if args.out:
        write_json(args.out, scores)


if __name__ == "__main__":
    main()
