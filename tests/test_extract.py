"""extract: feature grids of synthetic images -> features.h5 (shapes, attrs, stats, determinism, errors)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from conftest import make_images, vary_batch_norms, write_raw
from typer.testing import CliRunner

from pipeline.core.errors import PipelineError
from pipeline.data import cifar10
from pipeline.features.encoders import build_encoder
from pipeline.features.extract import GridSpec, _check_finite, encode_batch, fuse_conv_bn, run_extract
from pipeline.params import ExtractParams

N_TRAIN, N_TEST = 24, 10
BASE = dict(
    encoder="cifar_resnet20",
    layers=["layer1", "layer2", "layer3"],
    grid=8,
    pool="avg",
    input_size=32,
    standardize=True,
    flip=False,
    batch_size=10,
    precision="fp32",
    device="cpu",
)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A small CIFAR-shaped raw file, as the download stage writes it."""
    path = tmp_path_factory.mktemp("raw") / "cifar10.h5"
    write_raw(path, N_TRAIN, N_TEST)
    return path


def extract(raw, out, **overrides):
    # Random weights keep the tests offline and fast; seeded so runs are comparable.
    torch.manual_seed(0)
    run_extract(ExtractParams(**{**BASE, **overrides}), raw, out, pretrained=False)
    return h5py.File(out, "r")


def test_features_h5_follows_the_contract(raw, tmp_path):
    with extract(raw, tmp_path / "f.h5") as f:
        for split, n in (("train", N_TRAIN), ("val", 10), ("test", N_TEST)):
            feats = f[f"{split}/features"]
            assert feats.shape == (n, 8, 8, 16 + 32 + 64) and feats.dtype == np.float16 and feats.chunks
            assert f[f"{split}/labels"].dtype == np.uint8
            np.testing.assert_array_equal(f[f"{split}/labels"][:], cifar10.read_split(raw, split).labels)
        assert f["stats/mean"].shape == f["stats/std"].shape == (112,) and f["stats/mean"].dtype == np.float32
        a = dict(f.attrs)
        assert a["encoder"] == "cifar_resnet20" and list(a["layers"]) == BASE["layers"]
        assert (a["grid"], a["input_size"], bool(a["standardized"])) == (8, 32, True)
        assert a["weights_sha256"] == "random-init" and "imagenet" in a["normalization"]
        assert a["precision"] == "fp32" and a["channels"] == 112 and list(a["layer_channels"]) == [16, 32, 64]


def test_same_params_give_identical_bytes(raw, tmp_path):
    with extract(raw, tmp_path / "a.h5") as a, extract(raw, tmp_path / "b.h5") as b:
        for key in ("train/features", "test/features", "stats/mean", "stats/std"):
            np.testing.assert_array_equal(a[key][:], b[key][:])


def test_flipped_features_are_the_features_of_mirrored_images(raw, tmp_path):
    """extract.flip: train_flip holds the encoder's features of each train image mirrored left-right
    (standardised with the train statistics), not the train grids flipped (features are not equivariant)."""
    with extract(raw, tmp_path / "flip.h5", flip=True) as f:
        mean, std = f["stats/mean"][:], f["stats/std"][:]
        flipped = f["train_flip/features"][:]
        np.testing.assert_array_equal(f["train_flip/labels"][:], f["train/labels"][:])
        grids = f["train/features"][:]
    torch.manual_seed(0)
    encoder = build_encoder(BASE["encoder"], pretrained=False)
    mirrored = cifar10.read_split(raw, "train").images[:, :, ::-1]
    spec = GridSpec(tuple(BASE["layers"]), 8, 32, "avg")
    expect = (
        encode_batch(fuse_conv_bn(encoder), mirrored, spec, torch.device("cpu"), "fp32", False).numpy() - mean
    ) / std
    np.testing.assert_allclose(flipped.astype(np.float32), expect, atol=2e-2, rtol=2e-3)
    assert not np.allclose(flipped, grids[:, :, ::-1], atol=0.1)  # not the train grid mirrored


def test_layers_concatenate_in_order_and_standardisation_uses_train_stats(raw, tmp_path):
    plain = dict(standardize=False)
    with (
        extract(raw, tmp_path / "l1.h5", layers=["layer1"], **plain) as l1,
        extract(raw, tmp_path / "l3.h5", layers=["layer3"], **plain) as l3,
        extract(raw, tmp_path / "both.h5", layers=["layer3", "layer1"], **plain) as both,
        extract(raw, tmp_path / "std.h5", layers=["layer3", "layer1"]) as std,
    ):
        assert "stats" not in both and not both.attrs["standardized"]
        for split in ("train", "test"):
            expect = np.concatenate([l3[f"{split}/features"][:], l1[f"{split}/features"][:]], axis=-1)
            np.testing.assert_array_equal(both[f"{split}/features"][:], expect)
        raw_train = both["train/features"][:].astype(np.float64).reshape(-1, 80)
        mean, sd = std["stats/mean"][:], std["stats/std"][:]
        np.testing.assert_allclose(mean, raw_train.mean(0), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(sd, raw_train.std(0), rtol=2e-3, atol=2e-3)
        z_train = std["train/features"][:].astype(np.float64).reshape(-1, 80)
        np.testing.assert_allclose(z_train.mean(0), 0, atol=5e-3)
        np.testing.assert_allclose(z_train.std(0), 1, atol=5e-3)
        # Test is standardised with the train statistics, not its own.
        z_test = (both["test/features"][:].astype(np.float32) - mean) / sd
        np.testing.assert_allclose(std["test/features"][:], z_test, atol=2e-2, rtol=2e-3)


def test_unshuffle_folds_each_cell_into_channels(raw, tmp_path):
    with extract(raw, tmp_path / "u.h5", encoder="pixels", layers=["rgb"], pool="unshuffle", standardize=False) as f:
        feats = f["train/features"][:]
        assert feats.shape == (N_TRAIN, 8, 8, 3 * 4 * 4) and f.attrs["pool"] == "unshuffle"
        assert list(f.attrs["layer_channels"]) == [48]
        # cell (i, j) holds the 4x4 RGB patch at rows 4i.., cols 4j.., channel-major as pixel_unshuffle lays it out
        x = raw_images(raw)
        patch = x[:, 4:8, 8:12, :].astype(np.float32) / 255  # cell (1, 2)
        expect = patch.transpose(0, 3, 1, 2).reshape(N_TRAIN, -1)
        np.testing.assert_allclose(feats[:, 1, 2, :], expect, atol=2e-3)


def test_unshuffle_needs_a_divisible_grid(raw, tmp_path):
    with pytest.raises(PipelineError, match="extract.pool = 'unshuffle' needs layer 'rgb'.*multiple of extract.grid"):
        extract(raw, tmp_path / "u.h5", encoder="pixels", layers=["rgb"], pool="unshuffle", grid=5, standardize=False)


def raw_images(raw) -> np.ndarray:
    return cifar10.read_split(raw, "train").images


def test_pixels_are_the_rgb_values(raw, tmp_path):
    with extract(raw, tmp_path / "p.h5", encoder="pixels", layers=[], grid=32, standardize=False) as f:
        assert list(f.attrs["layers"]) == ["rgb"] and f.attrs["weights_sha256"] == "none"
        np.testing.assert_allclose(f["test/features"][:], cifar10.read_split(raw, "test").images / 255, atol=1e-3)
    with pytest.raises(PipelineError, match="extract.standardize must be false"):
        extract(raw, tmp_path / "q.h5", encoder="pixels", layers=["rgb"], grid=32)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(encoder="resnet21"), r"extract.encoder = 'resnet21'.*cifar_resnet20"),
        (dict(layers=["layer4"]), r"extract.layers = \['layer4'\].*\['stem', 'layer1', 'layer2', 'layer3'\]"),
        (dict(layers=[]), r"extract.layers = \[\]: empty"),
        (dict(encoder="pixels", layers=["layer1"], standardize=False), r"extract.layers.*\['rgb'\]"),
    ],
)
def test_bad_encoder_or_layer_is_a_clear_error_and_writes_nothing(raw, tmp_path, overrides, message):
    with pytest.raises(PipelineError, match=message):
        extract(raw, tmp_path / "bad.h5", **overrides)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 7e4, -7e4])
def test_features_outside_the_float16_range_are_refused(bad):
    feats = torch.randn(2, 4, 4, 3)
    _check_finite(feats * 1000, "train")  # within range
    feats[1, 2, 3, 0] = bad
    with pytest.raises(PipelineError, match="train: encoder features are non-finite or exceed the float16 range"):
        _check_finite(feats, "train")


def test_conv_bn_fusion_and_bf16_keep_the_features():
    torch.manual_seed(0)
    enc = build_encoder("cifar_resnet20", pretrained=False)
    vary_batch_norms(enc)
    x, _ = make_images(8)
    spec, cpu = GridSpec(("layer1", "layer3"), 8, 32), torch.device("cpu")
    with torch.inference_mode():
        ref = encode_batch(enc, x, spec, cpu, "fp32", channels_last=False)
        fused = encode_batch(fuse_conv_bn(enc), x, spec, cpu, "fp32", channels_last=True)
        bf16 = encode_batch(fuse_conv_bn(enc), x, spec, cpu, "bf16", channels_last=True)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in fuse_conv_bn(enc).modules()) == 0
    torch.testing.assert_close(fused, ref, atol=1e-4, rtol=1e-4)
    assert torch.corrcoef(torch.stack([bf16.flatten(), ref.flatten()]))[0, 1] > 0.999


@pytest.mark.parametrize(
    ("name", "size", "layers", "shapes"),
    [
        ("resnet18", 64, ["stem", "layer2", "layer4"], [(64, 32, 32), (128, 8, 8), (512, 2, 2)]),
        ("resnet50", 64, ["layer1", "layer3"], [(256, 16, 16), (1024, 4, 4)]),
        ("vgg16_bn", 32, ["block1", "block3", "block5"], [(64, 32, 32), (256, 8, 8), (512, 2, 2)]),
        (
            "efficientnet_lite0",
            64,
            ["stem", "stage3", "stage6", "head"],
            [(32, 32, 32), (40, 8, 8), (192, 2, 2), (1280, 2, 2)],
        ),
    ],
)
def test_imagenet_encoders_layer_shapes(name, size, layers, shapes):
    enc = build_encoder(name, pretrained=False)
    with torch.inference_mode():
        out = enc(torch.rand(2, 3, size, size), layers)
    assert list(out) == layers
    assert [tuple(t.shape) for t in out.values()] == [(2, *s) for s in shapes]
    grid = encode_batch(enc, make_images(2)[0], GridSpec(tuple(layers), 4, size), torch.device("cpu"), "fp32", False)
    assert grid.shape == (2, 4, 4, sum(s[0] for s in shapes))


def test_stage_cli_writes_features_and_reports_bad_params(raw, tmp_path, monkeypatch, repo_params):
    import yaml

    from pipeline.paths import FEATURES, RAW
    from stages import app
    from stages import extract as _  # noqa: F401  (registers the command)

    monkeypatch.chdir(tmp_path)
    RAW.parent.mkdir(parents=True)
    RAW.write_bytes(raw.read_bytes())
    repo_params["extract"] = {**BASE, "encoder": "pixels", "layers": [], "grid": 4, "standardize": False}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params))
    result = CliRunner().invoke(app, ["extract", "--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    with h5py.File(FEATURES) as f:
        assert f["train/features"].shape == (N_TRAIN, 4, 4, 3)
