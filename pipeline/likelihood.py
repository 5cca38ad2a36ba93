"""How well the GPT predicts the test codes, next to what code frequencies alone give.

The GPT's test NLL comes from the training code's own evaluation (`gpt_training.evaluate`, true class
token as prefix). Baselines: the entropy of the test codes' unigram distribution (a unigram model
fitted on test itself: optimistic) and the cross-entropy of the test codes under the train unigram
distribution (add-one smoothed: what a model that ignores context would score).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipeline import tokens as tok
from pipeline.gpt import CONFIG_FILE, GPT
from pipeline.gpt_training import DistInfo, bits_per_image, evaluate, nll_metrics
from pipeline.params import TrainParams


def training_precision(model_dir: str | Path) -> str:
    """The precision the model was trained (and evaluated per epoch) with; fp32 if not recorded."""
    config = json.loads((Path(model_dir) / CONFIG_FILE).read_text())
    return config.get("train", {}).get("precision", "fp32")


def gpt_test_nll(model: GPT, test: tok.TokenSplit, batch_size: int, device: torch.device, precision: str) -> dict[str, float]:
    # evaluate() reads only `precision` from the train params.
    nll = evaluate(model, test, batch_size, TrainParams.model_construct(precision=precision), DistInfo(device=device))
    return {**nll_metrics(nll, model.cfg.block_size), "precision": precision}


def _counts(tokens: torch.Tensor | np.ndarray, k: int) -> np.ndarray:
    return np.bincount(np.asarray(tokens).ravel().astype(np.int64), minlength=k).astype(np.float64)


def unigram_baselines(train_tokens, test_tokens, k: int) -> dict[str, float]:
    """Unigram entropy of the test codes and train-unigram cross-entropy on test, nats/token and bits/image."""
    seq = np.asarray(test_tokens).shape[1]
    test = _counts(test_tokens, k)
    p_test = test[test > 0] / test.sum()
    entropy = float(-(p_test * np.log(p_test)).sum())
    train = _counts(train_tokens, k) + 1.0  # add-one: a code unseen in train must not cost infinity
    xent = float(-(test * np.log(train / train.sum())).sum() / test.sum())
    return {
        "unigram_test_entropy": entropy,
        "unigram_test_entropy_bits_per_image": bits_per_image(entropy, seq),
        "unigram_train_xent": xent,
        "unigram_train_xent_bits_per_image": bits_per_image(xent, seq),
    }
