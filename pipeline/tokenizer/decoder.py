"""Inverse CNN: a grid of codebook vectors -> a 32x32 RGB image.

The input is exactly what a GPT sample yields once each token is replaced by its centroid (with D codes
per cell, the sum of the cell's D centroids): (N, C, g, g) with g in {1, 2, 4, 8, 16}. The centroids
travel inside the model as a frozen buffer, so a saved decoder turns token ids into images on its own
(`decode_tokens`).

Layout: conv stem -> residual blocks at g x g -> (nearest upsample x2, conv, residual block) until
32 x 32, halving the width each time -> GroupNorm, SiLU, conv to RGB, sigmoid (images in [0, 1]).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from pipeline.core.errors import PipelineError

IMAGE_SIZE = 32
MIN_WIDTH = 32  # the upsampling path never narrows below min(this, channels)


@dataclass(frozen=True)
class DecoderConfig:
    in_channels: int  # feature dimension C of the codebook vectors
    grid: int  # g: tokens per image = g * g
    k: int  # codebook size
    channels: int  # width at g x g
    res_blocks: int  # residual blocks at g x g
    codes_per_cell: int = 1  # D: a cell's vector is the sum of its D tokens' centroids (residual quantisation)

    def to_dict(self) -> dict:
        return {"kind": "cnn", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> DecoderConfig:
        # a decoder saved before codes_per_cell existed read one code per cell
        return cls(
            **{k: d[k] for k in ("in_channels", "grid", "k", "channels", "res_blocks")},
            codes_per_cell=d.get("codes_per_cell", 1),
        )


def upsampling_steps(grid: int) -> int:
    steps = math.log2(IMAGE_SIZE / grid) if 0 < grid <= IMAGE_SIZE else -1
    if steps < 1 or steps != int(steps):
        raise PipelineError(
            f"the CNN decoder needs a token grid of 1, 2, 4, 8 or 16 (a power of two below {IMAGE_SIZE}); "
            f"got grid {grid}. Set extract.grid accordingly (grid 32 is the pixel palette)."
        )
    return int(steps)


def _groups(channels: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(ch), ch),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.GroupNorm(_groups(ch), ch),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class InverseCNN(nn.Module):
    def __init__(self, config: DecoderConfig, centroids: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        if centroids is None:
            centroids = torch.zeros(config.k, config.in_channels)
        if tuple(centroids.shape) != (config.k, config.in_channels):
            raise PipelineError(
                f"codebook centroids have shape {tuple(centroids.shape)}, the decoder expects "
                f"({config.k}, {config.in_channels}); re-run the codebook and decoder stages together"
            )
        # Frozen lookup table: part of the saved model, not trained.
        self.register_buffer("centroids", centroids.detach().float().clone())
        ch = config.channels
        floor = min(MIN_WIDTH, ch)
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, ch, 3, padding=1)]
        layers += [ResBlock(ch) for _ in range(config.res_blocks)]
        for _ in range(upsampling_steps(config.grid)):
            out = max(ch // 2, floor)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, out, 3, padding=1), ResBlock(out)]
            ch = out
        layers += [nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, 3, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, g*g*D) token ids in raster order, a cell's D codes adjacent -> (N, C, g, g) grid of the cells'
        centroid sums, in channels_last memory layout: the free permuted view, on which oneDNN's CPU
        convolutions decode faster than on an NCHW copy (bench/bench_sampling.py measures it)."""
        g, d = self.config.grid, self.config.codes_per_cell
        if tokens.ndim != 2 or tokens.shape[1] != g * g * d:
            raise PipelineError(
                f"tokens must have shape (N, {g * g * d}) for a {g}x{g} decoder of {d} code(s) per cell, got {tuple(tokens.shape)}"
            )
        vectors = self.centroids[tokens.long()]  # (N, g*g*D, C)
        if d > 1:
            vectors = vectors.view(len(tokens), g * g, d, -1).sum(dim=2)
        return vectors.view(len(tokens), g, g, -1).permute(0, 3, 1, 2)

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight of the convolution to RGB: where VQGAN's adaptive weight compares gradient norms."""
        return self.net[-2].weight

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """(N, C, g, g) centroid grid -> (N, 3, 32, 32) image in [0, 1]."""
        return self.net(grid)

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self(self.embed(tokens))
