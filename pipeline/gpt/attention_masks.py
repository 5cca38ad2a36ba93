"""Which slots a slot attends to, per attention pattern: one (T, T) boolean block mask per layer.

Slot q predicts code q (row q // W, column q % W), as in the position embeddings, and holds code q - 1;
slot 0 holds the prefix (class or start) token. So patterns are stated in codes: query slot q may look at
the codes k - 1 held by key slots k <= q, and a pattern says which of them, relative to the code q being
predicted. Every slot also sees itself and slot 0, so the class reaches every position in the first
layer whatever the pattern.

  full     every earlier code (the dense baseline)
  local    the `window` latest codes in raster order
  axial    even layers: the earlier codes of the predicted code's row; odd layers: of its column, i.e.
           the codes straight above it (Ho et al. 2019, interleaved by layer)
  strided  even layers: the W latest codes; odd layers: every W-th code back, i.e. its column (the
           Sparse Transformer's strided pattern for images, Child et al. 2019, interleaved by layer)

Stating the column in codes rather than slots matters: slot q's own column holds the codes one column
to the LEFT of the one it predicts, so a slot-column pattern never shows an axial model the code
straight above (an earlier version did that, and trained far worse). axial and strided differ only in
their even layers: a row stops at the left edge of the grid, the W latest codes wrap into the row
above. So two strided layers reach every earlier code, while axial layers never reach the codes above
and to the right of the predicted one (every hop moves left or up). With one layer, only the even-layer
pattern is used.

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
    code = k - 1  # the code key slot k holds (slot 0: the prefix, seen by every slot below)
    column_layer = layer % 2 == 1
    if attention == "full":
        allowed = torch.ones_like(q - k, dtype=torch.bool)
    elif attention == "local":
        allowed = q - code <= window
    elif attention == "axial":
        allowed = code % grid_w == q % grid_w if column_layer else code // grid_w == q // grid_w
    elif attention == "strided":
        allowed = (q - code) % grid_w == 0 if column_layer else q - code <= grid_w
    else:
        raise ValueError(f"unknown attention {attention!r}; expected one of {', '.join(ATTENTIONS)}")
    return (allowed & (k <= q)) | (k == 0) | (k == q)


def query_rows(mask: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """The mask rows of `length` queries at absolute slots start.., over keys 0..start+length-1."""
    return mask[start : start + length, : start + length]
