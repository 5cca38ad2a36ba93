"""CNN-token image GPT on CIFAR-10: the importable library behind the DVC stages."""

import os

# FAISS's OpenMP threads busy-wait by default and starve torch's on a small CPU (bench/bench_kmeans.py). libgomp
# reads this once, when torch or faiss first loads it, so it is set here: before any module of the library does.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
