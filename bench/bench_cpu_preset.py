"""The CPU preset on this CPU, stage by stage, projected from short timed runs (the preset itself is not run).

    TORCH_HOME=../shared/torch-home .venv/bin/python bench/bench_cpu_preset.py [-S key=value ...] [--json out.json]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ... (the same, as an AVX2-only CPU: no native bf16)
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 ...            (on an AMX CPU: as AVX512-BF16 without AMX)

(a) the CPU as torch sees it, and a 512x512 matrix product in fp32 vs bf16 on one thread: its fp32 GFLOP/s scales
    the table to another CPU, and where bf16 is emulated or slower than fp32, `precision: auto` resolves to fp32;
(b) each long stage of the preset (`-S` words on top of it, as `dvc exp run` takes them, e.g. -S
    decoder.precision=bf16 to time the decoder in bf16): the projection `make repro` prints before it starts
    (pipeline/projection.py: a few timed steps of the stage's own work, times what the params ask for), with
    what was timed. Wall clock on this process's threads: run it on idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from pipeline.core import runtime
from pipeline.core.runtime import PROBE_SIZE, describe_cpu
from pipeline.params import CHECKOUT_PRESET, apply_overrides, apply_words, parse_params, read_yaml
from pipeline.projection import project

ROOT = Path(__file__).resolve().parents[1]


def matmul_gflops(dtype: torch.dtype) -> float:
    """GFLOP/s of `precision: auto`'s probe (a PROBE_SIZE-square matrix product) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # runtime's own probe (private: runtime.py is a dep of every stage, so it is not renamed for a bench)
        return 2 * PROBE_SIZE**3 / runtime._matmul_seconds(torch.device("cpu"), dtype) / 1e9
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    raw = apply_overrides(read_yaml((ROOT / "params.yaml").read_text()), ROOT / CHECKOUT_PRESET)
    words = [w for o in args.overrides for w in ("-S", o)]
    p = parse_params(apply_words(raw, words, "-S"), ROOT / "params.yaml")
    out: dict = {"cpu": describe_cpu(), "load_average": list(os.getloadavg()), "overrides": args.overrides}
    mm = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    out["matmul_512_gflops_1_thread"] = mm
    print(
        f"(a) {out['cpu']}; load average {out['load_average'][0]:.1f}\n    512x512 matmul, 1 thread: fp32 "
        f"{mm['fp32']:.1f} GFLOP/s, bf16 {mm['bf16']:.1f} GFLOP/s (bf16/fp32 = {mm['bf16'] / mm['fp32']:.2f})"
    )
    stages, probe_s = project(p)
    print(f"(b) the CPU preset{' with ' + ' '.join(args.overrides) if args.overrides else ''}, projected:")
    for s in stages:
        print(f"    {s.stage:12s} {s.seconds / 60:5.1f} min   {s.basis}")
    total = sum(s.seconds for s in stages)
    print(f"    {'total':12s} {total / 60:5.1f} min   (the probes took {probe_s:.0f} s)")
    out |= {"stages": {s.stage: {"seconds": s.seconds, "basis": s.basis} for s in stages}, "total_s": total}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
