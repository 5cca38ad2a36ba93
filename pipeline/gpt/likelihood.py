"""How well a GPT predicts token grids: mean NLL with the true class token (used by training and
evaluate alike), and what code frequencies alone give.

Baselines: the entropy of the test codes' unigram distribution (a unigram model fitted on test itself:
optimistic) and the cross-entropy of the test codes under the train unigram distribution (add-one
smoothed: what a model that ignores context would score).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from pipeline.core.runtime import autocast, resolve_precision
from pipeline.gpt.model import GPT, training_inputs
from pipeline.tokenizer.files import TokenSplit


def bits_per_image(nats_per_token: float, tokens_per_image: int) -> float:
    return nats_per_token * tokens_per_image / math.log(2)


def nll_metrics(nll: float, tokens_per_image: int, split: str) -> dict[str, float]:
    """A split's NLL in nats/token (what training minimises) and in bits/image (comparable across tokenizers)."""
    return {f"{split}_nll": nll, f"{split}_bits_per_image": bits_per_image(nll, tokens_per_image)}


@torch.no_grad()
def mean_nll(
    model: GPT, split: TokenSplit, batch_size: int, device: torch.device, precision: str, rank: int = 0, world: int = 1
) -> float:
    """NLL in nats/token of `split` with the true class token as prefix. Under DDP each of the `world`
    ranks scores every world-th sequence and the sums are combined."""
    model.eval()
    total, count = 0.0, 0
    for idx in torch.arange(rank, len(split.tokens), world).split(batch_size):
        codes, labels = split.tokens[idx].to(device), split.labels[idx].to(device)
        with autocast(device, precision):
            _, loss, _ = model(training_inputs(codes, model.cfg.prefix(labels, len(idx), device)), codes)
        total += loss.item() * codes.numel()
        count += codes.numel()
    if world > 1:
        sums = torch.tensor([total, count], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        total, count = sums.tolist()
    return total / count


def saved_model_metrics(
    model: GPT, config: dict, split: TokenSplit, name: str, batch_size: int, device: torch.device
) -> dict[str, float | str]:
    """A saved GPT's NLL on `split` (nll_metrics + "precision"), at the precision its training resolved for its
    per-epoch NLL: the train section recorded in its model folder's `config`, resolved for `device`."""
    precision = resolve_precision(config.get("train", {}).get("precision", "fp32"), device, "train.precision")
    nll = mean_nll(model, split, batch_size, device, precision)
    return {**nll_metrics(nll, split.tokens.shape[1], name), "precision": precision}


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
