"""A small decoder-only transformer over codebook tokens (in the spirit of minGPT / nanoGPT).

Sequence layout: slot 0 holds a prefix token (a start token for unconditional models, the class
token - or the null class, for classifier-free guidance - for conditional ones); slot t > 0 holds
code t-1. Slot t predicts code t, so a grid of H*W codes is modelled by H*W slots and the position
of slot t is the position of the code it predicts: a learned table per slot (`1d`), learned row +
column embeddings (`2d`), 2D rotary embeddings of queries and keys (`rope2d`, pipeline/gpt/rotary.py)
or none (`none`: only the causal masks tell positions apart).

Attention: `attention` picks which earlier slots each layer attends to (pipeline/gpt/attention_masks.py);
`n_kv_head` < n_head is grouped-query attention (Ainslie et al. 2023): each key/value head serves
n_head / n_kv_head query heads, which shrinks the KV cache and the key/value projections.

Vocabulary: codes 0..K-1, then either one start token (K) or n_classes class tokens K..K+n-1 and
a null-class token K+n. Sampling never emits a special token.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.artifacts import damaged, read_model_folder, write_model_folder
from pipeline.gpt.attention_masks import block_mask, query_rows
from pipeline.gpt.rotary import Rotary2D

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class GPTConfig:
    k: int  # token vocabulary (codebook size x codes per cell)
    grid_h: int
    grid_w: int  # tokens per row: grid cells x codes per cell (tokens.h5 `row_len`)
    n_classes: int
    conditional: bool
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float
    pos_emb: Literal["1d", "2d", "rope2d", "none"]
    # defaults: what a model saved before these fields were added has
    attention: Literal["full", "local", "axial", "strided"] = "full"
    window: int = 16  # local: slots seen, itself included
    n_kv_head: int | None = None  # key/value heads; None: n_head (plain multi-head attention)

    @property
    def block_size(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def null_token(self) -> int:
        """Null class (conditional) or start token (unconditional)."""
        return self.k + (self.n_classes if self.conditional else 0)

    @property
    def vocab_size(self) -> int:
        return self.null_token + 1

    @property
    def flops_per_token(self) -> float:
        """Training FLOPs per token, the nanoGPT/PaLM estimate: forward and backward through the matrix
        parameters (position tables excluded) plus the attention scores and mixing over the block.
        Dense for every attention pattern: a masked SDPA computes every score and then masks it."""
        kv_width = self.kv_heads * (self.n_embd // self.n_head)
        per_layer = 10 * self.n_embd**2 + 2 * self.n_embd * kv_width  # q, out, MLP; keys and values
        matrix_params = self.n_layer * per_layer + self.vocab_size * self.n_embd
        return 6 * matrix_params + 12 * self.n_layer * self.n_embd * self.block_size

    def prefix(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """Slot-0 tokens: class tokens for a conditional model, else the start token."""
        if self.conditional and labels is not None:
            return labels.to(device=device, dtype=torch.long) + self.k
        return torch.full((batch,), self.null_token, dtype=torch.long, device=device)


class KVBuffer:
    """One layer's cached keys/values in buffers preallocated to the block size: a decoding step
    writes in place, where torch.cat would copy every earlier step again (half the sampling time
    of a small model on CPU). Indexing gives (k, v) views of the filled part, like the plain tuple."""

    def __init__(self, past: KV, capacity: int):
        B, H, _, D = past[0].shape
        self.k, self.v = past[0].new_empty(B, H, capacity, D), past[1].new_empty(B, H, capacity, D)
        self.length = 0
        self.append(*past)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> KV:
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache of {self.k.shape[2]} slots cannot take {end}")
        self.k[:, :, self.length : end], self.v[:, :, self.length : end] = k, v
        self.length = end
        return self[0], self[1]

    def __getitem__(self, i: int) -> torch.Tensor:
        return (self.k, self.v)[i][:, :, : self.length]


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, attn_impl: str = "sdpa", layer: int = 0):
        super().__init__()
        if cfg.n_head % cfg.kv_heads:
            raise ValueError(f"n_head ({cfg.n_head}) must be divisible by n_kv_head ({cfg.kv_heads})")
        self.n_head, self.n_kv_head, self.dropout, self.attn_impl = cfg.n_head, cfg.kv_heads, cfg.dropout, attn_impl
        self.block_size, self.full = cfg.block_size, cfg.attention == "full"
        self.head_dim = cfg.n_embd // cfg.n_head
        kv_width = self.n_kv_head * self.head_dim
        self.qkv = nn.Linear(cfg.n_embd, cfg.n_embd + 2 * kv_width)  # [q | k | v]: n_kv_head == n_head is 3 * n_embd
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.split = [cfg.n_embd, kv_width, kv_width]
        # built once per model; derived from the config alone, so not saved with the weights
        mask = block_mask(cfg.attention, cfg.grid_h, cfg.grid_w, cfg.window, layer)
        self.register_buffer("mask", mask, persistent=False)
        self.rotary = Rotary2D(cfg.grid_h, cfg.grid_w, self.head_dim) if cfg.pos_emb == "rope2d" else None

    def forward(self, x: torch.Tensor, past: KV | KVBuffer | None) -> tuple[torch.Tensor, KV | KVBuffer]:
        B, L, C = x.shape
        q, k, v = self.qkv(x).split(self.split, -1)
        q = q.view(B, L, self.n_head, self.head_dim).transpose(1, 2)
        k, v = (t.view(B, L, self.n_kv_head, self.head_dim).transpose(1, 2) for t in (k, v))
        start = 0 if past is None else past[0].shape[2]
        if self.rotary is not None:  # keys are cached rotated: their positions never change
            q, k = self.rotary(q, start), self.rotary(k, start)
        present = (k, v)  # a forward without past (training) allocates no buffer
        if past is not None:
            present = past if isinstance(past, KVBuffer) else KVBuffer(past, self.block_size)
            k, v = present.append(k, v)
        if self.n_kv_head < self.n_head:  # the cache keeps n_kv_head heads; each serves a group of queries
            # copied out: SDPA's enable_gqa falls back to its math kernel on CUDA when given a mask
            k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, 1) for t in (k, v))
        S = k.shape[2]
        rows = query_rows(self.mask, S - L, L)  # this step's queries at their absolute slots
        p = self.dropout if self.training else 0.0
        if self.attn_impl == "sdpa":
            # full attention keeps SDPA's mask-free paths: is_causal without a cache, nothing for one query
            fast = self.full and (S == L or L == 1)
            y = sdpa(q, k, v, None if fast else rows, p, causal=fast and L > 1)
        else:
            y = reference_attention(q, k, v, rows, p)
        y = y.transpose(1, 2).reshape(B, L, C)
        return self.resid_drop(self.proj(y)), present


def sdpa(q, k, v, mask: torch.Tensor | None, dropout_p: float, causal: bool) -> torch.Tensor:
    """F.scaled_dot_product_attention, in fp32 for bf16 inputs on CPU: there its bf16 backward is much
    slower than the fp32 one and dominated a bf16-autocast training step of the CPU-preset model
    (bench/bench_gpt.py measures it); the matmuls around it stay in bf16."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):  # CPU autocast would cast SDPA's inputs back to bf16
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), mask, dropout_p, is_causal=causal)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)


def reference_attention(q, k, v, mask: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """The explicit softmax(QK^T / sqrt(d)) V of minGPT, kept as the benchmark baseline."""
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    att = F.dropout(att.softmax(-1), dropout_p)
    return att @ v


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, attn_impl: str, layer: int = 0):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.attn = SelfAttention(cfg, attn_impl, layer)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x, past: KV | None):
        a, present = self.attn(self.ln1(x), past)
        x = x + a
        return x + self.mlp(self.ln2(x)), present


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, attn_impl: Literal["sdpa", "reference"] = "sdpa"):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos_emb == "2d":
            self.row_emb = nn.Parameter(torch.zeros(cfg.grid_h, cfg.n_embd))
            self.col_emb = nn.Parameter(torch.zeros(cfg.grid_w, cfg.n_embd))
        elif cfg.pos_emb == "1d":
            self.pos_emb = nn.Parameter(torch.zeros(cfg.block_size, cfg.n_embd))
        elif cfg.pos_emb not in ("rope2d", "none"):  # rope2d: in the attention; none: no table
            raise ValueError(f"unknown pos_emb {cfg.pos_emb!r}; expected 1d, 2d, rope2d or none")
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, attn_impl, layer) for layer in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.wte.weight  # tied input/output embeddings
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def positions(self, start: int, length: int) -> torch.Tensor | None:
        """The learned position embeddings of slots start.. (None where positions enter elsewhere)."""
        if start + length > self.cfg.block_size:
            raise ValueError(f"sequence of {start + length} slots exceeds block size {self.cfg.block_size}")
        if self.cfg.pos_emb == "1d":
            return self.pos_emb[start : start + length]
        if self.cfg.pos_emb != "2d":
            return None
        pos = torch.arange(start, start + length, device=self.row_emb.device)
        return self.row_emb[pos // self.cfg.grid_w] + self.col_emb[pos % self.cfg.grid_w]

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        past_kv: list[KV] | None = None,
        use_cache: bool = False,
    ):
        """idx (B, L) slot tokens -> (logits (B, L, V), loss or None, present_kv or None)."""
        start = 0 if past_kv is None else past_kv[0][0].shape[2]
        x, pos = self.wte(idx), self.positions(start, idx.shape[1])
        x = self.drop(x if pos is None else x + pos)
        present = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if past_kv is None else past_kv[i])
            present.append(kv)
        logits = self.head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss, (present if use_cache else None)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Decay matrices and embeddings (>= 2-dim); not biases, LayerNorm gains."""
        params = [p for p in self.parameters() if p.requires_grad]  # the tied weight appears once
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    @torch.no_grad()
    def generate(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_scale: float = 1.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Sample n code grids -> (n, H*W) int64 codes. temperature 0 = greedy.

        Conditional models take `labels` (n,); cfg_scale != 1 runs a null-class copy alongside
        and mixes logits uncond + s * (cond - uncond). use_cache=False re-runs the whole prefix
        every step (the reference the KV cache is tested against).
        """
        cfg, device = self.cfg, next(self.parameters()).device
        if cfg.conditional and labels is None:
            raise ValueError("a conditional model needs labels to sample")
        if generator is None and seed is not None:
            generator = torch.Generator(device=device).manual_seed(seed)
        prefix = cfg.prefix(labels, n, device)
        guided = cfg.conditional and cfg_scale != 1.0
        if guided:
            prefix = torch.cat([prefix, cfg.prefix(None, n, device)])
        seq = prefix[:, None]
        out = torch.empty(n, cfg.block_size, dtype=torch.long, device=device)
        past, step_in = None, seq
        for t in range(cfg.block_size):
            if use_cache:
                logits, _, past = self(step_in, past_kv=past, use_cache=True)
            else:
                logits, _, _ = self(seq)
            logits = logits[:, -1, : cfg.k].float()  # never sample a special token
            if guided:
                logits = guide(logits, n, cfg_scale)
            nxt = sample_logits(logits, temperature, top_k, top_p, generator)
            out[:, t] = nxt
            step_in = torch.cat([nxt, nxt])[:, None] if guided else nxt[:, None]
            seq = torch.cat([seq, step_in], 1)
        return out


def guide(logits: torch.Tensor, n: int, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance: logits of n class-conditioned rows, then of their n null-class copies ->
    uncond + cfg_scale x (cond - uncond), n rows."""
    cond, uncond = logits[:n], logits[n:]
    return uncond + cfg_scale * (cond - uncond)


def sample_logits(logits, temperature: float, top_k: int | None, top_p: float | None, generator) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest prefix reaching top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    return inverse_cdf_sample(probs, generator)


def inverse_cdf_sample(probs: torch.Tensor, generator) -> torch.Tensor:
    """(B, V) non-negative weights -> (B,) indices drawn in proportion to them, from ONE uniform per
    row: the first index whose cumulative weight exceeds u * total. torch.multinomial draws an
    exponential for every vocabulary entry instead, a quarter of the cached sampling time of a small
    model on CPU. A zero-weight index is never drawn (its cumulative weight equals its predecessor's)."""
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=probs.device, dtype=cdf.dtype)
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))  # strictly below total
    return torch.searchsorted(cdf, x, right=True)[:, 0]


def training_inputs(tokens: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """(B, T) codes + (B,) prefix -> (B, T) slot inputs: prefix then codes shifted right."""
    return torch.cat([prefix[:, None], tokens[:, :-1]], 1)


TIED = "head.weight"  # the same tensor as wte.weight: stored once


def save_gpt(model: GPT, out_dir: str | Path, extra: dict | None = None) -> None:
    """The model folder: config.json ({"model": GPTConfig, **extra}) + model.safetensors, atomically."""
    tensors = {k: v for k, v in model.state_dict().items() if k != TIED}
    write_model_folder(out_dir, {"model": asdict(model.cfg), **(extra or {})}, tensors)


def load_gpt(model_dir: str | Path, device: str | torch.device = "cpu") -> GPT:
    config, tensors = read_model_folder(model_dir, "train")
    try:
        model = GPT(GPTConfig(**config["model"]))
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise damaged(model_dir, "train", f"config and weights do not describe one GPT: {e}") from None
    if unexpected or set(missing) != {TIED}:
        raise damaged(model_dir, "train", f"weights missing {sorted(set(missing) - {TIED})}, unexpected {unexpected}")
    return model.to(device).eval()
