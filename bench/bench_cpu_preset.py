"""The CPU preset on this CPU: the speed of its three long stages in the precision they resolve here, and the
whole preset's time projected from short timed runs (the preset itself is not run).

    TORCH_HOME=../shared/torch-home nice -n 10 .venv/bin/python bench/bench_cpu_preset.py [--threads 1] [--json out.json]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ... (the same, as an AVX2-only CPU: no native bf16)

(a) the CPU as torch sees it, and a 512x512 matrix product in fp32 vs bf16 on one thread: where bf16 is only
    emulated (AVX2 CPUs) it is many times slower, which is why `precision: auto` resolves to fp32 there;
(b) extract: the stage's write_features on a slice of synthetic CIFAR-sized images, scaled to every split
    it encodes (the mirrored train images too with extract.flip);
(c) decoder: the stage's train_step (pixel + perceptual loss through the real encoder layers) at the
    preset's decoder params, times the preset's steps, plus its decoding passes;
(d) train: the stage's train_step at the preset's GPT params, times the preset's steps, plus the
    per-epoch validation NLL passes;
(i) inception: Inception features (preprocessing + network) in reference.precision, times the images the
    reference, reconstruct and evaluate stages encode under the preset;
(e) the whole preset: (b)-(d) and (i) plus the other stages as measured in docs/cpu_preset.md's AMX run of the preset
    (evaluate without its Inception features, which (i) counts).
Each timing is the fastest of a few steps after warm-up in this process's CPU time (time.process_time),
by default on one thread: other processes on shared cores inflate wall time far more than CPU time, so
the projections are what one idle core would take (a second core shortens them by less than half).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.core.images import to_float_nchw
from pipeline.core.runtime import (
    describe_cpu,
    grad_scaler,
    resolve_compile,
    resolve_feature_precision,
    resolve_precision,
)
from pipeline.core.training import train_step
from pipeline.data.cifar10 import Split
from pipeline.evaluation import inception
from pipeline.features.encoders import build_encoder
from pipeline.features.extract import extract_spec, grid_features, has_convs, write_features
from pipeline.gpt.likelihood import mean_nll
from pipeline.gpt.model import GPT, training_inputs
from pipeline.gpt.training import model_config
from pipeline.params import Params, load_cpu_preset
from pipeline.tokenizer import decoder_training as dt
from pipeline.tokenizer.decoder import DecoderConfig, InverseCNN
from pipeline.tokenizer.decoding import TokenDecoder
from pipeline.tokenizer.files import TokenMeta, TokenSplit

ROOT = Path(__file__).resolve().parents[1]

N_CIFAR_TRAIN, N_TEST = 50_000, 10_000


def split_sizes(p: Params) -> dict[str, int]:
    """Images per split as the download stage writes them, and what extract encodes (mirrored train too)."""
    train, val = N_CIFAR_TRAIN - p.download.val_size, p.download.val_size
    return {"train": train, "val": val, "test": N_TEST, "extract": N_CIFAR_TRAIN + N_TEST + train * p.extract.flip}


# The other stages of docs/cpu_preset.md's fresh-clone CPU-preset run on this project's 2-core AMX CPU, in seconds:
# fp32 code paths (FAISS, sampling, FID features) that the precision does not change.
OTHER_STAGES_S = {"download": 7, "codebook": 180, "sample": 8, "evaluate": 45}
CPU = torch.device("cpu")


def matmul_gflops(dtype: torch.dtype, n: int = 512, repeats: int = 5) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        a @ b
        best = min(best, time.process_time() - t)
    torch.set_num_threads(threads)
    return 2 * n**3 / best / 1e9


def best_seconds(fn, steps: int, warmup: int = 2) -> float:
    """The fastest of `steps` calls of `fn` after `warmup`, in CPU seconds of this process."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(steps):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def bench_extract(p: Params, precision: str, n: int) -> dict:
    encoder = build_encoder(p.extract.encoder)
    spec = extract_spec(p.extract, encoder)
    rng = np.random.default_rng(0)
    splits = {
        s: Split(rng.integers(0, 256, (m, 32, 32, 3), dtype=np.uint8), np.arange(m, dtype=np.uint8) % 10)
        for s, m in (("train", n * 5 // 6), ("test", n // 6))
    }
    with tempfile.TemporaryDirectory() as tmp:

        def run() -> None:
            write_features(
                Path(tmp, "f.h5"),
                encoder,
                splits,
                spec,
                batch_size=p.extract.batch_size,
                device=CPU,
                precision=precision,
                standardize=p.extract.standardize,
                channels_last=has_convs(encoder),
            )

        seconds = best_seconds(run, 2, 0)
    rate = sum(len(s.images) for s in splits.values()) / seconds
    return {"images_per_s": rate, "projected_s": split_sizes(p)["extract"] / rate}


def bench_decoder(p: Params, precision: str, steps: int) -> dict:
    d, k, grid = p.decoder, p.codebook.k, p.extract.grid
    encoder = build_encoder(p.extract.encoder)
    spec = extract_spec(p.extract, encoder)
    with torch.no_grad():
        dim = grid_features(encoder, torch.zeros(1, 3, 32, 32), spec).shape[-1]  # channels per grid cell
    rng = np.random.default_rng(0)
    n = max(d.batch_size, 1000)
    inputs = dt.DecoderInputs(
        centroids=torch.randn(k, dim),
        codebook_sha256="bench",
        encoder=p.extract.encoder,
        layers=list(spec.layers),
        grid=grid,
        codes_per_cell=1,
        feature_attrs={"input_size": spec.input_size, "pool": spec.pool},
        mean=None,
        std=None,
        train_tokens=rng.integers(0, k, (n, grid * grid)).astype(np.uint16),
        train_images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        val_tokens=rng.integers(0, k, (n, grid * grid)).astype(np.uint16),
        val_images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        val_labels=np.arange(n) % 10,
        input_hashes={},
    )
    feature_loss = dt.build_feature_loss(inputs, CPU) if d.perceptual_weight > 0 else None
    config = DecoderConfig(in_channels=dim, grid=grid, k=k, channels=d.channels, res_blocks=d.res_blocks)
    model = InverseCNN(config, inputs.centroids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=d.lr, weight_decay=d.weight_decay)
    scaler, loss_fn = grad_scaler(CPU, precision), dt.training_loss(d, feature_loss)
    tokens = torch.from_numpy(inputs.train_tokens[: d.batch_size].astype(np.int64))
    target = to_float_nchw(inputs.train_images[: d.batch_size], CPU)
    step_s = best_seconds(  # as the stage: the centroid grid is embedded outside autocast
        lambda: train_step(
            lambda x, y: loss_fn(model(x).float(), y), (model.embed(tokens), target), optimizer, scaler, CPU, precision
        ),
        steps,
    )
    decoder = TokenDecoder("cnn", grid, k, model=model)
    decode_s = best_seconds(lambda: decoder.decode(inputs.val_tokens[:1000], d.batch_size, CPU, precision), 2, 1)
    total_steps = math.ceil(split_sizes(p)["train"] / d.batch_size) * d.epochs
    # decoded per run: the PSNR curve's images after every epoch, the validation split at the end
    decoded = dt.CURVE_IMAGES * d.epochs + split_sizes(p)["val"]
    return {
        "step_s": step_s,
        "steps": total_steps,
        "decode_1000_s": decode_s,
        "projected_s": total_steps * step_s + decoded / 1000 * decode_s,
    }


def bench_train(p: Params, precision: str, steps: int, compile_mode: str | None) -> dict:
    tr, k, grid = p.train, p.codebook.k, p.extract.grid
    cfg = model_config(tr, TokenMeta(k, grid, grid, 10, tuple(map(str, range(10))), p.extract.encoder, 1, "bench"))
    torch.manual_seed(0)
    model = GPT(cfg).train()
    opt = torch.optim.AdamW(model.param_groups(tr.weight_decay), lr=tr.lr, betas=(tr.beta1, tr.beta2))
    scaler = grad_scaler(CPU, precision)
    codes = torch.randint(0, k, (tr.batch_size, grid * grid))
    inputs = training_inputs(codes, cfg.prefix(torch.arange(tr.batch_size) % 10, tr.batch_size, CPU))
    net = torch.compile(model, mode=compile_mode) if compile_mode else model  # as the train stage does
    step_s = best_seconds(
        lambda: train_step(
            lambda x, y: net(x, y)[1], (inputs, codes), opt, scaler, CPU, precision, tr.grad_clip, model.parameters()
        ),
        steps,
    )
    test = TokenSplit(torch.randint(0, k, (1000, grid * grid)), torch.arange(1000) % 10)
    nll_s = best_seconds(lambda: mean_nll(model, test, 2 * tr.batch_size, CPU, precision), 2, 1)
    total_steps = split_sizes(p)["train"] // tr.batch_size * tr.epochs
    return {
        "step_s": step_s,
        "tokens_per_s": tr.batch_size * cfg.block_size / step_s,
        "steps": total_steps,
        "nll_1000_s": nll_s,
        "projected_s": total_steps * step_s + tr.epochs * split_sizes(p)["val"] / 1000 * nll_s,
    }


def inception_images(p: Params) -> dict[str, int]:
    """Images each Inception stage encodes under params `p`."""
    train, test = min(p.reference.n_train or N_CIFAR_TRAIN, N_CIFAR_TRAIN), min(p.reference.n_test or N_TEST, N_TEST)
    return {
        "reference": train + test,
        "reconstruct": min(p.reconstruct.n_images or test, test),
        "evaluate": p.evaluate.n_samples,
    }


@torch.inference_mode()
def bench_inception(p: Params, precision: str, steps: int, batch: int = 25) -> dict:
    fast = inception.inference_form(inception.load_inception(), CPU, precision)
    images = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)

    def run() -> None:
        x = inception.preprocess(images, CPU).to(inception.DTYPES[precision])
        fast(x.contiguous(memory_format=torch.channels_last))

    rate = batch / best_seconds(run, max(2, steps // 3), 1)
    counts = inception_images(p)
    return {"images_per_s": rate, "images": counts, "projected_s": sum(counts.values()) / rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per training stage (after 2 warm-up steps)")
    ap.add_argument("--extract-images", type=int, default=3000)
    ap.add_argument("--precision", help="run every stage in this precision instead of the params' (e.g. bf16)")
    ap.add_argument("--only", nargs="*", default=["extract", "decoder", "train", "inception"])
    ap.add_argument("--compile", action="store_true", help="train with torch.compile (train.compile: default)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = load_cpu_preset(ROOT / "params.yaml")
    out: dict = {"cpu": describe_cpu(), "threads": args.threads, "load_average": list(os.getloadavg())}
    mm = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    out["matmul_512_gflops_1_thread"] = mm
    print(
        f"(a) {out['cpu']}; load average {out['load_average'][0]:.1f}\n    512x512 matmul, 1 thread: fp32 "
        f"{mm['fp32']:.1f} GFLOP/s, bf16 {mm['bf16']:.1f} GFLOP/s (bf16/fp32 = {mm['bf16'] / mm['fp32']:.2f})"
    )
    # train.compile as the stage resolves it on this CPU (auto: eager), or torch.compile's default with --compile
    compile_mode = "default" if args.compile else resolve_compile(p.train.compile, CPU)
    stages = {
        "extract": lambda prec: bench_extract(p, prec, args.extract_images),
        "decoder": lambda prec: bench_decoder(p, prec, args.steps),
        "train": lambda prec: bench_train(p, prec, args.steps, compile_mode),
        "inception": lambda prec: bench_inception(p, prec, args.steps),
    }
    for name in args.only:
        section = p.reference if name == "inception" else getattr(p, name)
        requested = args.precision or section.precision
        precision = (
            resolve_feature_precision(requested, CPU)
            if name == "inception"  # as the reference stage does
            else resolve_precision(requested, CPU, f"{name}.precision")
        )
        r = stages[name](precision) | {"precision": precision}
        if name == "train":
            r["compile"] = compile_mode or "none"
        out[name] = r
        rate = (
            f"{r['images_per_s']:.1f} images/s for {sum(r['images'].values())} images"
            if name == "inception"
            else f"{r['images_per_s']:.0f} images/s"
            if name == "extract"
            else f"{r['step_s']:.3f} s/step ({p.decoder.batch_size / r['step_s']:.0f} images/s)"
            if name == "decoder"
            else f"{r['step_s']:.3f} s/step ({r['tokens_per_s']:,.0f} tokens/s)"
        )
        compiled = f" compiled ({r['compile']})" if r.get("compile", "none") != "none" else ""
        print(f"    {name:8s} {precision}{compiled}: {rate} -> {r['projected_s'] / 60:.1f} min for the preset")
    if set(args.only) == set(stages):
        total = sum(out[s]["projected_s"] for s in stages) + sum(OTHER_STAGES_S.values())
        out["projected_total_min"] = total / 60
        print(
            f"(e) whole preset: {total / 60:.1f} min (extract + decoder + train + inception as above; download, "
            f"codebook, sample, evaluate {sum(OTHER_STAGES_S.values())} s as measured on the AMX CPU)"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
