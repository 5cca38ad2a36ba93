"""The training skeleton both trained models share (the GPT, the token decoder) and the decisions made once.

    run = Run(model, optimizer, scaler)
    resume(run, checkpoint)                       # the checkpoint of this exact run, if there is one
    fit(run, checkpoint, epochs, train_epoch, validate, Selection("val_loss", higher_is_better=False))

- `train_step`: THE optimisation step (forward under autocast, backward, optional gradient clipping,
  gradient-scaler update). `set_lr` sets the scheduled rate (`schedule.lr_at`) before each step.
- `derive_seed`: the one formula that turns (seed, epoch or step, stream) into the seed of a generator, so
  each random draw is a function of the params and the position in the run, never of what ran before it:
  a resumed run draws exactly what the uninterrupted one drew.
- `fit`: the epoch loop. Each epoch runs the model's own `train_epoch(epoch)`, then `validate()`; the
  merged record joins `run.history` and the best epoch on the validation value named by `Selection` is
  kept (its weights cloned). After every epoch ONE checkpoint (`core.checkpoint`) holds the last epoch
  (model, optimizer, scaler, epoch, step, history, best so far, time); at the end the model holds the best
  epoch's weights, which is what the stages save.
- Distributed runs (the GPT under torchrun): rank 0 alone reads the checkpoint and broadcasts it
  (`resume(..., world=N)`), and alone logs and writes it (`fit(..., main=False)` on the other ranks).

Who writes what (both training stages): the model's library function trains through this skeleton,
writes its model folder and per-epoch curves and returns its metrics dict; the stage writes
metrics/<stage>.json and logs one line.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from pipeline.core.checkpoint import Checkpoint
from pipeline.core.errors import PipelineError
from pipeline.core.runtime import autocast

log = logging.getLogger(__name__)

SEED_SCALE, PART_BASE = 1_000_003, 7_919


def derive_seed(seed: int, *parts: int) -> int:
    """A generator seed from the run's `seed` and its position, e.g. (seed, epoch, stream):
    seed * 1_000_003 + the parts read as the digits of a base-7_919 number (seed*1_000_003 + epoch*7_919
    + stream for two parts). Streams (the last part) below 7_919 never collide for one (seed, epoch)."""
    value = 0
    for part in parts:
        value = value * PART_BASE + part
    return (seed * SEED_SCALE + value) % 2**63


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(
    loss_of: Callable[..., torch.Tensor],
    batch: tuple,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    precision: str,
    grad_clip: float = 0.0,
    params: Iterable[torch.Tensor] = (),
) -> torch.Tensor:
    """One update: `loss_of(*batch)` (the forward pass and loss) under autocast to `precision`, backward, the
    gradient norm of `params` clipped at `grad_clip` (0: no clipping), the scaled optimizer step.
    Returns the detached loss. Nothing here reads a value back to the host, so on a GPU consecutive steps
    queue up without waiting (fp16's scaler checks the gradients for inf in `scaler.step`, and does sync)."""
    with autocast(device, precision):
        loss = loss_of(*batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


@dataclass(frozen=True)
class Selection:
    """Which epoch's model is kept: the one with the best value of history key `key`."""

    key: str  # e.g. "val_loss" (the GPT's NLL) or "val_psnr_db" (the decoder's)
    higher_is_better: bool

    def improves(self, value: float, best: dict | None) -> bool:
        if best is None:
            return True
        return value > best["value"] if self.higher_is_better else value < best["value"]


@dataclass
class Run:
    """What a training run is at the end of an epoch; all but the last two fields are checkpointed."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    epoch: int = 0  # epochs done
    step: int = 0  # optimisation steps done; the trainers' step loops advance it
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, train_epoch's and validate's values
    best: dict | None = None  # epoch, value, model (a CPU copy of the best epoch's weights)
    seconds: float = 0.0  # training + validation, over every epoch (resumed ones included)
    # more trained state of the run (e.g. the decoder's discriminator): objects with state_dict / load_state_dict,
    # checkpointed under their names
    extras: dict = field(default_factory=dict)
    # this process only (0 when every epoch came from the checkpoint): for throughput
    epochs_here: int = 0
    train_seconds_here: float = 0.0  # train_epoch only, no validation

    def state(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "best": self.best,
            "seconds": self.seconds,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            **({"extras": {name: x.state_dict() for name, x in self.extras.items()}} if self.extras else {}),
        }

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.best = int(state["epoch"]), int(state["step"]), state["best"]
        self.history, self.seconds = list(state["history"]), float(state["seconds"])
        for name, x in self.extras.items():
            x.load_state_dict(state["extras"][name])


def resume(
    run: Run, checkpoint: Checkpoint, *, main: bool = True, world: int = 1, device: torch.device | None = None
) -> Run:
    """Load `checkpoint` into `run` when this exact run (params, inputs, code) wrote it. With `world` > 1
    processes rank 0 (`main`) alone reads it, as the folder may be local to its node, and broadcasts it."""
    state = checkpoint.load() if main else None
    if world > 1:
        box = [state]
        dist.broadcast_object_list(box, src=0, device=device)
        state = box[0]
    if state is not None:
        run.load_state(state)
    return run


def fit(
    run: Run,
    checkpoint: Checkpoint | None,
    epochs: int,
    train_epoch: Callable[[int], dict],
    validate: Callable[[], dict],
    selection: Selection,
    *,
    describe: Callable[[dict, float], str],
    main: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
) -> Run:
    """Run epochs run.epoch .. epochs-1, then load the best epoch's weights into run.model.

    `train_epoch(epoch)` runs one epoch's steps (advancing run.step) and returns its history values
    (train_loss); `validate()` returns the validation values, `selection.key` among them. `describe(record,
    seconds)` words an epoch's values for its log line. `checkpoint` None: nothing is saved (a study).
    `on_epoch_end(epoch)` (1-based) runs after the checkpoint is written: the tests interrupt runs there."""
    what = checkpoint.what if checkpoint is not None else "training"  # the params section, in messages
    for epoch in range(run.epoch, epochs):
        t0 = time.perf_counter()
        record = {"epoch": epoch + 1, **train_epoch(epoch)}
        run.train_seconds_here += time.perf_counter() - t0
        record |= validate()
        diverged = {k: v for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)}
        if diverged:  # never checkpoint or save a model of NaNs as a success
            raise PipelineError(
                f"{what}: training diverged at epoch {epoch + 1} ({diverged}); nothing was saved. Lower "
                f"{what}.lr, or use fp32 ({what}.precision) if it ran in fp16"
            )
        seconds = time.perf_counter() - t0
        run.epoch, run.seconds, run.epochs_here = epoch + 1, run.seconds + seconds, run.epochs_here + 1
        run.history.append(record)
        if selection.improves(record[selection.key], run.best):
            weights = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
            run.best = {"epoch": epoch + 1, "value": record[selection.key], "model": weights}
        if main:
            log.info(
                "%s epoch %d/%d: %s; best: epoch %d",
                what,
                epoch + 1,
                epochs,
                describe(record, seconds),
                run.best["epoch"],
            )
            if checkpoint is not None:
                checkpoint.save(run.state())
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    run.model.load_state_dict(run.best["model"])
    return run
