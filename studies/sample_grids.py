"""Sample token grids from the trained GPT without decoding them, for a machine that has the GPT and the token
file but not the images or the decoder (a lent GPU: CIFAR-10 does not travel there, the token file does).

    python studies/sample_grids.py OUT_DIR [--name NAME] [--seeds 0,1,2,3,4] [--n-per-class N] [--params params.yaml]

For each seed: OUT_DIR/NAME_nN_sSEED.npz with `tokens` (uint16 (N, H*W)) and `labels` (uint8 (N,)), the grids the
sample stage draws with sample.seed = SEED and sample.n_per_class = N (the other sample params from --params);
score them with studies/score_samples.py where the decoder and the images are. Also OUT_DIR/NAME_test_nll.json:
the GPT's test NLL exactly as the evaluate stage computes it (evaluate.batch_size, the training precision).
Run it from the project root after the train stage.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import read_model_config
from pipeline.core.atomic import atomic_path, write_json
from pipeline.core.runtime import resolve_device
from pipeline.gpt import likelihood, sampling
from pipeline.gpt.model import load_gpt
from pipeline.params import DEFAULT_PARAMS, load_params
from pipeline.paths import GPT_DIR, TOKENS
from pipeline.tokenizer import files as tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--name", default="gpt", help="file name prefix of the sample sets")
    ap.add_argument("--seeds", default=None, help="comma-separated sample seeds (default: sample.seed)")
    ap.add_argument("--n-per-class", type=int, default=None, help="default: sample.n_per_class")
    ap.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    args = ap.parse_args()
    params = load_params(args.params)
    p = params.sample
    seeds = [p.seed] if args.seeds is None else [int(s) for s in args.seeds.split(",")]
    n_per_class = args.n_per_class or p.n_per_class
    device = resolve_device(p.device)
    meta = tok.read_meta(TOKENS)
    model = load_gpt(GPT_DIR, device)
    tok.check_compatible(model.cfg, meta, str(GPT_DIR), str(TOKENS))
    args.out.mkdir(parents=True, exist_ok=True)

    labels = sampling.sample_labels(model.cfg, n_per_class)
    for seed in seeds:
        t0 = time.perf_counter()
        tokens = sampling.sample_tokens(model, labels, p.model_copy(update={"seed": seed, "n_per_class": n_per_class}))
        path = args.out / f"{args.name}_n{len(labels)}_s{seed}.npz"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, tokens=tokens, labels=labels)
        print(
            f"{path}: {len(labels)} grids, sample seed {seed}, {time.perf_counter() - t0:.1f} s on {device}", flush=True
        )

    config, test = read_model_config(GPT_DIR, "train"), tok.read_split(TOKENS, "test", meta)
    nll = likelihood.saved_model_metrics(model, config, test, "test", params.evaluate.batch_size, device)
    nll_path = args.out / f"{args.name}_test_nll.json"
    write_json(nll_path, nll)
    print(f"{nll_path}: test {nll['test_nll']:.4f} nats/token ({nll['precision']})")


if __name__ == "__main__":
    main()
