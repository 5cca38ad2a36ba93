"""Shared test helpers: repo paths, the real-data locations, synthetic CIFAR-shaped data."""

from __future__ import annotations

import os

# FAISS's OpenMP threads busy-wait by default, which starves torch on 2 cores; this must be set
# before torch or faiss load libgomp (stages/__init__.py does the same for the CLI).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# DVC sends a usage report after each command from a background process; offline (CI) the report
# file stays in /tmp, one per `dvc` call the tests make.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import copy  # noqa: E402
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from pipeline.data import cifar10  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_NPZ = SHARED / "data" / "cifar10" / "cifar10.npz"
TORCH_HOME = SHARED / "torch-home"
TINY_PROFILE = REPO / "tests" / "profiles" / "tiny.yaml"

requires_real_cifar = pytest.mark.skipif(not REAL_NPZ.is_file(), reason=f"real CIFAR-10 not at {REAL_NPZ}")
requires_real_weights = pytest.mark.skipif(
    not (TORCH_HOME / "hub" / "checkpoints").is_dir(), reason=f"pre-trained weights not at {TORCH_HOME}"
)


def inception_weights() -> Path | None:
    """The verified Inception weights file when this machine has one (`make venv` puts it in the cache)."""
    from pipeline.core.errors import PipelineError
    from pipeline.evaluation.inception import find_weights

    try:
        return find_weights()
    except PipelineError:
        return None


requires_inception = pytest.mark.skipif(
    inception_weights() is None, reason="Inception weights absent (make venv / python -m pipeline.evaluation.inception)"
)


@pytest.fixture
def torch_home(monkeypatch) -> Path:
    """TORCH_HOME pointed at the real pre-trained weights; the test skips where they are absent."""
    if not (TORCH_HOME / "hub" / "checkpoints").is_dir():
        pytest.skip(f"pre-trained weights not at {TORCH_HOME}")
    monkeypatch.setenv("TORCH_HOME", str(TORCH_HOME))
    return TORCH_HOME


@pytest.fixture(autouse=True)
def one_thread():
    """Test models are tiny: 2 OpenMP threads on 2 busy cores spend far longer in barriers than in math."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def vary_batch_norms(module: torch.nn.Module) -> None:
    """Give every BatchNorm2d of `module` non-trivial statistics and scales (the fresh ones are 0 / 1), so that
    folding them into the convolutions actually changes the weights. Seed torch first."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)


def make_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n random CIFAR-shaped uint8 images and labels cycling through the 10 classes."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def write_raw(path: Path, n_train: int, n_test: int, n_val: int = 10) -> SimpleNamespace:
    """A raw cifar10.h5 as the download stage writes it, with n_train / n_val / n_test images (n_val held
    out of n_train + n_val source images); returns its splits as read back (`.train`, `.val`, `.test`)."""
    (x_train, y_train), (x_test, y_test) = make_images(n_train + n_val, seed=1), make_images(n_test, seed=2)
    data = cifar10.Cifar10(cifar10.Split(x_train, y_train), cifar10.Split(x_test, y_test), cifar10.CLASSES, "synthetic")
    cifar10.write_h5(data, path, n_val, val_seed=0)
    return SimpleNamespace(**{split: cifar10.read_split(path, split) for split in cifar10.SPLITS})


def token_attrs(k: int, grid: int, **attrs) -> dict:
    """tokens.h5 attributes of a square token grid over the 10 classes (codebook contract), plus `attrs`."""
    return dict(k=k, grid_h=grid, grid_w=grid, n_classes=10, **attrs)


def write_npz(path: Path, n_train: int = 60, n_test: int = 20, **overrides) -> Path:
    x_train, y_train = make_images(n_train, seed=1)
    x_test, y_test = make_images(n_test, seed=2)
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def synthetic_npz(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "cifar_small.npz")


@pytest.fixture
def repo_params() -> dict:
    """The repository's params.yaml as a plain mapping (a fresh copy per test)."""
    return copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))


def venv_env() -> dict[str, str]:
    """Environment in which `python` and `dvc` are the ones running the tests."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def copy_repo(dest: Path) -> Path:
    """A fresh git repository holding the project's tracked files, as a user's clone would."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> tuple[Path, str]:
    """The whole pipeline run once by `dvc repro` on the tiny profile (tests/profiles/tiny.yaml, 200/100
    synthetic images), shared by the session: (repository, dvc's output). Tests change a `copy_run` of it."""
    if not (TORCH_HOME / "hub" / "checkpoints").is_dir():
        pytest.skip(f"pre-trained weights not at {TORCH_HOME}")
    if inception_weights() is None:
        pytest.skip("Inception weights absent (make venv / python -m pipeline.evaluation.inception)")
    root = tmp_path_factory.mktemp("tiny-pipeline")
    repo = copy_repo(root / "repo")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in yaml.safe_load(TINY_PROFILE.read_text()).items():
        params[section].update(values)
    params["download"]["source"] = str(write_npz(root / "cifar_tiny.npz", n_train=200, n_test=100))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TORCH_HOME", str(TORCH_HOME))  # the CIFAR ResNet weights, offline
        output = run(["dvc", "repro"], cwd=repo).stdout
    return repo, output


def copy_run(repo: Path, dest: Path) -> Path:
    """A copy of a repository with its outputs and DVC cache (e.g. tiny_pipeline's), to change freely."""
    return Path(shutil.copytree(repo, dest, symlinks=True))


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with the test environment; show its output when it fails."""
    proc = subprocess.run(cmd, cwd=cwd, env=venv_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
