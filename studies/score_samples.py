"""Score token grids generated elsewhere (another machine, a study) the way the evaluate stage scores samples.

    python studies/score_samples.py RUN.npz|samples.h5 [...] [--out scores.json] [--params params.yaml]

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


from pipeline.core.atomic import write_json
from pipeline.core.runtime import resolve_device
from pipeline.data import cifar10
from pipeline.evaluation.classifier import load_evaluator
from pipeline.evaluation.distribution import sample_quality
from pipeline.evaluation.reference import Reference, description, read_reference
from pipeline.gpt.sampling import read_token_grids, sample_set_name
from pipeline.params import DEFAULT_PARAMS, EvaluateParams, load_params
from pipeline.tokenizer.decoding import TokenDecoder, load_token_decoder
from pipeline.paths import DECODER_DIR, RAW, REFERENCE


@dataclass
class SampleScorer:
    """This checkout's Inception reference, raw images and evaluator, loaded once: scores token grids decoded
    by any decoder of its tokenizer exactly as the evaluate stage scores the sample stage's images."""

    p: EvaluateParams
    device: torch.device
    ref: Reference
    evaluator: torch.nn.Module
    raw_train: np.ndarray
    raw_test: np.ndarray

    @classmethod
    def load(cls, p: EvaluateParams) -> SampleScorer:
        raw_train, raw_test = cifar10.read_split(RAW, "train"), cifar10.read_split(RAW, "test")
        return cls(p, resolve_device(p.device), read_reference(REFERENCE), load_evaluator(p.evaluator),
                   raw_train.images, raw_test.images)  # fmt: skip

    def score(self, decoder: TokenDecoder, tokens: np.ndarray, labels: np.ndarray | None) -> dict:
        p = self.p
        images = decoder.decode(tokens, p.batch_size, self.device)
        n = min(p.n_samples, len(images))
        quality, _ = sample_quality(
            images, labels, self.raw_test, self.raw_train, self.ref, evaluator=self.evaluator,
            evaluator_name=p.evaluator, n=n, batch_size=p.batch_size, kid_subset_size=p.kid_subset_size,
            device=self.device, seed=p.seed,
        )  # fmt: skip
        return {**quality, "inception": description(self.ref, n, "train"), "evaluator": p.evaluator}


def summary(scores: dict) -> str:
    """One line: FID next to its floor, KID, class agreement."""
    s, floor = scores["samples"], scores["floor_test_images"]
    agreement = "n/a" if s["class_agreement"] is None else f"{100 * s['class_agreement']:.1f} %"
    return (f"{s['n']} samples, Inception FID {s['fid_inception']:.2f} (floor {floor['fid_inception']:.2f} "
            f"at {floor['n']}), KID {s['kid_inception_mean']:.4f}, class agreement {agreement}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="samples.h5 or .npz files with tokens and labels")
    ap.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    ap.add_argument("--out", type=Path, help="write every run's scores here as JSON")
    args = ap.parse_args()
    scorer, decoder = SampleScorer.load(load_params(args.params).evaluate), load_token_decoder(DECODER_DIR)
    scores = {}
    for run in args.runs:
        name = sample_set_name(run)
        scores[name] = scorer.score(decoder, *read_token_grids(run))
        print(f"{name}: {summary(scores[name])}", flush=True)
    if args.out:
        write_json(args.out, scores)


if __name__ == "__main__":
    main()
