"""Sampling + decoding speed with and without the KV cache, default config and CPU preset, in one run.

    .venv/bin/python bench/bench_sampling.py [--threads 2] [--ratio-images N] [--images 1000] [--json out.json]

Models are randomly initialised (speed does not depend on the weights; sampling always runs the full
H*W steps). For each config (params.yaml, and params.yaml + presets/cpu.args):
  (a) the same `--ratio-images` images (default sample.batch_size), one batch, sampled with the
      cache and without it (the uncached path re-runs the whole prefix every step, as minGPT does),
      each then decoded: images/s and the speed-up. On a CPU the GPU-sized default config uses at
      most DEFAULT_CPU_RATIO_IMAGES images (its uncached run would take many minutes);
  (b) `--images` images with the cache at sample.batch_size, then decoded: seconds end to end
      (the target: 1,000 images in <= 60 s on 2 cores with the CPU preset). Skipped for the
      default config on a CPU unless --full-default (GPU-sized model).
The machine's load average is recorded: on shared cores, OpenMP threads that wait for a descheduled
sibling slow everything down many times (then compare with --threads 1).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from pipeline.core.runtime import resolve_device
from pipeline.features.encoders import build_encoder
from pipeline.features.extract import extract_spec, grid_features
from pipeline.gpt import sampling
from pipeline.gpt.model import GPT
from pipeline.gpt.training import model_config
from pipeline.params import Params, load_cpu_preset, load_params
from pipeline.tokenizer.decoder import DecoderConfig, InverseCNN
from pipeline.tokenizer.decoding import PALETTE_GRID, TokenDecoder
from pipeline.tokenizer.files import TokenMeta

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_CPU_RATIO_IMAGES = 100


def feature_dim(p: Params) -> int:
    """Width of the extract stage's grid features for these params (random weights: only shapes matter)."""
    encoder = build_encoder(p.extract.encoder, pretrained=False)
    with torch.no_grad():
        return grid_features(encoder, torch.zeros(1, 3, 32, 32), extract_spec(p.extract, encoder)).shape[-1]


def build(p: Params, device: torch.device) -> tuple[GPT, TokenDecoder]:
    pixels = p.extract.encoder == "pixels"
    grid = PALETTE_GRID if pixels else p.extract.grid
    meta = TokenMeta(p.codebook.k, grid, grid, 10, tuple(map(str, range(10))), p.extract.encoder, 3, "bench")
    torch.manual_seed(0)
    model = GPT(model_config(p.train, meta)).to(device).eval()
    if pixels:
        return model, TokenDecoder("palette", grid, p.codebook.k, palette=torch.rand(p.codebook.k, 3))
    cfg = DecoderConfig(feature_dim(p), grid, p.codebook.k, p.decoder.channels, p.decoder.res_blocks)
    return model, TokenDecoder("cnn", grid, p.codebook.k, model=InverseCNN(cfg, torch.randn(cfg.k, cfg.in_channels)))


def timed(model: GPT, decoder: TokenDecoder, p: Params, n: int, batch: int, use_cache: bool, device) -> dict:
    sp = p.sample.model_copy(update={"batch_size": batch})
    labels = sampling.sample_labels(model.cfg, -(-n // model.cfg.n_classes))[:n]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    tokens = sampling.sample_tokens(model, labels, sp, use_cache=use_cache, progress=False)
    sync()
    t1 = time.perf_counter()
    decoder.decode(tokens, batch, device)
    sync()
    t2 = time.perf_counter()
    return {"images": n, "sample_s": t1 - t0, "decode_s": t2 - t1, "images_per_s": n / (t2 - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--ratio-images", type=int, help="images per cached/uncached comparison (default: sample.batch_size)"
    )
    ap.add_argument("--images", type=int, default=1000, help="images for the end-to-end timing")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full-default", action="store_true", help="also time --images at the default config on CPU")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    configs = {"default": load_params(ROOT / "params.yaml"), "cpu_preset": load_cpu_preset(ROOT / "params.yaml")}
    results = {
        "device": str(device),
        "threads": args.threads,
        "weights": "random init",
        "load_average_before": os.getloadavg(),
        "configs": {},
    }
    print(f"device {device}, {args.threads} thread(s), load average {results['load_average_before'][0]:.1f}")
    for name, p in configs.items():
        model, decoder = build(p, device)
        tr = p.train
        info = {
            "n_layer": tr.n_layer,
            "n_head": tr.n_head,
            "n_embd": tr.n_embd,
            "tokens_per_image": model.cfg.block_size,
            "k": p.codebook.k,
            "params_M": round(model.num_params() / 1e6, 2),
            "decoder": decoder.kind,
            "conditional": tr.conditional,
            "cfg_scale": p.sample.cfg_scale,
        }
        n = args.ratio_images or p.sample.batch_size
        if name == "default" and device.type == "cpu":
            n = min(n, DEFAULT_CPU_RATIO_IMAGES)
        timed(model, decoder, p, 4, 4, True, device)  # warm-up (allocator, first-call overheads)
        cached = timed(model, decoder, p, n, n, True, device)
        uncached = timed(model, decoder, p, n, n, False, device)
        row = {
            **info,
            "cached": cached,
            "uncached": uncached,
            "speedup_sampling": uncached["sample_s"] / cached["sample_s"],
            "speedup_end_to_end": cached["images_per_s"] / uncached["images_per_s"],
        }
        if name != "default" or device.type == "cuda" or args.full_default:
            row["full_run"] = timed(model, decoder, p, args.images, p.sample.batch_size, True, device)
        results["configs"][name] = row
        print(f"{name}: {info}")
        print(
            f"  {n} images, one batch: cached {cached['images_per_s']:.1f} img/s "
            f"(sample {cached['sample_s']:.2f} s + decode {cached['decode_s']:.2f} s), uncached "
            f"{uncached['images_per_s']:.1f} img/s (sample {uncached['sample_s']:.2f} s) -> sampling "
            f"{row['speedup_sampling']:.1f}x, end to end {row['speedup_end_to_end']:.1f}x faster with the cache"
        )
        if "full_run" in row:
            f = row["full_run"]
            print(
                f"  {f['images']} images at batch {p.sample.batch_size} with the cache: {f['sample_s'] + f['decode_s']:.1f} s "
                f"(sample {f['sample_s']:.1f} s + decode {f['decode_s']:.1f} s), {f['images_per_s']:.1f} img/s"
            )
    results["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
