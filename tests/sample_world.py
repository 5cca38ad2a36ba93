"""Tiny real artifacts for the sample/evaluate tests: tokens.h5, raw h5, a GPT and a CNN decoder, saved
with the library's own writers into a project-shaped folder (the stages use relative paths)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import yaml

from conftest import REPO, make_images
from pipeline import cifar10
from pipeline.codebook import write_tokens
from pipeline.decoder import DecoderConfig, InverseCNN
from pipeline.gpt import GPT, GPTConfig, save_gpt
from pipeline.token_decoding import save_cnn_decoder
from stages.paths import DECODER_DIR, GPT_DIR, RAW, TOKENS

K, GRID, DIM = 16, 4, 8
CLASSES = tuple(cifar10.CLASSES)


def gpt_config(conditional: bool = True, k: int = K) -> GPTConfig:
    return GPTConfig(k=k, grid_h=GRID, grid_w=GRID, n_classes=10, conditional=conditional, n_layer=1, n_head=2,
                     n_embd=16, dropout=0.0, pos_emb="2d")  # fmt: skip


def tiny_gpt(conditional: bool = True, k: int = K, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(gpt_config(conditional, k))
    with torch.no_grad():  # larger weights than the init: peaked, class-dependent distributions
        model.wte.weight.mul_(40)
    return model.eval()


def write_world(root: Path, conditional: bool = True, n_train: int = 60, n_test: int = 40, sample: dict | None = None,
                evaluate: dict | None = None, model_k: int = K) -> Path:  # fmt: skip
    """Tokens + raw images (aligned), GPT, decoder and a params.yaml under `root`; returns root."""
    rng = np.random.default_rng(0)
    splits, raw = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = make_images(n, seed=1 if split == "train" else 2)
        splits[split] = (rng.integers(0, K, (n, GRID * GRID)).astype(np.uint16), labels)
        raw[split] = cifar10.Split(images, labels)
    attrs = dict(k=K, grid_h=GRID, grid_w=GRID, n_classes=10, classes=list(CLASSES), encoder="synthetic", feature_dim=DIM)
    write_tokens(root / TOKENS, splits, attrs)
    cifar10.write_h5(cifar10.Cifar10(raw["train"], raw["test"], CLASSES, "synthetic"), root / RAW)
    save_gpt(tiny_gpt(conditional, model_k), root / GPT_DIR, {"train": {"precision": "fp32"}})
    torch.manual_seed(0)
    decoder = InverseCNN(DecoderConfig(in_channels=DIM, grid=GRID, k=K, channels=32, res_blocks=0), torch.randn(K, DIM))
    save_cnn_decoder(decoder, root / DECODER_DIR)
    params = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    params["sample"].update({"n_per_class": 3, "batch_size": 7, "device": "cpu", **(sample or {})})
    params["evaluate"].update({"n_samples": 30, "batch_size": 16, "kid_subset_size": 10, "device": "cpu", **(evaluate or {})})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root
