"""Fixed start-up cost of the CLI and of every stage, each in a fresh interpreter.

    .venv/bin/python bench/bench_startup.py [--repeats 3] [--repo PATH] [--json out.json]

`--help`: wall time of `python -m stages --help`. A stage: wall time of a fresh `python` that loads
the CLI and every module the stage's command imports (`hashing.stage_code`, function-level imports
included) - the time `python -m stages <stage>` spends before its first line of work - and the
third-party packages that cost most of it (one more run under `python -X importtime`). `--repo` measures another
checkout (e.g. the commit before a change) with this interpreter. Best of `--repeats`: the cores are
shared, and other processes only ever slow an import down.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

STAGES = ["download", "extract", "codebook", "decoder", "train", "sample", "evaluate"]
LOAD = """
import importlib, stages.__main__
from pipeline.core.hashing import stage_code
for rel in sorted(stage_code({stage!r})):
    importlib.import_module(rel.removesuffix('.py').removesuffix('/__init__').replace('/', '.'))
"""


def timed(cmd: list[str], repo: Path) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=True)
    return time.perf_counter() - t, proc.stderr


def heaviest(importtime: str, top: int = 4) -> list[tuple[str, float]]:
    """The `top` third-party top-level packages by cumulative import time in seconds (a package that
    another one imports counts in both)."""
    found: dict[str, float] = {}
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        name = name.strip()
        if "." not in name and name not in ("stages", "pipeline") and name not in sys.stdlib_module_names:
            found[name] = max(found.get(name, 0.0), int(cumulative) / 1e6)
    return sorted(found.items(), key=lambda kv: -kv[1])[:top]


def best_of(repeats: int, cmd: list[str], repo: Path) -> tuple[float, str]:
    runs = [timed(cmd, repo) for _ in range(repeats)]
    return min(runs, key=lambda r: r[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    py = sys.executable
    out = {"repo": str(args.repo)}
    out["help_s"], _ = best_of(args.repeats, [py, "-m", "stages", "--help"], args.repo)
    print(f"{args.repo}: python -m stages --help {out['help_s']:.2f} s (best of {args.repeats})")
    for stage in STAGES:
        seconds, _ = best_of(args.repeats, [py, "-c", LOAD.format(stage=stage)], args.repo)
        heavy = heaviest(timed([py, "-X", "importtime", "-c", LOAD.format(stage=stage)], args.repo)[1])
        out[stage] = {"seconds": seconds, "heaviest": dict(heavy)}
        print(f"  {stage:9s} {seconds:5.2f} s  " + ", ".join(f"{name} {s:.2f}" for name, s in heavy))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
