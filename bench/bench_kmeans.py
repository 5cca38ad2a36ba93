"""Benchmark the codebook's k-means: FAISS settings vs time and quality, and FAISS vs scikit-learn.

Part 1 (settings): for each (sample_size, niter), fit FAISS k-means on a seeded sample and assign every
vector; report fit + assign seconds and the relative quantisation error (fraction of variance
unexplained) on ALL vectors. Target: 3.2M x 64 -> 512 codes in <= 60 s on 2 cores. Wall seconds
depend on what else the machine runs; CPU seconds (all threads of this process) much less so: on an
idle machine wall ~= CPU / threads.

Part 2 (FAISS vs scikit-learn at equal objective, same sample, same run): FAISS's k-means objective
(sum of squared distances at its last iteration) is the target; KMeans (Lloyd) is timed until its
per-iteration inertia first reaches it (timestamps of its verbose lines), MiniBatchKMeans is fitted
with growing budgets and timed until its objective on the sample reaches it.

Uses the real train features of data/features/features.h5 when present, else a synthetic mixture of
Gaussians of the same size. Example:
    .venv/bin/python bench/bench_kmeans.py --configs 131072:25,262144:20 --sklearn-sample 100000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import time
from pathlib import Path

# FAISS's OpenMP threads busy-wait by default; libgomp reads this once, before faiss or torch load it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss
import h5py
import numpy as np
from threadpoolctl import threadpool_limits

from pipeline.tokenizer import kmeans as cb


def load_vectors(features: Path, n: int, dim: int, seed: int) -> tuple[np.ndarray, str]:
    """(N, 1, 1, C) float32 train vectors: real features if the file exists, else synthetic."""
    if features.is_file():
        with h5py.File(features, "r") as f:
            x = f["train/features"][:]
        return x.reshape(-1, 1, 1, x.shape[-1]).astype(np.float32), f"real {features}"
    rng = np.random.default_rng(seed)
    # 2,000 anisotropic Gaussian modes: far more modes than codes, like patch features.
    centers = rng.standard_normal((2000, dim)).astype(np.float32) * 2.0
    scales = rng.uniform(0.3, 1.5, (2000, dim)).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 1 << 20):
        ids = rng.integers(0, 2000, min(1 << 20, n - s))
        x[s : s + len(ids)] = centers[ids] + scales[ids] * rng.standard_normal((len(ids), dim), dtype=np.float32)
    return x.reshape(n, 1, 1, dim), "synthetic mixture of Gaussians"


def faiss_settings(x: np.ndarray, k: int, configs: list[tuple[int, int]], seed: int) -> None:
    print(f"\n## FAISS settings: {x.shape[0]:,} x {x.shape[-1]} -> {k} codes, {faiss.omp_get_max_threads()} threads")
    print("| sample | niter | fit s | assign s | total s | total CPU s | rel. error (all vectors) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for sample_size, niter in configs:
        sample = cb.sample_vectors(x, sample_size, seed)
        cpu0 = time.process_time()
        fit = cb.fit_kmeans(sample, k, niter, seed, max_points_per_centroid=sample_size // k + 1)
        a = cb.assign(x, fit.centroids)
        cpu = time.process_time() - cpu0
        print(
            f"| {sample_size:,} | {niter} | {fit.seconds:.1f} | {a.seconds:.1f} | {fit.seconds + a.seconds:.1f} "
            f"| {cpu:.1f} | {a.relative_error:.4f} |",
            flush=True,
        )


class _Timestamped(io.TextIOBase):
    """stdout replacement that records when each line was printed."""

    def __init__(self):
        self.lines: list[tuple[float, float, str]] = []  # (wall, CPU, line)

    def write(self, s: str) -> int:
        self.lines += [(time.perf_counter(), time.process_time(), ln) for ln in s.splitlines() if ln.strip()]
        return len(s)


def _iterations(lines, t0: float, cpu0: float) -> list[tuple[float, float, int, float]]:
    """(wall s, CPU s, iteration, inertia) from KMeans's verbose 'Iteration i, inertia v.' lines."""
    found = []
    for t, cpu, line in lines:
        m = re.match(r"Iteration (\d+), inertia ([0-9.e+-]+?)\.?$", line)
        if m:
            found.append((t - t0, cpu - cpu0, int(m.group(1)), float(m.group(2))))
    return found


def sklearn_vs_faiss(x: np.ndarray, k: int, sample_size: int, niter: int, seed: int, budget_s: float) -> None:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    sample = cb.sample_vectors(x, sample_size, seed)
    grid = sample.reshape(-1, 1, 1, sample.shape[1])
    cpu0 = time.process_time()
    fit = cb.fit_kmeans(sample, k, niter, seed, max_points_per_centroid=sample_size // k + 1)
    fit_cpu = time.process_time() - cpu0
    target = fit.objective
    print(f"\n## Equal objective on one sample of {sample_size:,} x {sample.shape[1]}, k = {k}")
    print(f"target: FAISS objective after {niter} iterations = {target:.6g} (mean {target / sample_size:.4f})\n")
    print("| method | s to reach the FAISS objective | CPU s | objective reached | note |")
    print("|---|---:|---:|---:|---|")
    print(f"| FAISS Kmeans (random init) | {fit.seconds:.1f} | {fit_cpu:.1f} | {target:.6g} | {niter} iterations |")

    for init in ("random", "k-means++"):
        out = _Timestamped()
        km = KMeans(k, init=init, n_init=1, max_iter=10 * niter, tol=0.0, random_state=seed, verbose=1)
        t0, cpu0 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(out):
            km.fit(sample)
        total, total_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        reached = next((it for it in _iterations(out.lines, t0, cpu0) if it[3] <= target), None)
        if reached:
            wall, cpu, i, value = reached
            print(f"| sklearn KMeans (init={init}) | {wall:.1f} | {cpu:.1f} | {value:.6g} | iteration {i} |")
        else:
            print(
                f"| sklearn KMeans (init={init}) | not reached in {total:.1f} | {total_cpu:.1f} "
                f"| {km.inertia_:.6g} | {km.n_iter_} iterations |"
            )
        sys.stdout.flush()

    spent, seconds, epochs = 0.0, 0.0, 1
    while spent + 3 * seconds < budget_s:  # the next try runs 3x the epochs of the last
        mb = MiniBatchKMeans(
            k,
            init="random",
            batch_size=4096,
            n_init=1,
            max_iter=epochs,
            tol=0.0,
            max_no_improvement=None,
            random_state=seed,
        )
        t0, cpu0 = time.perf_counter(), time.process_time()
        mb.fit(sample)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        spent += seconds
        sse = cb.assign(grid, mb.cluster_centers_.astype(np.float32)).sse
        done = sse <= target
        print(
            f"| sklearn MiniBatchKMeans | {f'{seconds:.1f}' if done else f'not reached in {seconds:.1f}'} "
            f"| {cpu:.1f} | {sse:.6g} | {epochs} epoch(s), batch 4096 |",
            flush=True,
        )
        if done:
            break
        epochs *= 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=Path, default=Path("data/features/features.h5"))
    ap.add_argument("--n", type=int, default=3_200_000, help="synthetic vectors (50,000 images x 8x8 cells)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--configs", default="131072:25,262144:20,524288:12", help="sample:niter,...")
    ap.add_argument("--sklearn-sample", type=int, default=100_000, help="0 skips the sklearn comparison")
    ap.add_argument("--sklearn-niter", type=int, default=25)
    ap.add_argument("--sklearn-budget", type=float, default=300.0, help="seconds for MiniBatchKMeans tries")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    faiss.omp_set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        t0 = time.perf_counter()
        x, source = load_vectors(args.features, args.n, args.dim, args.seed)
        print(f"data: {source}, {x.shape[0]:,} x {x.shape[-1]} (loaded in {time.perf_counter() - t0:.0f} s)")
        configs = [tuple(int(v) for v in c.split(":")) for c in args.configs.split(",") if c]
        faiss_settings(x, args.k, configs, args.seed)
        if args.sklearn_sample:
            sklearn_vs_faiss(x, args.k, args.sklearn_sample, args.sklearn_niter, args.seed, args.sklearn_budget)


if __name__ == "__main__":
    main()
