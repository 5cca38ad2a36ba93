"""The decoder's training step with its perceptual loss through the frozen encoder as built vs with the encoder's
batch norms folded into its convolutions (the stage's path, `decoder_training.frozen_features`), side by side.

    .venv/bin/python bench/bench_decoder.py [--rounds N]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ...   (as an AVX2-only CPU)

The CPU preset's decoder (presets/cpu.args) as `make repro` projects it (pipeline/projection.py's decoder step:
random tokens, images and encoder weights, nothing downloaded; the speed does not depend on the weights), in the
precision the decoder stage resolves on this CPU. Each round times a few steps of each path in turn, so a VM whose
speed drifts slows both alike; the ratio is of the medians over rounds. Run it on idle cores.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from pipeline.core.runtime import describe_cpu, resolve_precision
from pipeline.params import load_cpu_preset
from pipeline.projection import CPU, Probe
from pipeline.tokenizer import decoder_training as dt

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="steps of each path per round (their median counts)")
    args = ap.parse_args()
    p = load_cpu_preset(ROOT / "params.yaml")
    probe = Probe(p)
    precision = resolve_precision(p.decoder.precision, CPU, "decoder.precision")
    paths = {
        "encoder as built": dt.GridFeatures(probe.encoder, probe.spec),
        "batch norms folded (the stage)": dt.frozen_features(probe.encoder, probe.spec),
    }
    steps = {name: probe.decoder_step(probe.decoder_model(), f, precision) for name, f in paths.items()}
    for step in steps.values():  # warm-up: oneDNN picks and caches its kernels
        step()
        step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times = []
            for _ in range(args.steps):
                t = time.perf_counter()
                step()
                times.append(time.perf_counter() - t)
            seconds[name].append(statistics.median(times))
    print(
        f"{describe_cpu()}; decoder {p.decoder.channels} channels, batch {p.decoder.batch_size}, {precision}; "
        f"{args.rounds} rounds of {args.steps} steps each"
    )
    base = statistics.median(seconds["encoder as built"])
    for name, s in seconds.items():
        m = statistics.median(s)
        print(f"    {name:32s} {m:.3f} s/step (rounds {min(s):.3f}-{max(s):.3f})   {base / m:.2f}x")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
