"""Device choice and the one precision resolver shared by every stage.

`precision: auto` picks what the hardware does natively, which on a CPU means measurably faster:

    device                                                       auto     training extra
    CUDA, compute capability >= 8 (Ampere+)                      bf16
    older CUDA card (T4, V100, P100)                             fp16     gradient scaler (`grad_scaler`)
    CPU where a bf16 matrix product runs >= 1.2x fp32's speed    bf16     (AMX: about 7x)
    any other CPU (AVX2 laptops, AVX-512 without AMX, ...)       fp32

On a CPU, oneDNN's "bf16 supported" is not enough: AVX-512 CPUs without AMX claim it and run bf16 slower
than fp32 (0.2x without AVX512-BF16, 0.6x with it, measured in docs/benchmarks.md). So `native` times one
512 x 512 matrix product in both precisions, once per process (well under a second), and the resolved
precision's log line gives the measured ratio. An explicit `bf16` or `fp16` runs as asked; where it is
slower than fp32 here, a warning names the param and the measured slow-down.
"""

from __future__ import annotations

import functools
import logging
import time

import torch

from pipeline.core.errors import PipelineError

log = logging.getLogger("pipeline")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PROBE_SIZE = 512  # side of the matrices timed to compare a precision's speed with fp32's
MIN_CPU_SPEEDUP = 1.2  # bf16 on a CPU only when it is this much faster than fp32 (margin for timing noise)


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


def _cpu_supports(precision: str) -> bool:
    """oneDNN's own claim: it has kernels for `precision` on this CPU (fast or not)."""
    mkldnn = torch.ops.mkldnn
    return bool(mkldnn._is_mkldnn_bf16_supported() if precision == "bf16" else mkldnn._is_mkldnn_fp16_supported())


@functools.cache
def cpu_speedup(precision: str) -> float:
    """How many times faster a PROBE_SIZE matrix product runs in `precision` than in fp32 on this CPU, with
    its threads as they are: measured once per process (about 0.1 s where `precision` is slow)."""
    cpu = torch.device("cpu")
    return _matmul_seconds(cpu, torch.float32) / max(_matmul_seconds(cpu, DTYPES[precision]), 1e-9)


def native(device: torch.device, precision: str) -> bool:
    """Whether `device` computes in `precision` (bf16/fp16) in hardware, faster than fp32: on CUDA by compute
    capability, on a CPU by oneDNN's support AND a measured speed-up of at least MIN_CPU_SPEEDUP."""
    if device.type == "cuda":
        return precision == "fp16" or torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return _cpu_supports(precision) and cpu_speedup(precision) >= MIN_CPU_SPEEDUP
    return False


def describe_cpu() -> str:
    """The CPU as torch sees it: vector ISA, bf16's measured speed against fp32's, threads."""
    if _cpu_supports("bf16"):
        bf16 = f"bf16 matrix products at {cpu_speedup('bf16'):.2f}x fp32's speed (measured)"
    else:
        bf16 = "no bf16 kernels"
    return f"{torch.backends.cpu.get_cpu_capability()} CPU, {bf16}, {torch.get_num_threads()} threads"


def _matmul_seconds(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
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
    """How many times slower a matrix product runs in `precision` than in fp32 on `device`, measured (on a CPU,
    the once-per-process probe that `native` uses)."""
    if device.type == "cpu":
        return 1.0 / cpu_speedup(precision)
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
            "%s = %s: this %s has no fast %s (emulated, or slower than fp32 in hardware): a matrix product runs "
            "%.1fx slower than in fp32 here (measured), so expect this stage to run slower. Set %s to auto (or fp32).",
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
