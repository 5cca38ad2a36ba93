"""Train the token GPT: AdamW, warmup + cosine schedule, per-epoch test NLL, resumable, DDP-ready.

One code path for 1 process and for `torchrun --nproc_per_node=N` (NCCL on GPU, gloo on CPU):
`batch_size` is the GLOBAL batch, split evenly over ranks; rank 0 alone writes files.

The epoch loop, checkpoint, resume, step and best-epoch selection are the shared skeleton
(`core.training`); this file holds what is the GPT's own: DDP, torch.compile, flips, label dropout.
`train` writes the model folder and plots/train_loss.csv/png and returns the results the stage writes.

Model selection: after every epoch the NLL of the validation split is measured; the saved model is
the epoch with the lowest one (train.json says which and why), while the resume checkpoint holds the
last epoch (and the best one so far). The test split is never read here.

Augmentation (train.flip): every epoch each image is drawn either as it is or as the tokens of its
mirror image (the `train_flip` split, made by extract + codebook), with probability 1/2.

Determinism: the initial weights, the flips, the shuffle (DistributedSampler), label dropout and every rank's
dropout RNG are derived from (seed, epoch[, rank]) (`core.training.derive_seed`) inside a forked RNG (the caller's generators are
left as they were), so a run resumed from an epoch checkpoint (`core.checkpoint`: same params, tokens
and code) replays exactly what the uninterrupted run would have done, whatever the number of processes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from matplotlib.figure import Figure
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from pipeline.core.checkpoint import Checkpoint, run_fingerprint
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import sha256_file
from pipeline.core.plots import save_png, write_csv
from pipeline.core.progress import Eta
from pipeline.core.results import Results, minutes
from pipeline.core.runtime import adamw, grad_scaler, resolve_compile, resolve_device, resolve_precision
from pipeline.core.schedule import lr_at
from pipeline.core.training import Run, Selection, derive_seed, fit, resume, set_lr, train_step
from pipeline.gpt.likelihood import bits_per_image, mean_nll, nll_metrics
from pipeline.gpt.model import GPT, GPTConfig, save_gpt, training_inputs
from pipeline.params import TrainParams
from pipeline.tokenizer import files as tok

log = logging.getLogger(__name__)

POSTFIX_EVERY = 10  # loss.item() synchronises a GPU: read it only now and then
SELECTION = Selection("val_loss", higher_is_better=False)  # the saved model: the lowest validation NLL
# derive_seed streams of an epoch's draws (kept from before the shared skeleton: same runs, same numbers)
LABEL_DROP_STREAM, DROPOUT_STREAM, MIRROR_STREAM = 0, 1, 2
N_STREAMS = 3


def dropout_stream(rank: int) -> int:
    """Rank r's dropout stream: 1, 4, 7, ... (rank 0 keeps stream 1; no rank shares a stream with the others)."""
    return DROPOUT_STREAM + N_STREAMS * rank


@dataclass(frozen=True)
class TrainPaths:
    tokens: Path
    model_dir: Path
    checkpoints: Path
    plots: Path  # directory for train_loss.csv / .png


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextmanager
def distributed(device: str) -> Iterator[DistInfo]:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield DistInfo(device=resolve_device(device))
        return
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        yield DistInfo(rank, world, dev)
    finally:
        dist.destroy_process_group()


def model_config(p: TrainParams, meta: tok.TokenMeta) -> GPTConfig:
    """The GPT's shape: the token file's (vocabulary, grid, classes), the rest from train params of the same name."""
    from_params = {f.name for f in fields(GPTConfig)} & set(TrainParams.model_fields)
    return GPTConfig(
        k=meta.k, grid_h=meta.grid_h, grid_w=meta.row_len, n_classes=meta.n_classes, **p.model_dump(include=from_params)
    )


def _all_reduce(values: list[float], info: DistInfo) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    if info.world > 1:
        dist.all_reduce(t)
    return t.tolist()


class EpochBatches:
    """This rank's share of each global batch, via DistributedSampler (drop_last: equal shares)."""

    def __init__(self, n: int, p: TrainParams, info: DistInfo):
        if p.batch_size % info.world:
            raise PipelineError(f"train.batch_size = {p.batch_size} must be divisible by the {info.world} processes")
        self.local = p.batch_size // info.world
        self.sampler = DistributedSampler(
            range(n), num_replicas=info.world, rank=info.rank, shuffle=True, seed=p.seed, drop_last=True
        )
        self.steps = len(self.sampler) // self.local
        if self.steps == 0:
            raise PipelineError(f"train.batch_size = {p.batch_size} exceeds the {n} training sequences")

    def epoch(self, epoch: int, device: torch.device) -> list[torch.Tensor]:
        """This epoch's batches of sequence indices, on `device` (one copy per epoch, none per step)."""
        self.sampler.set_epoch(epoch)
        idx = torch.tensor(list(self.sampler))
        return list(idx[: self.steps * self.local].to(device).split(self.local))


def train(
    p: TrainParams,
    paths: TrainPaths,
    info: DistInfo = DistInfo(),
    *,
    code: str,
    precision: str | None = None,
    slow_hint: str = "",
    on_epoch_end: Callable[[int], None] | None = None,
) -> Results:
    """Train (or resume) and, on rank 0, write the model folder and the loss curves; returns the results
    (metrics/train.json and info/train.json, which the stage writes on rank 0).

    `code` identifies the training code (hashing.code_sha256): a checkpoint written by other code is
    not resumed. `precision` is p.precision resolved for the device (`runtime.resolve_precision`;
    None: resolved here). `slow_hint` is logged when the up-front estimate is long."""
    if precision is None:
        precision = resolve_precision(p.precision, info.device, "train.precision")
    meta = tok.read_meta(paths.tokens)
    train_split = tok.read_split(paths.tokens, "train", meta)
    val_split = tok.read_split(paths.tokens, "val", meta)
    flipped = _flipped_tokens(paths.tokens, meta, train_split) if p.flip else None
    cfg = model_config(p, meta)
    with ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[info.device] if info.device.type == "cuda" else []))
        torch.manual_seed(p.seed)  # identical initial weights on every rank
        model = GPT(cfg).to(info.device)
        opt = adamw(model.param_groups(p.weight_decay), info.device, lr=p.lr, betas=(p.beta1, p.beta2))
        batches = EpochBatches(len(train_split.tokens), p, info)
        total_steps = batches.steps * p.epochs
        # how the numbers are computed (the precision as resolved here), not where
        params = p.model_dump(exclude={"device", "compile"}) | {"precision": precision}
        fingerprint = run_fingerprint(params, {"tokens": sha256_file(paths.tokens)}, code)
        ckpt = Checkpoint(paths.checkpoints, fingerprint, "train")
        run = Run(model, opt, grad_scaler(info.device, precision))
        resume(run, ckpt, main=info.main, world=info.world, device=info.device)

        if info.world > 1:
            # the only buffers are constants derived from the config (masks, rotary tables): no per-step sync
            net = DistributedDataParallel(
                model, device_ids=[info.device.index] if info.device.type == "cuda" else None, broadcast_buffers=False
            )
        else:
            net = model
        compile_mode = resolve_compile(p.compile, info.device, info.world)
        if compile_mode is not None:
            net = torch.compile(net, mode=compile_mode)  # weights stay on `model`: no _orig_mod. prefix in saved files
        graphs = compile_mode == "reduce-overhead" and info.device.type == "cuda"
        if info.main:
            log.info(
                "GPT %.2fM params, vocab %d, %d slots; %d train (%s) / %d val sequences; %d steps/epoch x %d epochs; "
                "global batch %d over %d process(es) on %s in %s",
                model.num_params() / 1e6,
                cfg.vocab_size,
                cfg.block_size,
                len(train_split.tokens),
                "+ mirrored" if p.flip else "as they are",
                len(val_split.tokens),
                batches.steps,
                p.epochs,
                p.batch_size,
                info.world,
                info.device,
                precision,
            )

        # Every sequence lives on the device: a step indexes there, with no host copy (or wait) per step.
        train_codes, train_labels = train_split.tokens.to(info.device), train_split.labels.to(info.device)
        flipped = flipped.to(info.device) if flipped is not None else None
        tokens_per_step = p.batch_size * cfg.block_size
        eta = Eta("train", total_steps - run.step, "steps", slow_minutes=30, slow_hint=slow_hint)

        def loss_of(inputs: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
            return net(inputs, codes)[1]

        def train_epoch(epoch: int) -> dict:
            torch.manual_seed(derive_seed(p.seed, epoch, dropout_stream(info.rank)))
            seed = derive_seed(p.seed, epoch, LABEL_DROP_STREAM)
            drop = torch.rand(len(train_codes), generator=torch.Generator().manual_seed(seed))
            drop = (drop < p.label_dropout).to(info.device)  # per sequence, so it does not depend on the rank split
            codes_epoch = train_codes
            if flipped is not None:  # per sequence too: the image or its mirror, half and half
                seed = derive_seed(p.seed, epoch, MIRROR_STREAM)
                mirror = torch.rand(len(codes_epoch), generator=torch.Generator().manual_seed(seed))
                codes_epoch = torch.where((mirror < 0.5).to(info.device)[:, None], flipped, codes_epoch)
            model.train()
            loss_sum, t0 = torch.zeros((), device=info.device), time.perf_counter()
            bar = tqdm(
                batches.epoch(epoch, info.device),
                desc=f"epoch {epoch + 1}/{p.epochs}",
                disable=not info.main,
                leave=False,
            )
            for i, idx in enumerate(bar):
                lr = lr_at(run.step, total_steps, p.warmup_steps, p.lr, p.min_lr)
                set_lr(opt, lr)
                if graphs:  # a new iteration: CUDA-graph outputs of the previous one may be overwritten
                    torch.compiler.cudagraph_mark_step_begin()
                codes = codes_epoch[idx]
                prefix = torch.where(drop[idx], cfg.null_token, cfg.prefix(train_labels[idx], len(idx), info.device))
                loss = train_step(
                    loss_of,
                    (training_inputs(codes, prefix), codes),
                    opt,
                    run.scaler,
                    info.device,
                    precision,
                    p.grad_clip,
                    model.parameters(),
                )
                run.step += 1
                loss_sum += loss
                if info.main and i % POSTFIX_EVERY == 0:
                    rate = (i + 1) * tokens_per_step / (time.perf_counter() - t0)
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}")
                if info.main:
                    eta.update(1)
            return {"train_loss": _all_reduce([loss_sum.item() / batches.steps], info)[0] / info.world}

        def validate() -> dict:
            return {
                "val_loss": mean_nll(model, val_split, 2 * batches.local, info.device, precision, info.rank, info.world)
            }

        def describe(r: dict, seconds: float) -> str:
            return (
                f"train {r['train_loss']:.4f}, val {r['val_loss']:.4f} nats/token "
                f"({bits_per_image(r['val_loss'], cfg.block_size):.1f} bits/image), "
                f"{batches.steps * tokens_per_step / seconds:.0f} tokens/s"
            )

        fit(
            run,
            ckpt,
            p.epochs,
            train_epoch,
            validate,
            SELECTION,
            describe=describe,
            main=info.main,
            on_epoch_end=on_epoch_end,
        )

    tokens_per_s = (
        run.epochs_here * batches.steps * tokens_per_step / run.train_seconds_here if run.epochs_here else 0.0
    )
    if info.main:  # every declared output, also when all epochs came from the checkpoint
        _write_plots(run.history, paths.plots)
        save_gpt(
            model,
            paths.model_dir,
            {
                "classes": list(meta.classes),
                "encoder": meta.encoder,
                "codebook_sha256": meta.codebook_sha256,
                "train": p.model_dump(),
                "epoch": run.best["epoch"],
                "precision": precision,
            },
        )
    return _results(model, run, tokens_per_s, info, precision, compile_mode)


def _write_plots(history: list[dict], plots: Path) -> None:
    keys = ("epoch", "train_loss", "val_loss")
    write_csv(plots / "train_loss.csv", keys, [[h[k] for k in keys] for h in history])
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax.set(xlabel="epoch", ylabel="NLL (nats/token)", title="GPT loss per epoch")
    ax.legend()
    ax.grid(True, alpha=0.3)
    save_png(fig, plots / "train_loss.png")


def _results(
    model: GPT, run: Run, tokens_per_s: float, info: DistInfo, precision: str, compile_mode: str | None
) -> Results:
    """train.json: the best epoch (the saved model) and how the run went; info: which and why, and where."""
    metrics = {
        **nll_metrics(run.best["value"], model.cfg.block_size, "val"),
        "train_loss": run.history[run.best["epoch"] - 1]["train_loss"],
        "gpt_best_epoch": run.best["epoch"],
        "gpt_params": model.num_params(),
        # throughput of the epochs run by this process (0 when all came from a checkpoint)
        "train_tokens_per_s": tokens_per_s,
        "train_minutes": minutes(run.seconds),  # every epoch's training + validation, resumed ones included
    }
    described = {
        "selection": "the saved model is the epoch with the lowest validation NLL",
        "epochs": len(run.history),
        "last_val_nll": run.history[-1]["val_loss"],
        "world_size": info.world,
        "device": str(info.device),
        "precision": precision,
        "compile": compile_mode or "none",
    }
    return Results(metrics, described)


def _flipped_tokens(path: Path, meta: tok.TokenMeta, train: tok.TokenSplit) -> torch.Tensor:
    """The token grids of the mirrored train images, row for row with `train`."""
    flipped = tok.read_split(path, tok.FLIP, meta)
    if not torch.equal(flipped.labels, train.labels):
        raise PipelineError(f"{path}: {tok.FLIP} does not pair up with train; {tok.FIX}")
    return flipped.tokens
