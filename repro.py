"""`make repro`: the whole pipeline with the params that suit this machine, saying up front which and why.

    python repro.py [--preset auto|cpu|gpu] [--dry-run]

auto (the default): without a CUDA GPU the CPU preset, with one the GPU-sized default.
cpu: presets/cpu.args applied with `dvc exp run -S ...`: DVC writes the values into params.yaml,
     records them in dvc.lock next to the outputs they made, and keeps the run as an experiment.
gpu: params.yaml as it is (`dvc repro`), the real experiment, sized for one GPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.atomic import remove_stale_temps_under
from pipeline.core.dvc_lock import lock_problem, set_aside_damaged_lock
from pipeline.data.cifar10 import source_changed
from pipeline.params import CPU_PRESET, DEFAULT_PARAMS, load_cpu_preset, load_params, preset_words, read_yaml
from pipeline.paths import OUTPUT_ROOTS, RAW

ROOT = Path(__file__).resolve().parent  # the checkout


@dataclass(frozen=True)
class Plan:
    preset: str  # "cpu" or "gpu"
    command: list[str]
    reason: str


def plan(preset: str, cuda: bool) -> Plan:
    """Which params to run and the DVC command that runs them, for `preset` on a machine with or without CUDA."""
    if preset == "auto":
        preset = "gpu" if cuda else "cpu"
        reason = "a CUDA GPU is available" if cuda else "no CUDA GPU here (torch.cuda.is_available() is False)"
    else:
        reason = f"PRESET={preset} was asked for"
    if preset == "cpu":
        return Plan("cpu", ["dvc", "exp", "run", *preset_words(ROOT / CPU_PRESET)], reason)
    if preset == "gpu":
        return Plan("gpu", ["dvc", "repro"], reason)
    raise SystemExit(f"PRESET={preset!r}: expected auto, cpu or gpu (e.g. make repro PRESET=cpu)")


def announce(p: Plan) -> str:
    other = "gpu" if p.preset == "cpu" else "cpu"
    if p.preset == "cpu":
        what = (
            f"the CPU preset ({CPU_PRESET}: a smaller decoder and GPT, sized for 2 cores), applied with "
            f"`dvc exp run -S ...`: params.yaml and dvc.lock then hold exactly the params that made the outputs"
        )
    else:
        what = f"the default {DEFAULT_PARAMS} (sized for one GPU) with `dvc repro`"
    return f"make repro: {p.reason} -> {what}.\n  The other one: make repro PRESET={other}\n  $ {' '.join(p.command)}"


def params_edited() -> bool:
    """params.yaml differs from the committed one (e.g. holds the CPU preset of an earlier run)."""
    proc = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", str(DEFAULT_PARAMS)], cwd=ROOT)
    return proc.returncode == 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="auto", help="auto, cpu or gpu")
    ap.add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    args = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    p = plan(args.preset, cuda)
    print(announce(p), flush=True)
    if not cuda:  # what a CPU user is in for, before the first stage starts
        from pipeline.projection import describe, project

        params = load_cpu_preset(ROOT / DEFAULT_PARAMS) if p.preset == "cpu" else load_params(ROOT / DEFAULT_PARAMS)
        print(f"  {describe(*project(params))}", flush=True)
    if p.preset == "gpu" and params_edited():
        print(
            f"  note: {DEFAULT_PARAMS} differs from the committed one (an earlier CPU-preset run writes its values "
            f"there); it runs as it is. `git checkout {DEFAULT_PARAMS}` restores the default.",
            flush=True,
        )
    if args.dry_run:
        if problem := lock_problem(ROOT / "dvc.lock"):
            print(f"  note: dvc.lock: {problem}; a real run moves it aside first", flush=True)
        return
    os.chdir(ROOT)  # params paths (download.source) are relative to the checkout, as for DVC
    # What a killed `dvc repro` can leave, which DVC itself does not recover from (pipeline/core/dvc_lock.py,
    # pipeline/core/atomic.py): a damaged dvc.lock, its own and the stages' temporaries.
    if note := set_aside_damaged_lock(ROOT / "dvc.lock"):
        print(f"  note: {note}", flush=True)
    for stale in remove_stale_temps_under(*(ROOT / root for root in OUTPUT_ROOTS)):
        print(f"  note: removed {stale.relative_to(ROOT)}, left by a killed run", flush=True)
    source = (read_yaml((ROOT / DEFAULT_PARAMS).read_text()) or {}).get("download", {}).get("source", "")
    if changed := source_changed(ROOT / RAW, str(source)):  # invisible to DVC: the param is the same string
        print(f"  note: {changed}; re-running the download stage first\n  $ dvc repro --force download", flush=True)
        if code := subprocess.run(["dvc", "repro", "--force", "download"], cwd=ROOT).returncode:
            sys.exit(code)
    sys.exit(subprocess.run(p.command, cwd=ROOT).returncode)


if __name__ == "__main__":
    main()
