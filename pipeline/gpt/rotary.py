"""2D rotary position embedding (RoPE, Su et al. 2021, over rows and columns).

Half of each head's query/key dimensions rotate by the row of a slot's grid position, the other half
by its column (each half in pairs, at geometric frequencies), so a query-key score depends on the row
and column offsets between the two slots and never on where they are. Slot t has the position of the
code it predicts, as in the learned position embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

BASE = 10_000.0  # the usual RoPE base: the slow pairs barely turn over 8 rows and act as content channels


class Rotary2D(nn.Module):
    def __init__(self, grid_h: int, grid_w: int, head_dim: int):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2D rotary embeddings need a head width divisible by 4, got {head_dim}")
        quarter = head_dim // 4
        freq = BASE ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
        t = torch.arange(grid_h * grid_w, dtype=torch.float64)
        row, col = (t // grid_w)[:, None] * freq, (t % grid_w)[:, None] * freq  # (T, quarter) angles
        # per slot, over the head's [a | b] (row) and [a | b] (column) quarters: pairs (a_i, b_i) turn by
        # one angle, a' = a cos - b sin, b' = b cos + a sin = x * cos + swapped(x) * signed sin
        cos = torch.cat([row.cos(), row.cos(), col.cos(), col.cos()], -1)
        sin = torch.cat([-row.sin(), row.sin(), -col.sin(), col.sin()], -1)
        # derived from the shape alone: not saved with the weights
        self.register_buffer("cos", cos.float(), persistent=False)
        self.register_buffer("sin", sin.float(), persistent=False)

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """x (B, H, L, head_dim) at slots start..start+L-1 -> x rotated, same shape and dtype."""
        L = x.shape[2]
        cos, sin = (t[start : start + L].to(x.dtype) for t in (self.cos, self.sin))
        swapped = x.unflatten(-1, (2, 2, -1)).flip(-2).flatten(-3)  # [b | a] in each half
        return x * cos + swapped * sin
