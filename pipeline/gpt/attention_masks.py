"""Which slots a slot attends to, per attention pattern: one (T, T) boolean block mask per layer.

Slot t has the grid position of the code it predicts (row t // W, column t % W), as in the position
embeddings; slot 0 holds the prefix (class or start) token. Every pattern is causal (key <= query), and
every slot also sees slot 0, so the class reaches every position in the first layer whatever the pattern.

  full     every earlier slot (the dense baseline)
  local    the `window` latest slots in raster order, itself included
  axial    even layers: the earlier slots of the same row; odd layers: of the same column (Ho et al.
           2019, interleaved by layer)
  strided  even layers: the W latest slots; odd layers: every W-th slot back, i.e. the same column
           (the Sparse Transformer's strided pattern for images, Child et al. 2019, interleaved by layer)

axial and strided differ only in their even layers: a row stops at the left edge of the grid, the W
latest slots wrap into the row above. So two strided layers reach every earlier code, while axial
layers never reach the codes above and to the right of a slot (every hop moves left or up). With one
layer, only the even-layer pattern is used.

The model registers each layer's mask once, at construction, and slices the rows of a step's queries
from it by absolute position (`query_rows`), with or without a KV cache.
"""

from __future__ import annotations

import torch

ATTENTIONS = ("full", "local", "axial", "strided")


def block_mask(attention: str, grid_h: int, grid_w: int, window: int, layer: int) -> torch.Tensor:
    """(T, T) bool, T = grid_h * grid_w: entry [q, k] says whether slot q attends to slot k in `layer`."""
    t = torch.arange(grid_h * grid_w)
    q, k = t[:, None], t[None, :]
    column_layer = layer % 2 == 1
    if attention == "full":
        allowed = torch.ones_like(q - k, dtype=torch.bool)
    elif attention == "local":
        allowed = q - k < window
    elif attention == "axial":
        allowed = q % grid_w == k % grid_w if column_layer else q // grid_w == k // grid_w
    elif attention == "strided":
        allowed = (q - k) % grid_w == 0 if column_layer else q - k < grid_w
    else:
        raise ValueError(f"unknown attention {attention!r}; expected one of {', '.join(ATTENTIONS)}")
    return (allowed & (k <= q)) | (k == 0)


def query_rows(mask: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """The mask rows of `length` queries at absolute slots start.., over keys 0..start+length-1."""
    return mask[start : start + length, : start + length]
