"""Train the token GPT: AdamW, warmup + cosine schedule, per-epoch test NLL, resumable, DDP-ready.

One code path for 1 process and for `torchrun --nproc_per_node=N` (NCCL on GPU, gloo on CPU):
`batch_size` is the GLOBAL batch, split evenly over ranks; rank 0 alone writes files.

Model selection: after every epoch the NLL of the validation split is measured; the saved model is
the epoch with the lowest one (train.json says which and why), while the resume checkpoint holds the
last epoch (and the best one so far). The test split is never read here.

Augmentation (train.flip): every epoch each image is drawn either as it is or as the tokens of its
mirror image (the `train_flip` split, made by extract + codebook), with probability 1/2.

Determinism: the initial weights, the flips, the shuffle (DistributedSampler), label dropout and every rank's
dropout RNG are derived from (seed, epoch[, rank]) inside a forked RNG (the caller's generators are
left as they were), so a run resumed from an epoch checkpoint (`core.checkpoint`: same params, tokens
and code) replays exactly what the uninterrupted run would have done, whatever the number of processes.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from matplotlib.figure import Figure
from tqdm import tqdm

from pipeline.core.atomic import write_json
from pipeline.core.checkpoint import Checkpoint, run_fingerprint
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import sha256_file
from pipeline.core.plots import save_png, write_csv
from pipeline.core.progress import Eta
from pipeline.core.runtime import adamw, grad_scaler, resolve_compile, resolve_device, resolve_precision
from pipeline.core.schedule import lr_at
from pipeline.gpt.likelihood import bits_per_image, mean_nll, nll_metrics
from pipeline.gpt.model import GPT, GPTConfig, save_gpt, training_inputs
from pipeline.gpt.step import train_step
from pipeline.params import TrainParams
from pipeline.tokenizer import files as tok

log = logging.getLogger(__name__)

POSTFIX_EVERY = 10  # loss.item() synchronises a GPU: read it only now and then


@dataclass(frozen=True)
class TrainPaths:
    tokens: Path
    model_dir: Path
    checkpoints: Path
    metrics: Path  # metrics/train.json
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
    return GPTConfig(
        k=meta.k, grid_h=meta.grid_h, grid_w=meta.row_len, n_classes=meta.n_classes, conditional=p.conditional,
        n_layer=p.n_layer, n_head=p.n_head, n_embd=p.n_embd, dropout=p.dropout, pos_emb=p.pos_emb,
        attention=p.attention, window=p.window, n_kv_head=p.n_kv_head,
    )


def _seed(seed: int, epoch: int, salt: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + salt) % 2**63


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
) -> GPT:
    """Train (or resume) and, on rank 0, write model, metrics and plots. Returns the raw model.

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
        scaler = grad_scaler(info.device, precision)
        batches = EpochBatches(len(train_split.tokens), p, info)
        total_steps = batches.steps * p.epochs
        # how the numbers are computed (the precision as resolved here), not where
        params = p.model_dump(exclude={"device", "compile"}) | {"precision": precision}
        fingerprint = run_fingerprint(params, {"tokens": sha256_file(paths.tokens)}, code)
        ckpt = Checkpoint(paths.checkpoints, fingerprint, "train")

        start_epoch, step, history, best = 0, 0, [], None
        state = ckpt.load() if info.main else None
        if info.world > 1:  # rank 0 alone reads it (the directory may be local to its node)
            box = [state]
            dist.broadcast_object_list(box, src=0, device=info.device)
            state = box[0]
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            if scaler.is_enabled():
                scaler.load_state_dict(state["scaler"])
            start_epoch, step, history, best = state["epoch"], state["step"], state["history"], state["best"]

        if info.world > 1:
            # the only buffers are constants derived from the config (masks, rotary tables): no per-step sync
            net = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                          broadcast_buffers=False)
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
                model.num_params() / 1e6, cfg.vocab_size, cfg.block_size, len(train_split.tokens),
                "+ mirrored" if p.flip else "as they are", len(val_split.tokens), batches.steps, p.epochs,
                p.batch_size, info.world, info.device, precision,
            )

        # Every sequence lives on the device: a step indexes there, with no host copy (or wait) per step.
        train_codes, train_labels = train_split.tokens.to(info.device), train_split.labels.to(info.device)
        flipped = flipped.to(info.device) if flipped is not None else None
        tokens_per_step = p.batch_size * cfg.block_size
        eta = Eta("train", total_steps - step, "steps", slow_minutes=30, slow_hint=slow_hint)
        train_time, epochs_here = 0.0, 0
        for epoch in range(start_epoch, p.epochs):
            torch.manual_seed(_seed(p.seed, epoch, 1 + info.rank))  # dropout RNG, per rank
            drop = torch.rand(len(train_split.tokens), generator=torch.Generator().manual_seed(_seed(p.seed, epoch, 0)))
            drop = (drop < p.label_dropout).to(info.device)  # per sequence, so it does not depend on the rank split
            codes_epoch = train_codes
            if flipped is not None:  # per sequence too: the image or its mirror, half and half
                mirror = torch.rand(len(codes_epoch), generator=torch.Generator().manual_seed(_seed(p.seed, epoch, 2)))
                codes_epoch = torch.where((mirror < 0.5).to(info.device)[:, None], flipped, codes_epoch)
            model.train()
            loss_sum, t0 = torch.zeros((), device=info.device), time.perf_counter()
            bar = tqdm(batches.epoch(epoch, info.device), desc=f"epoch {epoch + 1}/{p.epochs}", disable=not info.main,
                       leave=False)
            for i, idx in enumerate(bar):
                lr = lr_at(step, total_steps, p.warmup_steps, p.lr, p.min_lr)
                for g in opt.param_groups:
                    g["lr"] = lr
                if graphs:  # a new iteration: CUDA-graph outputs of the previous one may be overwritten
                    torch.compiler.cudagraph_mark_step_begin()
                codes = codes_epoch[idx]
                prefix = torch.where(drop[idx], cfg.null_token, cfg.prefix(train_labels[idx], len(idx), info.device))
                loss = train_step(net, model.parameters(), opt, scaler, training_inputs(codes, prefix), codes,
                                  precision, p.grad_clip)
                step += 1
                loss_sum += loss
                if info.main and i % POSTFIX_EVERY == 0:
                    rate = (i + 1) * tokens_per_step / (time.perf_counter() - t0)
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}")
                if info.main:
                    eta.update(1)
            train_time += time.perf_counter() - t0
            epochs_here += 1
            train_loss = _all_reduce([loss_sum.item() / batches.steps], info)[0] / info.world
            val_nll = mean_nll(model, val_split, 2 * batches.local, info.device, precision, info.rank, info.world)
            history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_nll})
            if best is None or val_nll < best["val_nll"]:
                best = {"epoch": epoch + 1, "val_nll": val_nll,
                        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}  # fmt: skip
            if info.main:
                log.info(
                    "epoch %d/%d: train %.4f, val %.4f nats/token (%.1f bits/image; best: epoch %d), %.0f tokens/s",
                    epoch + 1, p.epochs, history[-1]["train_loss"], val_nll, bits_per_image(val_nll, cfg.block_size),
                    best["epoch"], batches.steps * tokens_per_step / (time.perf_counter() - t0),
                )
                ckpt.save({"epoch": epoch + 1, "step": step, "history": history, "best": best, "model": model.state_dict(),
                           "optimizer": opt.state_dict(), "scaler": scaler.state_dict()})  # fmt: skip
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)

    if info.main:  # every declared output, also when all epochs came from the checkpoint
        tokens_per_s = epochs_here * batches.steps * tokens_per_step / train_time if train_time else 0.0
        _write_plots(history, paths.plots)
        model.load_state_dict(best["model"])
        _write_outputs(model, p, meta, paths, history, best, tokens_per_s, info, precision, compile_mode)
    return model


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


def _write_outputs(model, p, meta, paths, history, best, tokens_per_s, info, precision, compile_mode) -> None:
    """The best epoch's model (already loaded into `model`), and train.json saying which and why."""
    at_best = history[best["epoch"] - 1]
    save_gpt(model, paths.model_dir, {
        "classes": list(meta.classes), "encoder": meta.encoder, "codebook_sha256": meta.codebook_sha256,
        "train": p.model_dump(), "epoch": best["epoch"], "precision": precision,
    })  # fmt: skip
    metrics = {
        "best_epoch": best["epoch"],
        "selection": "the saved model is the epoch with the lowest validation NLL",
        **nll_metrics(best["val_nll"], model.cfg.block_size, "val"),
        "train_loss": at_best["train_loss"],
        "epochs": len(history),
        "last_val_nll": history[-1]["val_loss"],
        "params": model.num_params(),
        # throughput of the epochs run by this process (0 when all came from a checkpoint)
        "train_tokens_per_s": tokens_per_s,
        "world_size": info.world,
        "device": str(info.device),
        "precision": precision,
        "compile": compile_mode or "none",
    }
    write_json(paths.metrics, metrics)
    log.info("saved epoch %d of %d (lowest validation NLL %.4f nats/token = %.1f bits/image) -> %s, %s",
             best["epoch"], len(history), best["val_nll"], metrics["val_bits_per_image"], paths.model_dir,
             paths.metrics)  # fmt: skip


def _flipped_tokens(path: Path, meta: tok.TokenMeta, train: tok.TokenSplit) -> torch.Tensor:
    """The token grids of the mirrored train images, row for row with `train`."""
    flipped = tok.read_split(path, tok.FLIP, meta)
    if not torch.equal(flipped.labels, train.labels):
        raise PipelineError(f"{path}: {tok.FLIP} does not pair up with train; {tok.FIX}")
    return flipped.tokens
