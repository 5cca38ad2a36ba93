"""The sample stage on tiny real artifacts: samples.h5 contract, seeding, grid layout, mismatched inputs.

(That generate() with the KV cache equals the uncached re-run, conditional and unconditional, greedy
and seeded, is tested in tests/test_gpt.py; here the batched glue is checked the same way.)
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO
from sample_world import CLASSES, DIM, GRID, K, tiny_gpt, write_world

from pipeline.core.errors import PipelineError
from pipeline.gpt import sampling
from pipeline.gpt.training import model_config
from pipeline.params import load_params
from pipeline.paths import DECODER_DIR, PLOTS, SAMPLE_GRID, SAMPLES
from pipeline.tokenizer.decoder import DecoderConfig, InverseCNN
from pipeline.tokenizer.decoding import TokenDecoder, load_token_decoder
from pipeline.tokenizer.files import TokenMeta
from stages.sample import sample


def run_sample(root, monkeypatch) -> dict:
    monkeypatch.chdir(root)
    sample(root / "params.yaml")
    with h5py.File(root / SAMPLES, "r") as f:
        return {"attrs": dict(f.attrs), **{k: f[k][()] for k in ("tokens", "labels", "images")}}


def test_conditional_samples_follow_the_contract(tmp_path, monkeypatch):
    out = run_sample(write_world(tmp_path), monkeypatch)
    n = 3 * 10
    assert out["tokens"].dtype == np.uint16 and out["tokens"].shape == (n, GRID * GRID)
    assert out["tokens"].max() < K
    assert out["labels"].dtype == np.uint8 and np.array_equal(out["labels"], np.repeat(np.arange(10), 3))
    assert out["images"].dtype == np.uint8 and out["images"].shape == (n, 32, 32, 3)
    # images are the decoder's rendering of the stored tokens
    assert np.array_equal(out["images"], load_token_decoder(tmp_path / DECODER_DIR).decode(out["tokens"]))
    attrs = out["attrs"]
    assert json.loads(attrs["sample_params"])["n_per_class"] == 3
    assert json.loads(attrs["model_config"])["k"] == K and bool(attrs["conditional"])
    assert (tmp_path / SAMPLE_GRID).read_bytes() == (tmp_path / PLOTS / "samples.png").read_bytes()
    assert not list(tmp_path.glob("data/samples/.*tmp"))  # atomic writes left nothing behind


def test_same_seed_same_samples_other_seed_other_samples(tmp_path, monkeypatch):
    root = write_world(tmp_path)
    first = run_sample(root, monkeypatch)
    again = run_sample(root, monkeypatch)
    assert np.array_equal(first["tokens"], again["tokens"]) and np.array_equal(first["images"], again["images"])
    other = run_sample(write_world(tmp_path, sample={"seed": 1}), monkeypatch)
    assert not np.array_equal(first["tokens"], other["tokens"])


def test_unconditional_model_draws_ten_times_n_per_class_unlabelled(tmp_path, monkeypatch):
    out = run_sample(write_world(tmp_path, conditional=False, sample={"n_per_class": 2}), monkeypatch)
    assert out["tokens"].shape == (20, GRID * GRID)
    assert (out["labels"] == sampling.NO_LABEL).all() and not bool(out["attrs"]["conditional"])


@pytest.mark.parametrize("conditional", [True, False])
def test_batched_sampling_with_cache_equals_without(tmp_path, conditional):
    model = tiny_gpt(conditional)
    p = load_params(write_world(tmp_path, sample={"top_k": 8, "top_p": 0.9, "cfg_scale": 2.0}) / "params.yaml").sample
    labels = sampling.sample_labels(model.cfg, 2)  # 20 images in batches of 7: the generator spans batches
    cached = sampling.sample_tokens(model, labels, p, use_cache=True, progress=False)
    full = sampling.sample_tokens(model, labels, p, use_cache=False, progress=False)
    assert np.array_equal(cached, full)


def test_sample_params_reach_the_model(tmp_path):
    """sample_tokens draws exactly what GPT.generate draws with the params' settings and seed (the
    guidance formula itself is tested in test_gpt.py), batch after batch from one generator."""
    model = tiny_gpt(True)
    base = load_params(write_world(tmp_path) / "params.yaml").sample
    p = base.model_copy(update={"cfg_scale": 3.0, "top_k": 5, "temperature": 0.8, "batch_size": 4})
    labels = sampling.sample_labels(model.cfg, 2)
    got = sampling.sample_tokens(model, labels, p, progress=False)
    g = torch.Generator().manual_seed(p.seed)
    want = torch.cat(
        [
            model.generate(
                len(b), torch.as_tensor(b.astype(np.int64)), temperature=0.8, top_k=5, cfg_scale=3.0, generator=g
            )
            for b in np.split(labels, range(4, len(labels), 4))
        ]
    )
    assert np.array_equal(got, want.numpy())
    assert not np.array_equal(got, sampling.sample_tokens(model, labels, base, progress=False))


def test_grid_has_one_row_per_class_in_order():
    labels = np.repeat(np.arange(10, dtype=np.uint8), 12)
    images = np.zeros((len(labels), 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels)) % 256  # a per-image mark
    rows = sampling.grid_rows(labels, True, 10)
    assert len(rows) == 10 and all(
        len(r) == sampling.GRID_COLUMNS and (labels[r] == c).all() for c, r in enumerate(rows)
    )
    grid = sampling.mosaic(images, rows, 10)
    step = 32 + sampling.GAP
    assert grid.shape == (10 * step + sampling.GAP, 10 * step + sampling.GAP, 3)
    for r in (0, 4, 9):
        for c in (0, 9):
            y, x = sampling.GAP + r * step, sampling.GAP + c * step
            assert np.array_equal(grid[y : y + 32, x : x + 32], images[rows[r][c]])
    unconditional = sampling.grid_rows(np.full(100, sampling.NO_LABEL, np.uint8), False, 10)
    assert [len(r) for r in unconditional] == [10] * 10


def test_model_from_other_tokens_is_a_clear_error(tmp_path, monkeypatch):
    root = write_world(tmp_path, model_k=K + 4)
    monkeypatch.chdir(root)
    with pytest.raises(PipelineError, match=r"k: model 20 vs tokens 16.*dvc repro train"):
        sample(root / "params.yaml")


def test_decoder_from_other_tokenizer_is_a_clear_error(tmp_path):
    model = tiny_gpt(True, k=K + 4)
    decoder = load_token_decoder(write_world(tmp_path) / DECODER_DIR)
    with pytest.raises(PipelineError, match="does not decode the codes"):
        sampling.check_decoder(model.cfg, decoder, "gpt", "decoder")


def test_two_codes_per_cell_make_the_gpt_row_twice_as_long_and_the_decoder_must_agree():
    meta = TokenMeta(2 * K, GRID, GRID, 10, CLASSES, "synthetic", DIM, "sha", codes_per_cell=2)
    cfg = model_config(load_params(REPO / "params.yaml").train, meta)
    assert (
        (cfg.grid_h, cfg.grid_w, cfg.block_size)
        == (GRID, 2 * GRID, 2 * GRID * GRID)
        == (GRID, meta.row_len, meta.seq_len)
    )
    two = TokenDecoder("cnn", GRID, 2 * K, model=InverseCNN(DecoderConfig(DIM, GRID, 2 * K, 32, 0, codes_per_cell=2)))
    sampling.check_decoder(cfg, two, "gpt", "decoder")
    one = TokenDecoder("cnn", GRID, 2 * K, model=InverseCNN(DecoderConfig(DIM, GRID, 2 * K, 32, 0)))
    with pytest.raises(PipelineError, match="does not decode the codes"):
        sampling.check_decoder(cfg, one, "gpt", "decoder")


def test_token_grids_read_back_from_samples_h5_and_npz(tmp_path, monkeypatch):
    out = run_sample(write_world(tmp_path), monkeypatch)
    tokens, labels = sampling.read_token_grids(tmp_path / SAMPLES)
    assert np.array_equal(tokens, out["tokens"]) and np.array_equal(labels, out["labels"])
    np.savez(tmp_path / "run.npz", tokens=out["tokens"], labels=out["labels"])  # what a lent GPU writes
    tokens, labels = sampling.read_token_grids(tmp_path / "run.npz")
    assert np.array_equal(tokens, out["tokens"]) and np.array_equal(labels, out["labels"])
    np.savez(tmp_path / "unlabelled.npz", tokens=out["tokens"])
    assert sampling.read_token_grids(tmp_path / "unlabelled.npz")[1] is None
    uncond = run_sample(write_world(tmp_path / "u", conditional=False, sample={"n_per_class": 2}), monkeypatch)
    tokens, labels = sampling.read_token_grids(tmp_path / "u" / SAMPLES)
    assert np.array_equal(tokens, uncond["tokens"]) and labels is None
    assert sampling.sample_set_name(tmp_path / "u" / SAMPLES) == "samples"  # a sample stage's folder
    assert sampling.sample_set_name(tmp_path / "run.npz") == "run"


@pytest.mark.parametrize("conditional", [True, False])
def test_teacher_forcing_a_greedy_sample_writes_it_again(tmp_path, conditional):
    """Fed its own greedy (top-1) grids, every cell's true past is the past the sampler had, so the
    teacher-forced picks are the grids themselves; fed other grids, they are the GPT's picks, not the input."""
    model = tiny_gpt(conditional)
    base = load_params(write_world(tmp_path, sample={"cfg_scale": 2.0}) / "params.yaml").sample
    greedy = base.model_copy(update={"top_k": 1, "top_p": None})
    labels = sampling.sample_labels(model.cfg, 2)
    written = sampling.sample_tokens(model, labels, greedy, progress=False)
    assert np.array_equal(sampling.teacher_forced_tokens(model, written, labels, greedy, progress=False), written)
    other = np.random.default_rng(1).integers(0, model.cfg.k, written.shape).astype(np.uint16)
    picks = sampling.teacher_forced_tokens(model, other, labels, base, progress=False)
    assert picks.shape == other.shape and picks.dtype == np.uint16 and picks.max() < model.cfg.k
    assert not np.array_equal(picks, other)
    assert np.array_equal(picks, sampling.teacher_forced_tokens(model, other, labels, base, progress=False))  # seeded
