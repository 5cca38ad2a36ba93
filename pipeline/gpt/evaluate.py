"""The evaluate stage's work: how good the generator is, as a model of the tokens and as an image source.

`evaluate_generator` scores the GPT's test NLL (likelihood.py, next to unigram baselines) and the sample
stage's images (pipeline/evaluation/distribution.py `SampleScorer`: evaluate.n_samples of them, Inception
FID/KID against the reference stage's train statistics next to the floor, precision/recall, class
agreement and the evaluator's proxy distance); it writes the per-class table and returns the results.
`score_token_grids` scores token grids generated elsewhere (a study, a lent GPU) with the same scorer.
The tokenizer is scored by the reconstruct stage (pipeline/tokenizer/scoring.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pipeline.core.errors import PipelineError
from pipeline.core.plots import write_csv
from pipeline.core.results import Results
from pipeline.core.runtime import resolve_device
from pipeline.data import cifar10
from pipeline.evaluation.distribution import SampleScorer, sample_results
from pipeline.gpt import likelihood, sampling
from pipeline.gpt.model import load_gpt
from pipeline.params import EvaluateParams
from pipeline.tokenizer import files as tok
from pipeline.tokenizer.decoding import TokenDecoder


def _gpt_metrics(p: EvaluateParams, gpt_dir: Path, decoder_dir: Path, tokens: Path) -> dict:
    """The GPT's test NLL at its training precision, and the unigram baselines."""
    device = resolve_device(p.device)
    meta = tok.read_meta(tokens)
    train, test = tok.read_split(tokens, "train", meta), tok.read_split(tokens, "test", meta)
    model = load_gpt(gpt_dir, device)
    tok.check_compatible(model.cfg, meta, str(gpt_dir), str(tokens))
    gpt_config = sampling.check_same_codebook(gpt_dir, decoder_dir, tokens, meta)
    gpt = likelihood.saved_model_metrics(model, gpt_config, test, "test", p.batch_size, device)
    return gpt | likelihood.unigram_baselines(train.tokens, test.tokens, meta.k)


def _write_class_table(per_class: list[dict], names: tuple[str, ...], target: Path) -> None:
    """The share of samples the evaluator puts in each class and, conditional samples, its agreement."""
    write_csv(
        target,
        ("class", "share_of_samples", "agreement"),
        [
            (
                names[r["class"]],
                f"{r['share']:.4f}",
                "" if "agreement" not in r or math.isnan(r["agreement"]) else f"{r['agreement']:.4f}",
            )
            for r in per_class
        ],
    )


def evaluate_generator(
    p: EvaluateParams,
    gpt_dir: Path,
    decoder_dir: Path,
    tokens: Path,
    raw: Path,
    reference: Path,
    samples: Path,
    classes_csv: Path,
) -> Results:
    """The evaluate stage: the test NLL of the GPT in `gpt_dir` on the token file `tokens`, and the sample
    stage's images (`samples`) scored against the raw file and the reference file; writes the per-class
    table to `classes_csv` and returns the stage's results (`eval_results`)."""
    gpt = _gpt_metrics(p, gpt_dir, decoder_dir, tokens)  # the GPT is freed before the samples are scored
    drawn = sampling.read_samples(samples)
    seq_len = tok.read_meta(tokens).seq_len
    if drawn.tokens.shape[1] != seq_len:
        raise PipelineError(
            f"{samples}: {drawn.tokens.shape[1]} tokens per image vs {seq_len} in {tokens}; re-run the sample stage"
        )
    scorer = SampleScorer.load(p, raw, reference)
    scores, per_class = scorer.score(drawn.images, drawn.labels if drawn.conditional else None)
    _write_class_table(per_class, drawn.classes or cifar10.CLASSES, classes_csv)
    return eval_results(gpt, scores, drawn.conditional, scorer.device)


def eval_results(gpt: dict, scores: dict, conditional: bool, device: torch.device) -> Results:
    """metrics/eval.json: the GPT's test NLL and the samples' `sample_results`; info/eval.json: how."""
    samples = sample_results(scores)
    metrics = {
        "test_nll": gpt["test_nll"],
        "test_bits_per_image": gpt["test_bits_per_image"],
        "unigram_bits_per_image": gpt["unigram_train_xent_bits_per_image"],  # a train unigram, scored on test
        **samples.metrics,
    }
    info = {
        **samples.info,
        "conditional": conditional,
        "gpt_precision": gpt["precision"],
        "unigram_test_entropy_bits_per_image": gpt["unigram_test_entropy_bits_per_image"],
        "device": str(device),
    }
    return Results(metrics, info)


def score_token_grids(
    scorer: SampleScorer, decoder: TokenDecoder, tokens: np.ndarray, labels: np.ndarray | None
) -> dict:
    """Token grids generated elsewhere (uint16 (N, H*W), their labels or None) decoded by `decoder` and scored
    as the evaluate stage scores the sample stage's images, on min(evaluate.n_samples, N) of them."""
    images = decoder.decode(tokens, scorer.p.batch_size, scorer.device)
    return scorer.score(images, labels, min(scorer.p.n_samples, len(images)))[0]
