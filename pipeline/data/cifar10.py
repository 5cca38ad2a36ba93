"""CIFAR-10 from torchvision or a local copy, validated, with a held-out validation split, into one HDF5 file.

Layout of the output (read back with `read_split`):
    train/images  uint8 (N, 32, 32, 3)   RGB, NHWC
    train/labels  uint8 (N,)             0..9
    train/source_index  int64 (N,)       position of each image in the source's training set
    val/images, val/labels, val/source_index   the validation split: a seeded, class-balanced part of
                                          the source's training set, disjoint from train
    test/images, test/labels             the source's test set, in its order
    attrs: classes (10 names), source, source_sha256 (local files), val_size, val_seed

Model selection (epochs, defaults, hyper-parameters) reads val; only the evaluation stages (reference,
reconstruct, evaluate) read test. The reference compares with the source's whole training set
(`read_source_train`: train and val together), as published FIDs do.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pipeline.core.artifacts import open_h5, rerun
from pipeline.core.atomic import atomic_path
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import sha256_file
from pipeline.params import DownloadParams

log = logging.getLogger(__name__)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SOURCE_SPLITS = ("train", "test")  # what a CIFAR-10 source holds
SPLITS = ("train", "val", "test")  # what the raw file holds
IMAGE_SHAPE = (32, 32, 3)
CHUNK_IMAGES = 1024  # ~3 MiB chunks: large sequential reads, cheap random batches
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
LOCAL_SOURCE_HINT = (
    "point download.source at a local copy, a .npz with x_train, y_train, x_test, y_test or an extracted "
    "cifar-10-batches-py folder: set it in params.yaml or run `dvc exp run -S download.source=/path/to/cifar10.npz`"
)


class DataError(PipelineError):
    """A CIFAR-10 source or file is missing, corrupt or not CIFAR-10 shaped."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 (N, 32, 32, 3)
    labels: np.ndarray  # uint8 (N,)


@dataclass(frozen=True)
class Cifar10:
    train: Split
    test: Split
    classes: tuple[str, ...]
    source: str
    source_sha256: str = ""


def load_source(source: str, cache_dir: str | Path) -> Cifar10:
    """Load CIFAR-10 from "torchvision" (download), a .npz file or a cifar-10-batches-py folder."""
    if source == "torchvision":
        return _from_torchvision(Path(cache_dir), download=True)
    path = Path(source)
    try:
        exists = path.exists()
    except OSError as e:  # e.g. a name longer than the filesystem allows (ENAMETOOLONG)
        raise DataError(
            f"download.source = {source[:80]!r}... ({len(source)} characters): not a usable path "
            f"({e.strerror}); set download.source to 'torchvision' or an existing file or folder"
        ) from None
    if not exists:
        raise DataError(
            f"download.source = {source!r}: no such file or folder. Use 'torchvision' to download, "
            "a .npz with x_train/y_train/x_test/y_test, or a cifar-10-batches-py folder."
        )
    if path.is_dir():
        return _from_batches_folder(path)
    return _from_npz(path)


def _from_npz(path: Path) -> Cifar10:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == np.lib.format.MAGIC_PREFIX:
        raise DataError(
            f"{path}: a .npy file holds one array; download.source must be a .npz with x_train, "
            "y_train, x_test, y_test (np.savez), or a cifar-10-batches-py folder"
        )
    if magic[:2] == b"\x1f\x8b":
        raise DataError(
            f"{path}: a gzip archive; extract it (tar xzf) and set download.source to the "
            "cifar-10-batches-py folder inside, or to a .npz"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = set(NPZ_ARRAYS) - set(z.files)
            if missing:
                raise DataError(f"{path}: missing arrays {sorted(missing)}; expected x_train, y_train, x_test, y_test")
            keys = [*NPZ_ARRAYS, *(["classes"] if "classes" in z.files else [])]
            for key in keys:
                _refuse_object_array(z, key, path)
            arrays = {k: z[k] for k in keys}
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as e:
        raise DataError(
            f"{path}: corrupt or truncated .npz ({type(e).__name__}: {e}); re-download or re-create it"
        ) from None
    classes = tuple(str(c) for c in arrays["classes"]) if "classes" in arrays else CLASSES
    return Cifar10(
        train=Split(arrays["x_train"], arrays["y_train"]),
        test=Split(arrays["x_test"], arrays["y_test"]),
        classes=classes,
        source=str(path),
        source_sha256=sha256_file(path),
    )


def _refuse_object_array(z, key: str, path: Path) -> None:
    """An object array is stored as a pickle, which is never loaded from a data file: say so (numpy
    itself would only say that the file cannot be loaded)."""
    with z.zip.open(f"{key}.npy") as fp:
        version = np.lib.format.read_magic(fp)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        dtype = header(fp)[2]
    if dtype.hasobject:
        fix = "a plain numeric array"
        if key == "classes":
            fix = "a string array (np.array(names, dtype=str)), or leave it out for the standard names"
        raise DataError(
            f"{path}: '{key}' is an object array, stored as a pickle, which is never loaded from a "
            f"data file; save it as {fix}"
        )


def _from_batches_folder(path: Path) -> Cifar10:
    # Each batch file is checked against the official md5 before anything is unpickled, so a tampered
    # or truncated file is named and rejected instead of being unpickled.
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    if path.name != "cifar-10-batches-py":
        raise DataError(f"{path}: a local CIFAR-10 folder must be the extracted 'cifar-10-batches-py' folder")
    official = [*CIFAR10.train_list, *CIFAR10.test_list, [CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    bad = [
        f"{name} ({'missing' if not (path / name).is_file() else 'md5 differs: truncated, corrupted or modified'})"
        for name, md5 in official
        if not check_integrity(str(path / name), md5)
    ]
    if bad:
        raise DataError(
            f"{path}: {', '.join(bad)}; the folder must hold the official files unchanged. Extract "
            f"{CIFAR10.url} again and point download.source at its cifar-10-batches-py folder, or set "
            "download.source to a .npz (or to torchvision, online)"
        )
    return _from_torchvision(path.parent, download=False)


def _from_torchvision(root: Path, download: bool) -> Cifar10:
    from torchvision.datasets import CIFAR10

    splits = {}
    for split in SOURCE_SPLITS:
        try:
            ds = CIFAR10(root=str(root), train=split == "train", download=download)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted."
            raise DataError(f"{root / 'cifar-10-batches-py'}: {e} Delete the folder and download again.") from None
        except PermissionError as e:
            raise DataError(
                f"{e.filename or root}: permission denied; make download.cache_dir ({root}) "
                "writable or point it elsewhere"
            ) from None
        except OSError as e:  # URLError, timeouts, refused connections: no network
            raise DataError(
                f"CIFAR-10 could not be downloaded from {CIFAR10.url} ({type(e).__name__}: {e}). "
                f"Offline, {LOCAL_SOURCE_HINT}"
            ) from None
        splits[split] = Split(np.asarray(ds.data), np.asarray(ds.targets))
    origin = "torchvision.datasets.CIFAR10" if download else str(root / "cifar-10-batches-py")
    return Cifar10(splits["train"], splits["test"], tuple(ds.classes), origin)


def validate(data: Cifar10, expect: dict[str, int | None]) -> Cifar10:
    """Check shapes, dtypes, label range and counts; return labels as uint8."""
    out = {}
    for split in SOURCE_SPLITS:
        s: Split = getattr(data, split)
        x, y = s.images, np.asarray(s.labels)
        where = f"{data.source} ({split})"
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{where}: images must be uint8 (N, 32, 32, 3), got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{where}: {len(x)} images but labels of shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: labels must be integers, got {y.dtype}")
        if len(y) and (y.min() < 0 or y.max() >= len(CLASSES)):
            raise DataError(f"{where}: labels must lie in 0..9, got {y.min()}..{y.max()}")
        want = expect.get(split)
        if want is not None and len(x) != want:
            raise DataError(
                f"{where}: {len(x)} images, expected {want} (download.expect_{split}); the source is "
                f"truncated or not CIFAR-10 -- or set download.expect_{split} to null to accept it"
            )
        out[split] = Split(np.ascontiguousarray(x), y.astype(np.uint8))
    if len(data.classes) != len(CLASSES):
        raise DataError(f"{data.source}: expected 10 class names, got {len(data.classes)}")
    return Cifar10(out["train"], out["test"], data.classes, data.source, data.source_sha256)


def hold_out(train: Split, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices) into `train`: val_size / 10 images of every class, drawn with a
    numpy Generator seeded with `seed`; both sorted, so each split keeps the source's order."""
    n_classes = len(CLASSES)
    if val_size % n_classes:
        raise DataError(f"download.val_size = {val_size} must be a multiple of {n_classes} (the same number per class)")
    per_class = val_size // n_classes
    rng = np.random.default_rng(seed)
    val = []
    for c in range(n_classes):
        members = np.flatnonzero(train.labels == c)
        if len(members) == 0:  # no val_size can help: the source lacks the class
            raise DataError(
                f"download.source: the training set has no image of class {c} ({CLASSES[c]}); every class needs "
                "training images: use a complete CIFAR-10 source"
            )
        if len(members) <= per_class:
            raise DataError(
                f"download.val_size = {val_size} asks for {per_class} images of class {c} ({CLASSES[c]}), but the "
                f"training set has {len(members)}; lower download.val_size"
            )
        val.append(rng.choice(members, per_class, replace=False))
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(train.labels)), val_idx), val_idx


def write_h5(data: Cifar10, target: str | Path, val_size: int, val_seed: int) -> dict[str, int]:
    """Write train / val (held out of the source's train, `hold_out`) / test to `target` atomically;
    return the number of images per split."""
    train_idx, val_idx = hold_out(data.train, val_size, val_seed)
    splits = {
        "train": (data.train.images[train_idx], data.train.labels[train_idx], train_idx),
        "val": (data.train.images[val_idx], data.train.labels[val_idx], val_idx),
        "test": (data.test.images, data.test.labels, None),
    }
    with atomic_path(target) as tmp:
        with h5py.File(tmp, "w") as f:
            for split, (images, labels, index) in splits.items():
                g = f.create_group(split)
                n = len(images)
                g.create_dataset("images", data=images, chunks=(max(1, min(n, CHUNK_IMAGES)), *IMAGE_SHAPE))
                g.create_dataset("labels", data=labels)
                if index is not None:
                    g.create_dataset("source_index", data=index.astype(np.int64))
            f.attrs.update(
                classes=list(data.classes),
                source=data.source,
                source_sha256=data.source_sha256,
                val_size=val_size,
                val_seed=val_seed,
            )
    return {split: len(images) for split, (images, _, _) in splits.items()}


def download(p: DownloadParams, target: str | Path) -> dict[str, int]:
    """The download stage: CIFAR-10 from p.source, validated against p's expected counts, written to `target`
    with its validation split held out; returns the number of images per split."""
    log.info("loading CIFAR-10 from %s", p.source)
    data = validate(load_source(p.source, p.cache_dir), {"train": p.expect_train, "test": p.expect_test})
    return write_h5(data, target, p.val_size, p.val_seed)


def read_split(path: str | Path, split: str) -> Split:
    """Read one split of the raw HDF5 file into memory."""
    with open_h5(path, "download", "raw CIFAR-10 file") as f:
        if f"{split}/images" not in f or f"{split}/labels" not in f:
            raise DataError(f"{path}: has no '{split}' images and labels; {rerun('download')}")
        return Split(f[split]["images"][:], f[split]["labels"][:])


def read_source_train(path: str | Path) -> Split:
    """The source's whole training set, train and val put back in the source's order (what published
    FIDs call the CIFAR-10 training set)."""
    with open_h5(path, "download", "raw CIFAR-10 file") as f:
        parts = []
        for split in ("train", "val"):
            if f"{split}/source_index" not in f:
                raise DataError(f"{path}: has no '{split}/source_index'; {rerun('download')}")
            parts.append((f[split]["images"][:], f[split]["labels"][:], f[split]["source_index"][:]))
    order = np.argsort(np.concatenate([index for _, _, index in parts]), kind="stable")
    return Split(np.concatenate([p[0] for p in parts])[order], np.concatenate([p[1] for p in parts])[order])


def source_changed(raw: str | Path, source: str) -> str | None:
    """Why `raw` (a cifar10.h5) no longer matches the local file `source` it was made from, or None.

    DVC sees download.source as a string: a .npz replaced under the same name changes nothing it hashes, so
    `dvc repro` would keep the old images. cifar10.h5 records the file's sha256; `make repro` compares it."""
    path = Path(source)
    if source == "torchvision" or not path.is_file() or not Path(raw).is_file():
        return None
    with h5py.File(raw, "r") as f:
        recorded, made_from = str(f.attrs.get("source_sha256", "")), str(f.attrs.get("source", ""))
    if made_from != source or not recorded or recorded == sha256_file(path):
        return None
    return f"{source} changed since {raw} was made from it (sha256 {recorded[:12]}... -> now differs)"
