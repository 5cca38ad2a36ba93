"""The learning-rate schedule of both trained models: linear warm-up, then cosine decay."""

from __future__ import annotations

import math


def lr_at(step: int, total: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Linear warm-up to `lr` over `warmup_steps`, then cosine decay to `min_lr` at step `total`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))
