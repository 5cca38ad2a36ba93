import h5py
import numpy as np
import pytest
from conftest import REAL_NPZ, make_images, requires_real_cifar, write_npz

from pipeline.core.atomic import atomic_path
from pipeline.core.hashing import sha256_file
from pipeline.data import cifar10
from pipeline.data.cifar10 import DataError

EXPECT_SMALL = {"train": 60, "test": 20}


def _download(source, out, expect=EXPECT_SMALL, val_size=10):
    data = cifar10.validate(cifar10.load_source(str(source), out.parent / "cache"), expect)
    cifar10.write_h5(data, out, val_size, val_seed=0)
    return data


def test_npz_to_h5_keeps_images_labels_and_provenance(synthetic_npz, tmp_path):
    out = tmp_path / "raw" / "cifar10.h5"
    _download(synthetic_npz, out)
    src = np.load(synthetic_npz)
    with h5py.File(out) as f:
        order = np.concatenate([f["train/source_index"][:], f["val/source_index"][:]])
        for split, source_split, index in (
            ("train", "train", f["train/source_index"][:]),
            ("val", "train", f["val/source_index"][:]),
            ("test", "test", None),
        ):
            images, labels = f[f"{split}/images"], f[f"{split}/labels"]
            x, y = src[f"x_{source_split}"], src[f"y_{source_split}"]
            x, y = (x, y) if index is None else (x[index], y[index])
            assert images.dtype == np.uint8 and images.shape == x.shape and labels.dtype == np.uint8
            assert images.chunks[1:] == (32, 32, 3)
            np.testing.assert_array_equal(images[:], x)
            np.testing.assert_array_equal(labels[:], y)
        assert np.array_equal(np.sort(order), np.arange(60))  # train and val split the source's train
        assert f.attrs["val_size"] == 10 and f.attrs["val_seed"] == 0
        assert list(f.attrs["classes"]) == list(cifar10.CLASSES)
        assert f.attrs["source"] == str(synthetic_npz)
        assert f.attrs["source_sha256"] == sha256_file(synthetic_npz)
    back = cifar10.read_split(out, "test")
    np.testing.assert_array_equal(back.labels, src["y_test"])
    whole = cifar10.read_source_train(out)  # train and val together, in the source's order
    np.testing.assert_array_equal(whole.images, src["x_train"])
    np.testing.assert_array_equal(whole.labels, src["y_train"])


def test_validation_split_is_class_balanced_disjoint_and_stable():
    x, y = make_images(200)
    train = cifar10.Split(x, y)
    train_idx, val_idx = cifar10.hold_out(train, 40, seed=3)
    assert np.bincount(y[val_idx], minlength=10).tolist() == [4] * 10  # class-balanced
    assert not set(train_idx) & set(val_idx) and len(train_idx) + len(val_idx) == 200  # a partition
    again_train, again_val = cifar10.hold_out(train, 40, seed=3)
    assert np.array_equal(val_idx, again_val) and np.array_equal(train_idx, again_train)  # stable
    assert not np.array_equal(val_idx, cifar10.hold_out(train, 40, seed=4)[1])  # the seed matters
    with pytest.raises(DataError, match="multiple of 10"):
        cifar10.hold_out(train, 45, seed=0)
    with pytest.raises(DataError, match="lower download.val_size"):
        cifar10.hold_out(train, 200, seed=0)


def test_int64_labels_are_accepted_and_stored_as_uint8(tmp_path):
    x, y = make_images(60)
    npz = write_npz(tmp_path / "c.npz", y_train=y.astype(np.int64))
    data = _download(npz, tmp_path / "out.h5")
    assert data.train.labels.dtype == np.uint8


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"x_train": np.zeros((60, 32, 32), np.uint8)}, "uint8 (N, 32, 32, 3)"),
        ({"x_test": np.zeros((20, 32, 32, 3), np.float32)}, "uint8 (N, 32, 32, 3)"),
        ({"y_train": np.full(60, 10, np.uint8)}, "labels must lie in 0..9"),
        ({"y_test": np.zeros(19, np.uint8)}, "20 images but labels of shape (19,)"),
        ({"y_train": np.zeros(60, np.float32)}, "labels must be integers"),
        ({"x_train": np.zeros((59, 32, 32, 3), np.uint8), "y_train": np.zeros(59, np.uint8)}, "59 images, expected 60"),
    ],
)
def test_bad_arrays_are_rejected_and_nothing_is_written(tmp_path, overrides, message):
    npz = write_npz(tmp_path / "bad.npz", **overrides)
    out = tmp_path / "raw" / "cifar10.h5"
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _download(npz, out)
    assert not out.exists()


def test_truncated_npz_names_the_file(synthetic_npz, tmp_path):
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(synthetic_npz.read_bytes()[: synthetic_npz.stat().st_size // 2])
    out = tmp_path / "out.h5"
    with pytest.raises(DataError, match=r"truncated\.npz: corrupt or truncated"):
        _download(truncated, out)
    assert not out.exists()


def test_npz_missing_arrays_is_explained(tmp_path):
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"missing arrays \['x_test', 'y_test', 'y_train'\]"):
        cifar10.load_source(str(tmp_path / "partial.npz"), tmp_path)


def test_missing_source_says_what_is_accepted(tmp_path):
    with pytest.raises(DataError, match="download.source = .*no such file.*torchvision"):
        cifar10.load_source(str(tmp_path / "nowhere.npz"), tmp_path)


def test_tampered_batches_folder_is_rejected_before_unpickling(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
        "batches.meta",
    ]:
        (folder / name).write_bytes(b"not the official file")
    with pytest.raises(DataError, match="cifar-10-batches-py.*corrupted"):
        cifar10.load_source(str(folder), tmp_path)


def test_interrupted_write_leaves_no_output(synthetic_npz, tmp_path):
    out = tmp_path / "out.h5"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == [synthetic_npz]


def test_failed_rewrite_keeps_previous_artifact(tmp_path):
    out = tmp_path / "artifact.bin"
    out.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"new but broken")
            raise RuntimeError("killed")
    assert out.read_bytes() == b"previous"


@requires_real_cifar
def test_real_cifar10_counts_per_class(tmp_path):
    data = cifar10.validate(cifar10.load_source(str(REAL_NPZ), tmp_path), {"train": 50_000, "test": 10_000})
    assert np.bincount(data.train.labels).tolist() == [5_000] * 10
    assert np.bincount(data.test.labels).tolist() == [1_000] * 10
    assert data.classes == cifar10.CLASSES
