"""Attention variants side by side: training tokens/s and sampling images/s, in one run.

    nice -n 10 .venv/bin/python bench/bench_attention.py [--threads 1] [--steps 4] [--images 200] [--json out.json]
    python bench/bench_attention.py --device cuda --default [--images 1000]          # one GPU, GPU default

Each variant is the CPU preset's GPT (params.yaml + presets/cpu.args; `--default`: params.yaml alone)
with the `train.*` overrides shown, randomly initialised (speed does not depend on the weights;
sampling always runs all H*W steps). Training, in the precision the train stage resolves on the
device: on CPU the fastest of `--steps` AdamW steps of bench_gpt.train_steps at the preset's batch; on
CUDA the train stage's loop for `--seconds` (bench_gpt_step's `trainer` config, TF32 as the stage sets
it). Sampling: `--images` images through the sample stage's own loop (sampling.sample_tokens, KV
cache, batch `--batch`); decoding is left out (the same for every variant). On CPU both are timed in
this process's CPU time (bench_gpt.py explains why), so they are per core-second; on CUDA in wall time,
synchronised. `--rounds` rounds visit every variant in turn, each variant's best round kept: shared
cores slow down stretches of a run, and interleaving spreads that over all variants. The KV cache
column is the float32 keys and values one image holds at the last step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_gpt import train_steps
from bench_gpt_step import run_config

from pipeline.core.runtime import describe_cpu, resolve_device, resolve_precision
from pipeline.gpt import sampling
from pipeline.gpt.model import GPT
from pipeline.gpt.training import model_config
from pipeline.params import load_cpu_preset, load_params
from pipeline.tokenizer.files import TokenMeta

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {  # name: train.* overrides of the benchmarked params
    "full (default)": {},
    "local, window 16": {"attention": "local", "window": 16},
    "axial": {"attention": "axial"},
    "strided": {"attention": "strided"},
    "grouped-query, 2 kv heads": {"n_kv_head": 2},
    "multi-query, 1 kv head": {"n_kv_head": 1},
    "full, rope2d": {"pos_emb": "rope2d"},
    "full, no positions": {"pos_emb": "none"},
}


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def train_tokens_per_s(cfg, tr, device: torch.device, precision: str, args) -> float:
    if device.type == "cpu":
        return train_steps(cfg, tr.batch_size, args.steps, precision)["tokens_per_s"]
    torch.set_float32_matmul_precision("high")  # as the train stage (and only it) sets it
    try:
        return run_config("trainer", cfg, tr.model_dump(), device, precision, args.seconds)["tokens_per_s"]
    finally:
        torch.set_float32_matmul_precision("highest")


def sampling_images_per_s(model: GPT, sample_params, n: int) -> float:
    device = next(model.parameters()).device
    labels = sampling.sample_labels(model.cfg, -(-n // model.cfg.n_classes))[:n]
    t = clock(device)
    sampling.sample_tokens(model, labels, sample_params, progress=False)
    return n / (clock(device) - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--default", action="store_true", help="params.yaml's GPU-sized model instead of the CPU preset's")
    ap.add_argument("--seconds", type=float, default=2.0, help="CUDA: timed training seconds per variant and round")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per variant (after 2 of warm-up)")
    ap.add_argument("--images", type=int, default=200, help="images sampled per timed run")
    ap.add_argument("--batch", type=int, help="sampling batch (default: the preset's sample.batch_size)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds over all variants")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    p = (load_params if args.default else load_cpu_preset)(ROOT / "params.yaml")
    grid = p.extract.grid
    meta = TokenMeta(p.codebook.k, grid, grid, 10, tuple(map(str, range(10))), p.extract.encoder, 3, "bench")
    precision = resolve_precision(p.train.precision, device, "train.precision")
    sample_params = p.sample.model_copy(update={"batch_size": args.batch or p.sample.batch_size})
    tr = p.train
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else describe_cpu()
    out = {
        "device": device_name,
        "threads": args.threads,
        "precision": precision,
        "torch": torch.__version__,
        "preset": {"n_layer": tr.n_layer, "n_head": tr.n_head, "n_embd": tr.n_embd, "batch": tr.batch_size},
        "sampling": {"images": args.images, "batch": sample_params.batch_size},
        "variants": {},
    }
    per = "per core-second" if device.type == "cpu" else "wall time"
    print(
        f"{device_name}, torch {torch.__version__}, {args.threads} thread(s), {per}; "
        f"{'default' if args.default else 'CPU-preset'} GPT "
        f"{tr.n_layer}x{tr.n_embd}, {tr.n_head} heads, train batch {tr.batch_size} in {precision}; sampling "
        f"{args.images} images at batch {sample_params.batch_size} with the KV cache"
    )
    print(
        f"{'variant':28s} {'params':>8s} {'train tokens/s':>15s} {'vs full':>8s} {'sampling img/s':>15s} "
        f"{'vs full':>8s} {'KV cache KiB/img':>17s}"
    )
    models, rows = {}, out["variants"]
    for name in args.variants:
        cfg = model_config(tr.model_copy(update=VARIANTS[name]), meta)
        torch.manual_seed(0)
        models[name] = model = GPT(cfg).to(device).eval()
        sampling_images_per_s(model, sample_params, min(args.images, 20))  # warm-up
        cache_kib = 2 * cfg.n_layer * cfg.kv_heads * (cfg.n_embd // cfg.n_head) * cfg.block_size * 4 / 1024
        rows[name] = {
            "overrides": VARIANTS[name],
            "params": model.num_params(),
            "train_tokens_per_s": 0.0,
            "sampling_images_per_s": 0.0,
            "kv_cache_kib_per_image": cache_kib,
        }
    for _ in range(args.rounds):
        for name, model in models.items():
            row = rows[name]
            train = train_tokens_per_s(model.cfg, tr, device, precision, args)
            row["train_tokens_per_s"] = max(row["train_tokens_per_s"], train)
            images_per_s = sampling_images_per_s(model, sample_params, args.images)
            row["sampling_images_per_s"] = max(row["sampling_images_per_s"], images_per_s)
        if args.json:  # after every round: a run cut short keeps what it measured
            args.json.write_text(json.dumps(out, indent=2) + "\n")
    base = rows[args.variants[0]]
    for name, row in rows.items():
        train, images = row["train_tokens_per_s"], row["sampling_images_per_s"]
        print(
            f"{name:28s} {row['params'] / 1e6:7.3f}M {train:15,.0f} {train / base['train_tokens_per_s']:7.2f}x "
            f"{images:15,.1f} {images / base['sampling_images_per_s']:7.2f}x {row['kv_cache_kib_per_image']:17.0f}"
        )


if __name__ == "__main__":
    main()
