"""Where each stage reads and writes. dvc.yaml names the same paths."""

from pathlib import Path

RAW = Path("data/raw/cifar10.h5")
FEATURES = Path("data/features/features.h5")
TOKENS = Path("data/tokens/tokens.h5")
CODEBOOK = Path("data/tokens/codebook.safetensors")
DECODER_DIR = Path("data/models/decoder")
DECODER_CHECKPOINTS = Path("data/checkpoints/decoder")
GPT_DIR = Path("data/models/gpt")
GPT_CHECKPOINTS = Path("data/checkpoints/gpt")
SAMPLES = Path("data/samples/samples.h5")
SAMPLE_GRID = Path("data/samples/grid.png")
METRICS = Path("metrics")  # numbers only: what dvc exp show compares (core/results.py)
INFO = Path("info")  # how each stage's numbers were made: device, precision, protocol, counts
PLOTS = Path("plots")
OUTPUT_ROOTS = (Path("data"), METRICS, INFO, PLOTS)  # every output lives under one of these
REFERENCE = Path("data/reference/inception.h5")


def results_paths(name: str) -> tuple[Path, Path]:
    """metrics/<name>.json (numbers only) and info/<name>.json (how they were made): core/results.py."""
    return METRICS / f"{name}.json", INFO / f"{name}.json"
