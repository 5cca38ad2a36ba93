"""One optimisation step of the GPT: the trainer's and the benchmarks' (bench/) single definition.

Nothing in the step reads a value back to the host, so on a GPU consecutive steps queue up without
waiting (with fp16's gradient scaler, `scaler.step` checks the gradients for inf and does sync).
"""

from __future__ import annotations

from typing import Iterable

import torch

from pipeline.core.runtime import autocast


def train_step(net: torch.nn.Module, params: Iterable[torch.Tensor], opt: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, inputs: torch.Tensor, targets: torch.Tensor, precision: str,
               grad_clip: float) -> torch.Tensor:  # fmt: skip
    """Forward (autocast to `precision`), backward, clip the gradient norm of `params` at `grad_clip`
    (0: no clipping), update; returns the detached loss."""
    with autocast(inputs.device, precision):
        _, loss, _ = net(inputs, targets)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(opt)
    scaler.update()
    return loss.detach()
