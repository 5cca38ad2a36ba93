"""The train stage on small synthetic token files: outputs, validation, resume, DDP (gloo, CPU)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from conftest import REPO, token_attrs

from pipeline.core import runtime
from pipeline.core.atomic import write_json
from pipeline.core.errors import PipelineError
from pipeline.core.schedule import lr_at
from pipeline.gpt import training
from pipeline.gpt.model import load_gpt
from pipeline.gpt.training import DistInfo, TrainPaths, distributed
from pipeline.params import TrainParams
from pipeline.tokenizer import files as tok
from pipeline.tokenizer.files import write_tokens as write_token_file

K, GRID = 16, 4
CODE = "code-v1"  # stands for hashing.code_sha256("train")


def train(p, paths, info=DistInfo(), code=CODE, **kwargs):
    """As the train stage: training.train writes model and plots, rank 0 writes the results it returns.
    Returns the saved model (rank 0)."""
    results = training.train(p, paths, info, code=code, **kwargs)
    if info.main:
        write_json(metrics_json(paths), results.metrics)
        write_json(info_json(paths), results.info)
        return load_gpt(paths.model_dir)


def write_tokens(path: Path, n_train: int = 64, n_test: int = 32, k: int = K, grid: int = GRID, **attrs) -> Path:
    """A tokens.h5 following the codebook contract, with class-dependent, learnable sequences; train_flip
    holds each train grid mirrored left-right (what the codebook stage writes for mirrored images)."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", n_train), ("val", n_test), ("test", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        base = (labels[:, None] * 3 + np.arange(grid * grid)[None]) % k
        noise = rng.integers(0, k, base.shape) * (rng.random(base.shape) < 0.2)
        splits[split] = ((base + noise) % k).astype(np.uint16), labels
    codes, labels = splits["train"]
    splits[tok.FLIP] = codes.reshape(-1, grid, grid)[:, :, ::-1].reshape(len(codes), -1), labels
    write_token_file(
        path,
        splits,
        token_attrs(k, grid, classes=[f"c{i}" for i in range(10)], encoder="synthetic", feature_dim=8)
        | {"codebook_sha256": "synthetic-codebook"}
        | attrs,
    )
    return path


def tiny_params(**overrides) -> TrainParams:
    base = yaml.safe_load((REPO / "params.yaml").read_text())["train"]  # the real keys, tiny sizes
    base.update(
        n_layer=2,
        n_head=2,
        n_embd=32,
        epochs=2,
        batch_size=16,
        lr=6e-4,
        min_lr=6e-5,
        warmup_steps=2,
        precision="fp32",
        device="cpu",
        compile="none",
        flip=False,
    )
    base.update(overrides)
    return TrainParams(**base)


def paths_in(root: Path, tokens: Path) -> TrainPaths:
    return TrainPaths(tokens, root / "models/gpt", root / "checkpoints/gpt", root / "plots")


def metrics_json(paths: TrainPaths) -> Path:
    return paths.plots.parent / "metrics/train.json"


def info_json(paths: TrainPaths) -> Path:
    return paths.plots.parent / "info/train.json"


@pytest.fixture
def tokens_h5(tmp_path: Path) -> Path:
    return write_tokens(tmp_path / "tokens.h5")


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_train_writes_model_metrics_plots_and_learns(tmp_path, tokens_h5, monkeypatch):
    monkeypatch.setattr(runtime, "native", lambda device, precision: False)  # a CPU without native bf16
    p = tiny_params(epochs=4, lr=3e-3, min_lr=3e-4, dropout=0.0, precision="auto")
    paths = paths_in(tmp_path, tokens_h5)
    train(p, paths)
    metrics = json.loads(metrics_json(paths).read_text())
    assert (
        json.loads(info_json(paths).read_text())["precision"] == "fp32"
    )  # auto, resolved for this CPU, is what the outputs record
    assert json.loads((paths.model_dir / "config.json").read_text())["precision"] == "fp32"
    hist = (paths.plots / "train_loss.csv").read_text().splitlines()
    assert hist[0] == "epoch,train_loss,val_loss" and len(hist) == 5
    assert (paths.plots / "train_loss.png").read_bytes()[:4] == b"\x89PNG"
    first_val = float(hist[1].split(",")[2])
    assert metrics["val_nll"] < first_val < np.log(K) + 0.2  # it learns something
    assert metrics["val_bits_per_image"] == pytest.approx(metrics["val_nll"] * GRID * GRID / np.log(2))
    model = load_gpt(paths.model_dir)  # tied weights survive safetensors; no _orig_mod. prefix
    assert model.cfg.k == K and model.cfg.vocab_size == K + 11
    assert model.head.weight.data_ptr() == model.wte.weight.data_ptr()
    assert not list(tmp_path.rglob("*.tmp"))


# a variant of every kind at once: a sparse pattern, rotary positions, grouped-query attention
VARIANT = dict(attention="strided", pos_emb="rope2d", n_kv_head=1)


@pytest.mark.parametrize(
    "precision, variant", [("fp32", {}), ("fp16", {}), ("fp32", VARIANT)], ids=["fp32", "fp16", "variant"]
)  # fp16: the gradient scaler's state is resumed too
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, tokens_h5, precision, variant):
    # dropout: the RNG state
    p = tiny_params(epochs=3, dropout=0.1, label_dropout=0.3, precision=precision, **variant)
    ref = state(train(p, paths_in(tmp_path / "ref", tokens_h5)))

    class Killed(Exception):
        pass

    def kill_after_first(epoch):
        if epoch == 1:
            raise Killed

    run = paths_in(tmp_path / "run", tokens_h5)
    with pytest.raises(Killed):
        train(p, run, on_epoch_end=kill_after_first)
    saved = torch.load(run.checkpoints / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and bool(saved["scaler"]) == (precision == "fp16")
    assert not run.model_dir.exists()
    resumed = state(train(p, run))
    assert resumed.keys() == ref.keys()
    for k in ref:
        assert torch.equal(resumed[k], ref[k]), k
    assert len((run.plots / "train_loss.csv").read_text().splitlines()) == 4


def test_changed_params_start_fresh_instead_of_resuming(tmp_path, tokens_h5):
    paths = paths_in(tmp_path, tokens_h5)
    train(tiny_params(epochs=1), paths)
    epochs_run = []
    fresh = train(tiny_params(epochs=1, lr=1e-3), paths, on_epoch_end=epochs_run.append)
    assert epochs_run == [1]
    reference = train(tiny_params(epochs=1, lr=1e-3), paths_in(tmp_path / "ref", tokens_h5))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), reference.state_dict().values()))


def _ddp_worker(rank: int, world: int, port: int, p: TrainParams, paths: TrainPaths) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    with distributed(p.device) as info:
        train(p, paths, info)


@pytest.mark.parametrize("variant", [{}, VARIANT], ids=["full", "variant"])
def test_two_gloo_processes_match_single_process(tmp_path, tokens_h5, variant):
    # Dropout draws differ per rank by design; label dropout is per sequence so it is kept.
    p = tiny_params(epochs=2, dropout=0.0, label_dropout=0.2, **variant)
    single = state(train(p, paths_in(tmp_path / "single", tokens_h5)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ddp_paths = paths_in(tmp_path / "ddp", tokens_h5)
    mp.spawn(_ddp_worker, args=(2, port, p, ddp_paths), nprocs=2, join=True)
    ddp = load_gpt(ddp_paths.model_dir).state_dict()
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=1e-5, msg=k)
    single_m = json.loads((tmp_path / "single/metrics/train.json").read_text())
    ddp_m = json.loads(metrics_json(ddp_paths).read_text())
    assert json.loads(info_json(ddp_paths).read_text())["world_size"] == 2
    assert ddp_m["val_nll"] == pytest.approx(single_m["val_nll"], rel=1e-4)


def test_every_rank_draws_its_own_dropout_stream():
    # Rank 0 keeps the single-process stream; no rank's stream is another rank's or the label-drop/mirror one.
    ranks = [training.dropout_stream(r) for r in range(64)]
    assert ranks[0] == training.DROPOUT_STREAM
    others = {training.LABEL_DROP_STREAM, training.MIRROR_STREAM}
    assert len(set(ranks)) == len(ranks) and not others & set(ranks)


def test_bad_token_files_are_clear_errors(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        tok.read_meta(tmp_path / "missing.h5")
    bad = write_tokens(tmp_path / "bad.h5", k=4)
    with h5py.File(bad, "a") as f:
        del f.attrs["grid_w"]
    with pytest.raises(PipelineError, match=r"\['grid_w'\] missing"):
        tok.read_meta(bad)
    codes = write_tokens(tmp_path / "codes.h5")
    with h5py.File(codes, "a") as f:
        f.attrs["k"] = 8  # tokens up to 15 no longer fit
    with pytest.raises(PipelineError, match="code 15 >= k=8"):
        tok.read_split(codes, "train")
    with pytest.raises(PipelineError, match="divisible"):
        train(tiny_params(batch_size=15), paths_in(tmp_path, write_tokens(tmp_path / "t.h5")), DistInfo(world=2))


def test_model_from_other_tokens_is_rejected(tmp_path, tokens_h5):
    paths = paths_in(tmp_path, tokens_h5)
    train(tiny_params(epochs=1), paths)
    other = tok.read_meta(write_tokens(tmp_path / "other.h5", k=32, grid=2))
    with pytest.raises(PipelineError, match="k: model 16 vs tokens 32.*grid_h: model 4 vs tokens 2"):
        tok.check_compatible(load_gpt(paths.model_dir).cfg, other, "gpt", "other.h5")


def test_finished_checkpoint_of_other_code_is_not_reused(tmp_path, tokens_h5):
    """After a change to the training code, a re-run trains again instead of returning the old weights."""
    p, paths = tiny_params(epochs=2), paths_in(tmp_path, tokens_h5)
    train(p, paths, code="code-v1")
    epochs_run = []
    train(p, paths, code="code-v1", on_epoch_end=epochs_run.append)
    assert epochs_run == []  # same params, tokens and code: the finished run is reused
    train(p, paths, code="code-v2", on_epoch_end=epochs_run.append)
    assert epochs_run == [1, 2]  # other code: every epoch again


def test_finished_run_rerun_writes_every_declared_output(tmp_path, tokens_h5):
    """Resumed at its last epoch, the stage still writes model, metrics and plots (DVC needs all)."""
    p, paths = tiny_params(epochs=2), paths_in(tmp_path, tokens_h5)
    train(p, paths)
    outputs = [
        paths.model_dir / "model.safetensors",
        metrics_json(paths),
        paths.plots / "train_loss.csv",
        paths.plots / "train_loss.png",
    ]
    first = {o: o.read_bytes() for o in outputs if o != metrics_json(paths)}
    for o in outputs:
        o.unlink()
    train(p, paths)
    assert all(o.is_file() for o in outputs)
    assert all(first[o] == o.read_bytes() for o in first)  # the same model and curves as before


def test_saved_model_is_the_epoch_with_the_lowest_validation_nll(tmp_path):
    """An over-fitting run (few sequences, a wide model, a high LR): the model folder holds the best
    validation epoch, train.json names it, and the resume checkpoint stays the last epoch."""
    tokens = write_tokens(tmp_path / "tokens.h5", n_train=20, n_test=20)
    p = tiny_params(epochs=8, n_embd=64, lr=2e-2, min_lr=2e-2, warmup_steps=1, dropout=0.0, batch_size=10)
    paths = paths_in(tmp_path, tokens)
    per_epoch = {}

    def snapshot(epoch: int) -> None:
        per_epoch[epoch] = torch.load(paths.checkpoints / "last.pt", map_location="cpu", weights_only=True)["model"]

    train(p, paths, on_epoch_end=snapshot)
    metrics, info = json.loads(metrics_json(paths).read_text()), json.loads(info_json(paths).read_text())
    val = [float(row.split(",")[2]) for row in (paths.plots / "train_loss.csv").read_text().splitlines()[1:]]
    best = int(np.argmin(val)) + 1
    assert metrics["gpt_best_epoch"] == best < p.epochs  # it over-fits: the last epoch is not the best
    assert metrics["val_nll"] == pytest.approx(val[best - 1]) and info["last_val_nll"] == pytest.approx(val[-1])
    saved = load_gpt(paths.model_dir).state_dict()
    assert all(torch.equal(saved[k], per_epoch[best][k]) for k in saved)
    last = torch.load(paths.checkpoints / "last.pt", map_location="cpu", weights_only=True)
    assert last["epoch"] == p.epochs and last["best"]["epoch"] == best


def test_flip_draws_the_mirrored_grids_and_needs_them(tmp_path, tokens_h5):
    plain = state(train(tiny_params(epochs=1, flip=False), paths_in(tmp_path / "plain", tokens_h5)))
    flipped = state(train(tiny_params(epochs=1, flip=True), paths_in(tmp_path / "flip", tokens_h5)))
    assert any(not torch.equal(plain[k], flipped[k]) for k in plain)  # other sequences were seen
    no_flip = write_tokens(tmp_path / "no_flip.h5")
    with h5py.File(no_flip, "a") as f:
        del f[tok.FLIP]
    with pytest.raises(PipelineError, match="train_flip"):
        train(tiny_params(epochs=1, flip=True), paths_in(tmp_path / "missing", no_flip))


def test_schedule_warms_up_then_decays_to_min_lr():
    p = tiny_params(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    lrs = [lr_at(s, 100, p.warmup_steps, p.lr, p.min_lr) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(100, 100, p.warmup_steps, p.lr, p.min_lr) == pytest.approx(1e-4)


def test_compiled_bf16_training_saves_plain_weights_close_to_eager(tmp_path, tokens_h5):
    """train.compile on CPU with bf16 autocast (the CPU preset's precision): the saved model and the
    resume checkpoint carry the plain parameter names, and the run matches the eager one closely."""
    runs = {}
    for compiled in (False, True):
        root = tmp_path / f"compile_{compiled}"
        mode = "default" if compiled else "auto"  # auto: eager on CPU
        train(tiny_params(epochs=1, dropout=0.0, precision="bf16", compile=mode), paths_in(root, tokens_h5))
        ckpt = torch.load(root / "checkpoints/gpt/last.pt", map_location="cpu", weights_only=True)
        assert not [k for k in ckpt["model"] if "_orig_mod" in k]
        results = {folder: json.loads((root / folder / "train.json").read_text()) for folder in ("metrics", "info")}
        runs[compiled] = (results["metrics"] | results["info"], load_gpt(root / "models/gpt"))
    assert (runs[False][0]["compile"], runs[True][0]["compile"]) == ("none", "default")
    assert runs[True][0]["val_nll"] == pytest.approx(runs[False][0]["val_nll"], abs=1e-4)
    # The 4 AdamW steps move every weight by ~1.8e-3; compiled and eager agree to ~3e-5, except the qkv
    # biases (~5e-4): their gradients are near zero, and Adam scales the rounding noise up to lr.
    for (name, eager), compiled in zip(runs[False][1].state_dict().items(), runs[True][1].state_dict().values()):
        atol = 1e-3 if name.endswith("qkv.bias") else 1e-4
        torch.testing.assert_close(compiled, eager, rtol=0, atol=atol, msg=name)
