"""One interface from token grids to uint8 images, whatever the tokenizer.

A decoder folder (`data/models/decoder`) holds `config.json` and `model.safetensors`:
    kind "cnn":     the trained InverseCNN (its weights include the codebook centroids)
    kind "palette": the pixel tokenizer's palette, tensor `palette` (K, 3) RGB in [0, 1]; token i of
                    a 32x32 grid is the colour of pixel i (no training, the classic minGPT demo)
`load_token_decoder(folder).decode(tokens)` maps (N, g*g*D) token ids (D codes per cell) to (N, 32, 32, 3) uint8 images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.core.artifacts import damaged, read_model_folder, write_model_folder
from pipeline.core.errors import PipelineError
from pipeline.core.images import to_uint8
from pipeline.core.runtime import autocast
from pipeline.tokenizer.decoder import DecoderConfig, InverseCNN
from pipeline.tokenizer.palette import palette_decode

PALETTE_GRID = 32


@dataclass
class TokenDecoder:
    kind: str  # "cnn" or "palette"
    grid: int
    k: int
    model: InverseCNN | None = None  # kind "cnn"
    palette: torch.Tensor | None = None  # kind "palette": (K, 3) RGB in [0, 1], de-standardised

    @property
    def codes_per_cell(self) -> int:
        return self.model.config.codes_per_cell if self.model is not None else 1

    def decode(
        self, tokens: np.ndarray, batch_size: int = 500, device: torch.device | str = "cpu", precision: str = "fp32"
    ) -> np.ndarray:
        """(N, g*g*D) integer tokens -> (N, 32, 32, 3) uint8 images (`precision` bf16 or fp16: autocast)."""
        tokens = np.asarray(tokens)
        length = self.grid * self.grid * self.codes_per_cell
        if tokens.ndim != 2 or tokens.shape[1] != length:
            raise PipelineError(
                f"tokens of shape {tokens.shape} do not fit this {self.kind} decoder: it expects (N, {length}) for a "
                f"{self.grid}x{self.grid} grid of {self.codes_per_cell} code(s) per cell; decoder and tokens come from different runs"
            )
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= self.k):
            raise PipelineError(f"token ids must lie in 0..{self.k - 1}, got {tokens.min()}..{tokens.max()}")
        if self.kind == "palette":
            return palette_decode(tokens, self.palette.numpy(), self.grid)
        tokens_t = torch.from_numpy(tokens.astype(np.int64))
        device = torch.device(device)
        model = self.model.to(device).eval()
        out = []
        with torch.no_grad(), autocast(device, precision):
            for i in range(0, len(tokens_t), batch_size):
                out.append(to_uint8(model.decode_tokens(tokens_t[i : i + batch_size].to(device))))
        return np.concatenate(out) if out else np.zeros((0, 32, 32, 3), np.uint8)


def save_cnn_decoder(model: InverseCNN, folder: str | Path, extra: dict | None = None) -> None:
    write_model_folder(folder, {**model.config.to_dict(), **(extra or {})}, model.state_dict())


def save_palette_decoder(palette: torch.Tensor, folder: str | Path, extra: dict | None = None) -> None:
    palette = palette.detach().float()
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise PipelineError(f"a palette decoder needs (K, 3) RGB centroids, got {tuple(palette.shape)}")
    config = {"kind": "palette", "grid": PALETTE_GRID, "k": int(palette.shape[0]), **(extra or {})}
    write_model_folder(folder, config, {"palette": palette})


def load_token_decoder(folder: str | Path) -> TokenDecoder:
    config, tensors = read_model_folder(folder, "decoder")
    try:
        if config.get("kind") == "palette":
            return TokenDecoder("palette", int(config["grid"]), int(config["k"]), palette=tensors["palette"])
        if config.get("kind") == "cnn":
            model = InverseCNN(DecoderConfig.from_dict(config))
            model.load_state_dict(tensors)
            return TokenDecoder("cnn", model.config.grid, model.config.k, model=model.eval())
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise damaged(folder, "decoder", f"config and weights do not describe one decoder: {e}") from None
    raise damaged(folder, "decoder", f"unknown decoder kind {config.get('kind')!r} (expected 'cnn' or 'palette')")
