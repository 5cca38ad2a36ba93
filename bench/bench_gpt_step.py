"""GPT training-step throughput of the default model (params.yaml `train`) on CUDA, and what speeds it up.

    python bench/bench_gpt_step.py [--seconds 4] [--configs ...] [--batch B] [--json out.json]     # one GPU
    python bench/bench_gpt_step.py --tiny                                              # CPU smoke run

Every config trains the same model (params.yaml train, codebook.k, extract.grid; 10 classes) with the
stage's own step (pipeline.core.training.train_step) in the precision `train.precision` resolves to on
this device, and reports tokens/s and model-FLOPs utilisation (MFU: the model's training FLOPs per
token, GPTConfig.flops_per_token, times tokens/s, over the bf16 matrix-product peak measured on the
same device at the start). Configs:

  host-eager   the train stage's loop before it moved to the device: token batches indexed on the host and
               copied each step (a pageable host-to-device copy waits for the GPU), foreach AdamW, the loss
               read back every POSTFIX_EVERY steps for the progress bar, eager
  eager-fused  tokens resident on the device, batches indexed there: no host sync in the loop; fused AdamW
  compiled     eager-fused with torch.compile(model) (default mode)
  graphs       eager-fused with torch.compile(model, mode="reduce-overhead") (CUDA graphs)
  stage        as the train stage runs on one device: train.compile resolved as it resolves it (auto: compiled
               on a GPU), plus the loss read back every POSTFIX_EVERY steps
--batch sets the batch (default train.batch_size); the learning rate is not rescaled: throughput only.

Timing: a run of steps after warm-up (compilation included there, and reported), synchronised only at
both ends. Needs torch, numpy, h5py, safetensors, PyYAML: no pydantic, FAISS or DVC.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from pipeline.core.runtime import grad_scaler, resolve_compile, resolve_precision
from pipeline.core.training import set_lr, train_step
from pipeline.gpt.model import GPT, GPTConfig, training_inputs

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = ["host-eager", "eager-fused", "compiled", "graphs", "stage"]
POSTFIX_EVERY = 10  # the trainer's progress-bar read-back interval (pipeline/gpt/training.py)
N_TRAIN = 50_000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device, n: int, seconds: float = 1.0) -> float:
    """Measured bf16 matrix-product throughput: the best of several timed batches of n x n x n products."""
    a, b = (
        torch.randn(n, n, device=device, dtype=torch.bfloat16),
        torch.randn(n, n, device=device, dtype=torch.bfloat16),
    )
    a @ b
    sync(device)
    best, reps, deadline = 0.0, 4, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e12)
    return best


def default_config(params: dict, tiny: bool) -> tuple[GPTConfig, dict]:
    tr = params["train"]
    if tiny:
        tr = tr | {"n_layer": 2, "n_head": 2, "n_embd": 64, "batch_size": 16}
    grid = params["extract"]["grid"]
    cfg = GPTConfig(
        k=params["codebook"]["k"],
        grid_h=grid,
        grid_w=grid,
        n_classes=10,
        conditional=tr["conditional"],
        n_layer=tr["n_layer"],
        n_head=tr["n_head"],
        n_embd=tr["n_embd"],
        dropout=tr["dropout"],
        pos_emb=tr["pos_emb"],
        attention=tr["attention"],
        window=tr["window"],
        n_kv_head=tr["n_kv_head"],
    )
    return cfg, tr


def run_config(name: str, cfg: GPTConfig, tr: dict, device: torch.device, precision: str, seconds: float) -> dict:
    batch = tr["batch_size"]
    torch.manual_seed(0)
    model = GPT(cfg).to(device).train()
    fused = name != "host-eager" and device.type == "cuda"
    opt = torch.optim.AdamW(
        model.param_groups(tr["weight_decay"]), lr=tr["lr"], betas=(tr["beta1"], tr["beta2"]), fused=fused or None
    )
    scaler = grad_scaler(device, precision)
    net = model
    modes = {"compiled": "default", "graphs": "reduce-overhead", "stage": resolve_compile(tr["compile"], device)}
    mode = modes.get(name)
    if mode is not None:
        net = torch.compile(model, mode=mode)
    graphs = mode == "reduce-overhead" and device.type == "cuda"
    host = name == "host-eager"
    read_back = name in ("host-eager", "stage")
    tokens = torch.randint(0, cfg.k, (N_TRAIN, cfg.block_size), device="cpu" if host else device)
    labels = torch.randint(0, cfg.n_classes, (N_TRAIN,), device="cpu" if host else device)
    drop = torch.rand(N_TRAIN, device="cpu" if host else device) < tr["label_dropout"]
    order = torch.randperm(N_TRAIN, device="cpu" if host else device)

    def step(i: int) -> torch.Tensor:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new training iteration: earlier outputs may be reused
        set_lr(opt, tr["lr"])  # the trainer sets the scheduled rate every step
        idx = order[(i * batch) % (N_TRAIN - batch) :][:batch]
        codes, cls, dropped = tokens[idx], labels[idx], drop[idx]
        if host:
            codes, cls, dropped = (t.to(device, non_blocking=True) for t in (codes, cls, dropped))
        prefix = torch.where(dropped, cfg.null_token, cfg.prefix(cls, batch, device))
        loss = train_step(
            lambda x, y: net(x, y)[1],
            (training_inputs(codes, prefix), codes),
            opt,
            scaler,
            device,
            precision,
            tr["grad_clip"],
            model.parameters(),
        )
        if read_back and i % POSTFIX_EVERY == 0:
            loss.item()
        return loss

    t = time.perf_counter()
    for i in range(3):  # compilation, autotuning, CUDA-graph capture, allocator warm-up
        step(i)
    sync(device)
    warmup_s = time.perf_counter() - t
    steps, t = 0, time.perf_counter()
    while True:  # timed in chunks of POSTFIX_EVERY steps so the trainer's read-back pattern stays whole
        for _ in range(POSTFIX_EVERY):
            loss = step(3 + steps)
            steps += 1
        if time.perf_counter() - t > seconds:
            break
    sync(device)
    elapsed = time.perf_counter() - t
    tokens_per_s = steps * batch * cfg.block_size / elapsed
    return {
        "batch": batch,
        "steps": steps,
        "step_ms": 1e3 * elapsed / steps,
        "tokens_per_s": tokens_per_s,
        "warmup_s": warmup_s,
        "loss": float(loss),
        "tflops": tokens_per_s * cfg.flops_per_token / 1e12,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="*", default=CONFIGS, choices=CONFIGS)
    ap.add_argument("--seconds", type=float, default=4.0, help="timed seconds per config (after warm-up)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model, batch 16: a smoke run on CPU")
    ap.add_argument("--batch", type=int, help="sequences per step (default: train.batch_size)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg, tr = default_config(params, args.tiny)
    tr = tr | ({"batch_size": args.batch} if args.batch else {})
    precision = resolve_precision(tr["precision"], device, "train.precision")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # as the train stage sets it
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    peak = matmul_peak_tflops(device, 8192 if device.type == "cuda" else 512)
    n_params = sum(p.numel() for p in GPT(cfg).parameters())
    out = {
        "device": name,
        "torch": torch.__version__,
        "precision": precision,
        "bf16_matmul_peak_tflops": peak,
        "model": {
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_embd": cfg.n_embd,
            "slots": cfg.block_size,
            "params_M": n_params / 1e6,
            "flops_per_token": cfg.flops_per_token,
        },
        "configs": {},
    }
    print(
        f"{name}, torch {torch.__version__}, {precision}; measured bf16 matmul peak {peak:.1f} TFLOP/s\n"
        f"GPT {cfg.n_layer}x{cfg.n_embd} ({n_params / 1e6:.1f} M params), {cfg.block_size} slots, "
        f"{cfg.flops_per_token / 1e6:.0f} MFLOP/token"
    )
    for config in args.configs:
        if device.type != "cuda" and config == "graphs":
            print(f"  {config:13s} skipped: CUDA graphs need a GPU")
            continue
        torch._dynamo.reset()
        t = time.perf_counter()
        r = run_config(config, cfg, tr, device, precision, args.seconds)
        r["mfu"] = r["tflops"] / peak
        out["configs"][config] = r
        print(
            f"  {config:13s} batch {r['batch']:4d}: {r['tokens_per_s']:12,.0f} tokens/s, {r['step_ms']:7.2f} ms/step, "
            f"MFU {100 * r['mfu']:5.1f} %  (warm-up {r['warmup_s']:.1f} s, config {time.perf_counter() - t:.0f} s, "
            f"loss {r['loss']:.3f})",
            flush=True,
        )
        if args.json:  # after every config: a run cut short by a time limit keeps what it measured
            args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
