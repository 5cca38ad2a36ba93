"""Device choice and the one precision resolver shared by every stage.

`precision: auto` picks what the hardware does natively:

    device                                   auto     training extra
    CUDA, compute capability >= 8 (Ampere+)  bf16
    older CUDA card (T4, V100, P100)         fp16     gradient scaler (`grad_scaler`)
    CPU with native bf16 (AMX, AVX512-BF16)  bf16
    any other CPU (AVX2 laptops, ...)        fp32

An explicit `bf16` or `fp16` runs as asked; where the hardware only emulates it, a warning names the
param and the slow-down measured on the spot with one small matrix product.
"""

from __future__ import annotations

import logging
import time

import torch

from pipeline.core.errors import PipelineError

log = logging.getLogger("pipeline")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PROBE_SIZE = 256  # side of the matrices timed to measure an emulated precision's slow-down


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(
            f"device: {device!r} was asked for but CUDA is not available here; set the stage's "
            "device param to 'auto' or 'cpu'"
        )
    return torch.device(device)


def native(device: torch.device, precision: str) -> bool:
    """Whether `device` computes in `precision` (bf16/fp16) natively rather than by emulation."""
    if device.type == "cuda":
        return precision == "fp16" or torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        mkldnn = torch.ops.mkldnn
        return bool(mkldnn._is_mkldnn_bf16_supported() if precision == "bf16" else mkldnn._is_mkldnn_fp16_supported())
    return False


def describe_cpu() -> str:
    """The CPU as torch sees it: vector ISA, native bf16 or not, threads."""
    bf16 = "native bf16 (AMX or AVX512-BF16)" if native(torch.device("cpu"), "bf16") else "no native bf16"
    return f"{torch.backends.cpu.get_cpu_capability()} CPU, {bf16}, {torch.get_num_threads()} threads"


def _matmul_seconds(device: torch.device, dtype: torch.dtype, repeats: int = 3) -> float:
    a = torch.randn(PROBE_SIZE, PROBE_SIZE, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call pays for kernel selection
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best


def emulation_slowdown(device: torch.device, precision: str) -> float:
    """How many times slower a matrix product runs in `precision` than in fp32 on `device`, measured."""
    return _matmul_seconds(device, DTYPES[precision]) / max(_matmul_seconds(device, torch.float32), 1e-9)


def resolve_precision(requested: str, device: torch.device, param: str) -> str:
    """`requested` (auto, fp32, bf16, fp16) -> the precision to run in on `device`; logged once.

    `param` names the params key (e.g. "train.precision") in the log and in the warning that an
    explicit precision the hardware only emulates gets."""
    if requested == "auto":
        if device.type == "cuda":
            resolved = "bf16" if native(device, "bf16") else "fp16"
        else:
            resolved = "bf16" if native(device, "bf16") else "fp32"
        where = describe_cpu() if device.type == "cpu" else f"{torch.cuda.get_device_name(device)}"
        log.info("%s: auto -> %s on %s", param, resolved, where)
        return resolved
    if requested not in ("fp32", *DTYPES):
        raise PipelineError(f"{param} = {requested!r}: expected auto, fp32, bf16 or fp16")
    if requested != "fp32" and not native(device, requested):
        log.warning(
            "%s = %s: this %s has no native %s and emulates it: a matrix product runs %.0fx slower than in fp32 "
            "here (measured), so expect this stage to run several times slower. Set %s to auto (or fp32).",
            param,
            requested,
            device.type.upper(),
            requested,
            emulation_slowdown(device, requested),
            param,
        )
    else:
        log.info("%s: %s on %s", param, requested, device)
    return requested


def resolve_compile(requested: str, device: torch.device, world: int = 1) -> str | None:
    """train.compile -> the torch.compile mode to train with, None for eager; logged.

    auto: torch.compile's default mode for one process on CUDA, where the GPT's small steps are bound by
    kernel launches; eager on CPU, where compiling the step gained nothing, and under DDP, not measured
    compiled (docs/benchmarks.md). reduce-overhead (CUDA graphs) is asked for explicitly."""
    if requested == "auto":
        mode = "default" if device.type == "cuda" and world == 1 else None
    else:
        mode = None if requested == "none" else requested
    log.info("train.compile: %s -> %s on %s", requested, mode or "eager", device)
    return mode


def resolve_feature_precision(requested: str, device: torch.device) -> str:
    """Precision of frozen-network features that enter a metric (Inception FID): `auto` is bf16 only on a CPU
    that has it natively (where fp32 would dominate the CPU preset's time), else fp32, the published
    protocol's (a GPU has time to spare). docs/evaluation.md gives the measured effect of bf16 on FID."""
    if requested != "auto":
        return requested
    return "bf16" if device.type == "cpu" and native(device, "bf16") else "fp32"


def autocast(device: torch.device, precision: str):
    """Autocast to bf16 or fp16 when asked for, a no-op context for fp32."""
    dtype = DTYPES.get(precision, torch.bfloat16)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision in DTYPES)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 training (its gradients underflow without it); a pass-through otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def adamw(params, device: torch.device, **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused CUDA kernel on a GPU (one launch per update instead of one per tensor group)."""
    return torch.optim.AdamW(params, fused=True if device.type == "cuda" else None, **kwargs)
