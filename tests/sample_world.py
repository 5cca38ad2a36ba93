"""Tiny real artifacts for the sample/evaluate tests: tokens.h5, raw h5, a GPT and a CNN decoder, saved
with the library's own writers into a project-shaped folder (the stages use relative paths)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import yaml
from conftest import REPO, write_raw

from pipeline.data import cifar10
from pipeline.gpt.model import GPT, GPTConfig, save_gpt
from pipeline.paths import DECODER_DIR, GPT_DIR, RAW, TOKENS
from pipeline.tokenizer.decoder import DecoderConfig, InverseCNN
from pipeline.tokenizer.decoding import save_cnn_decoder
from pipeline.tokenizer.files import centroids_sha256, write_tokens

K, GRID, DIM = 16, 4, 8
CLASSES = tuple(cifar10.CLASSES)


def gpt_config(conditional: bool = True, k: int = K) -> GPTConfig:
    return GPTConfig(
        k=k,
        grid_h=GRID,
        grid_w=GRID,
        n_classes=10,
        conditional=conditional,
        n_layer=1,
        n_head=2,
        n_embd=16,
        dropout=0.0,
        pos_emb="2d",
    )


def tiny_gpt(conditional: bool = True, k: int = K, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(gpt_config(conditional, k))
    with torch.no_grad():  # larger weights than the init: peaked, class-dependent distributions
        model.wte.weight.mul_(40)
    return model.eval()


def write_world(
    root: Path,
    conditional: bool = True,
    n_train: int = 60,
    n_test: int = 40,
    sample: dict | None = None,
    evaluate: dict | None = None,
    model_k: int = K,
    reconstruct: dict | None = None,
) -> Path:
    """Tokens + raw images (aligned), GPT, decoder and a params.yaml under `root`; returns root."""
    rng = np.random.default_rng(0)
    raw = write_raw(root / RAW, n_train, n_test)
    splits = {
        split: (rng.integers(0, K, (len(s.labels), GRID * GRID)).astype(np.uint16), s.labels)
        for split, s in (("train", raw.train), ("test", raw.test))
    }
    torch.manual_seed(0)
    centroids = torch.randn(K, DIM)
    made_from = {"codebook_sha256": centroids_sha256(centroids.numpy())}
    attrs = dict(
        k=K, grid_h=GRID, grid_w=GRID, n_classes=10, classes=list(CLASSES), encoder="synthetic", feature_dim=DIM
    )
    write_tokens(root / TOKENS, splits, attrs | made_from)
    save_gpt(tiny_gpt(conditional, model_k), root / GPT_DIR, {"train": {"precision": "fp32"}} | made_from)
    decoder = InverseCNN(DecoderConfig(in_channels=DIM, grid=GRID, k=K, channels=32, res_blocks=0), centroids)
    save_cnn_decoder(decoder, root / DECODER_DIR, made_from)
    params = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    params["sample"].update({"n_per_class": 3, "batch_size": 7, "device": "cpu", **(sample or {})})
    params["evaluate"].update(
        {"n_samples": 30, "batch_size": 16, "kid_subset_size": 10, "device": "cpu", **(evaluate or {})}
    )
    params["reconstruct"].update({"batch_size": 16, "device": "cpu", **(reconstruct or {})})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root
