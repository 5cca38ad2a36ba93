"""CIFAR-10 ResNets 20/32/44/56 (He et al. 2015, 6n+2 layers, option-A shortcuts) with pretrained weights.

The weights are akamaster/pytorch_resnet_cifar10's checkpoints, fetched through the torch hub cache
(`TORCH_HOME`; point it at a folder holding hub/checkpoints/<file> for offline use). The model takes
float RGB in [0, 1] and applies the ImageNet mean/std the checkpoints were trained with (without it
the published accuracies are not reached; tests/test_encoders.py checks ResNet-20's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.features.encoders.hub import verified_weights

URL_BASE = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
# depth -> (checkpoint file, full sha256 of the published file); the 8 hex digits in the name are the
# prefix torch.hub checks on download. Every load checks the full digest (encoders/hub.py).
CHECKPOINTS = {
    20: ("resnet20-12fca82f.th", "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
    32: ("resnet32-d509ac18.th", "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850"),
    44: ("resnet44-014dd654.th", "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4"),
    56: ("resnet56-4bfd9763.th", "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGES = ("layer1", "layer2", "layer3")


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Option A: parameter-free shortcut; subsample and zero-pad planes//4 channels each side.
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else 0

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pad:
            return x
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """6n+2-layer CIFAR ResNet; input float RGB [0, 1] (N, 3, 32, 32), output logits (N, 10)."""

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.linear = nn.Linear(64, num_classes)
        self.weights_sha256 = "random-init"  # the real sha256 of the weights file, once loaded
        # Buffers (not in the checkpoint): excluded from the state dict so strict loading works.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def named_stages(self) -> list[tuple[str, nn.Module]]:
        """The network as named pieces run in order (input already normalised); shares the modules."""
        return [("stem", nn.Sequential(self.conv1, self.bn1, nn.ReLU()))] + [(n, getattr(self, n)) for n in STAGES]

    def stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage outputs {layer1: 16x32x32, layer2: 32x16x16, layer3: 64x8x8} for a 32x32 input."""
        # Spelled out (not via named_stages) so torch.fx can trace it, e.g. to fold BN into the convs.
        x = F.relu(self.bn1(self.conv1((x - self.mean) / self.std)))
        out = {}
        for name in STAGES:
            x = out[name] = getattr(self, name)(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(x)["layer3"]
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def load_state_dict(depth: int) -> tuple[dict[str, torch.Tensor], str]:
    """The pretrained checkpoint for `depth` and its file's sha256, from the torch hub cache (downloaded
    if absent and online), verified against the published hash before it is loaded."""
    if depth not in CHECKPOINTS:
        raise PipelineError(
            f"CIFAR ResNet depth {depth} has no pretrained weights; choose one of {sorted(CHECKPOINTS)}"
        )
    name, sha256 = CHECKPOINTS[depth]
    path, actual = verified_weights(URL_BASE + name, sha256)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt["state_dict"] if "state_dict" in ckpt else ckpt
    return {k.removeprefix("module."): v for k, v in state.items()}, actual


def load_cifar_resnet(depth: int = 20) -> CifarResNet:
    """Pretrained CIFAR-10 ResNet-`depth`, eval mode, frozen; `weights_sha256` is its file's hash."""
    model = CifarResNet(depth)
    state, model.weights_sha256 = load_state_dict(depth)
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False)
    return model
