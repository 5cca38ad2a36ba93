"""Decoder stage: model shapes, metrics, deterministic and resumable training, palette path, input checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, make_images, requires_real_weights, token_attrs, vary_batch_norms, write_raw

from pipeline.core.checkpoint import NAME as CHECKPOINT
from pipeline.core.errors import PipelineError
from pipeline.core.training import Run
from pipeline.data import cifar10
from pipeline.evaluation.reconstruction import psnr, ssim
from pipeline.params import DecoderParams
from pipeline.tokenizer import decoder_training as dt
from pipeline.tokenizer import files as token_files
from pipeline.tokenizer.decoder import DecoderConfig, InverseCNN
from pipeline.tokenizer.decoding import TokenDecoder, load_token_decoder, save_cnn_decoder, save_palette_decoder

SMALL = dict(
    channels=8,
    res_blocks=1,
    epochs=2,
    batch_size=8,
    lr=0.003,
    warmup_steps=2,
    weight_decay=0.0,
    pixel_loss="l1",
    perceptual_weight=0.0,
    token_noise=0.0,
    select="psnr",
    seed=0,
    precision="fp32",
    device="cpu",
    adversarial=yaml.safe_load((REPO / "params.yaml").read_text())["decoder"]["adversarial"],  # weight 0: off
)


def params(**overrides) -> DecoderParams:
    return DecoderParams(**{**SMALL, **overrides})


def write_inputs(
    root: Path,
    encoder: str = "cifar_resnet20",
    grid: int = 8,
    dim: int = 6,
    k: int = 16,
    n_train: int = 16,
    n_test: int = 6,
    feature_grid: int | None = None,
    shuffle_labels: bool = False,
) -> dict[str, Path]:
    """Synthetic raw/features/codebook/tokens files that follow the stage contracts."""
    rng = np.random.default_rng(0)
    paths = {
        name: root / f"{name}.{ext}"
        for name, ext in [("raw", "h5"), ("features", "h5"), ("codebook", "safetensors"), ("tokens", "h5")]
    }
    data = write_raw(paths["raw"], n_train, n_test)
    y_train, y_val = data.train.labels, data.val.labels
    fg = feature_grid or grid
    with h5py.File(paths["features"], "w") as f:
        for split, y in (("train", y_train), ("val", y_val), ("test", data.test.labels)):
            f[f"{split}/features"] = rng.normal(size=(len(y), fg, fg, dim)).astype(np.float16)
            f[f"{split}/labels"] = y
        f.attrs.update(
            encoder=encoder,
            layers=["rgb"] if encoder == "pixels" else ["layer1", "layer2", "layer3"],
            grid=fg,
            input_size=32,
            pool="avg",
            standardized=True,
        )
        f["stats/mean"] = np.full(dim, 0.5, np.float32)
        f["stats/std"] = np.full(dim, 0.25, np.float32)
    centroids = rng.normal(size=(k, dim)).astype(np.float32)
    token_files.write_codebook(paths["codebook"], centroids, {"k": k})
    sha = token_files.centroids_sha256(centroids)
    splits = {
        split: (
            rng.integers(0, k, (len(y), grid * grid)).astype(np.uint16),
            rng.permutation(y) if shuffle_labels else y,
        )
        for split, y in (("train", y_train), ("val", y_val), ("test", data.test.labels))
    }
    token_files.write_tokens(
        paths["tokens"],
        splits,
        token_attrs(k, grid, classes=list(cifar10.CLASSES), encoder=encoder, feature_dim=dim, codebook_sha256=sha),
    )
    return paths


def load(paths: dict[str, Path]) -> dt.DecoderInputs:
    return dt.load_inputs(paths["tokens"], paths["codebook"], paths["features"], paths["raw"])


CODE = "code-v1"  # stands for hashing.code_sha256("decoder")


def train(p: DecoderParams, inputs: dt.DecoderInputs, checkpoints: Path, code: str = CODE, **kwargs) -> Run:
    return dt.train_decoder(p, inputs, checkpoints, torch.device("cpu"), "fp32", code, **kwargs)


# --- model ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [8, 16])
def test_model_maps_token_grid_to_image(grid):
    cfg = DecoderConfig(in_channels=5, grid=grid, k=7, channels=16, res_blocks=1)
    model = InverseCNN(cfg, torch.randn(7, 5))
    tokens = torch.randint(0, 7, (3, grid * grid))
    out = model.decode_tokens(tokens)
    assert out.shape == (3, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    # Raster order: token i sits at row i // g, column i % g.
    emb = model.embed(tokens)
    assert torch.equal(emb[1, :, 0, 1], model.centroids[tokens[1, 1]])
    assert torch.equal(emb[2, :, 1, 0], model.centroids[tokens[2, grid]])
    # The grid comes as a channels_last view (the fast CPU layout); the values do not depend on it.
    assert emb.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, model(emb.contiguous()), rtol=1e-5, atol=1e-6)


def test_two_codes_per_cell_decode_from_the_sum_of_their_centroids():
    cfg = DecoderConfig(in_channels=5, grid=8, k=14, channels=16, res_blocks=1, codes_per_cell=2)
    model = InverseCNN(cfg, torch.randn(14, 5))
    assert DecoderConfig.from_dict(cfg.to_dict()) == cfg
    tokens = torch.stack([torch.randint(0, 7, (3, 64)), torch.randint(7, 14, (3, 64))], dim=-1).view(3, 128)
    emb = model.embed(tokens)
    # cell (1, 2) is tokens 2 * (1 * 8 + 2) and the next one
    torch.testing.assert_close(emb[0, :, 1, 2], model.centroids[tokens[0, 20]] + model.centroids[tokens[0, 21]])
    assert model.decode_tokens(tokens).shape == (3, 3, 32, 32)
    with pytest.raises(PipelineError, match=r"\(N, 128\) for a 8x8 decoder of 2 code\(s\) per cell"):
        model.embed(tokens[:, :64])


def test_model_rejects_bad_grid_and_centroids():
    with pytest.raises(PipelineError, match="grid"):
        InverseCNN(DecoderConfig(in_channels=3, grid=6, k=4, channels=16, res_blocks=0))
    with pytest.raises(PipelineError, match="centroids"):
        InverseCNN(DecoderConfig(in_channels=3, grid=8, k=4, channels=16, res_blocks=0), torch.zeros(5, 3))


# --- metrics ----------------------------------------------------------------------------------------


def test_psnr_and_ssim_known_values():
    images, _ = make_images(4)
    assert psnr(images, images) == math.inf
    assert ssim(images, images) == pytest.approx(1.0, abs=1e-5)
    flat = np.full((2, 32, 32, 3), 100, np.uint8)
    # A constant error of 10 grey levels: MSE = 100, PSNR = 10 log10(255^2 / 100) = 28.13 dB.
    assert psnr(flat, flat + 10) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-3)
    noise = np.random.default_rng(0).integers(-1, 2, images.shape)
    a, b = (np.clip(images.astype(int) + s * noise, 0, 255).astype(np.uint8) for s in (20, 80))
    assert 1 > ssim(images, a) > ssim(images, b) > 0  # more noise, less similar
    with pytest.raises(PipelineError, match="shape"):
        psnr(images, images[:2])


# --- training ---------------------------------------------------------------------------------------


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_is_deterministic_and_learns(tmp_path):
    inputs = load(write_inputs(tmp_path))
    a = train(params(), inputs, tmp_path / "ckpt_a")
    b = train(params(), inputs, tmp_path / "ckpt_b")
    wa, wb = _weights(a.model), _weights(b.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [h["epoch"] for h in a.history] == [1, 2]
    assert a.history == b.history
    assert a.history[-1]["train_loss"] < a.history[0]["train_loss"]


def test_learning_rate_follows_warmup_then_cosine(tmp_path, monkeypatch):
    """The lr of every step is p.lr x schedule.lr_at (warm-up, cosine to 0 over all epochs' steps)."""
    from pipeline.core.schedule import lr_at

    inputs, p = load(write_inputs(tmp_path)), params()
    seen = []
    step = torch.optim.AdamW.step

    def record(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    train(p, inputs, tmp_path / "ckpt")
    steps = -(-len(inputs.train_tokens) // p.batch_size) * p.epochs
    assert seen == pytest.approx([p.lr * lr_at(s, steps, p.warmup_steps, 1.0, 0.0) for s in range(steps)], rel=1e-12)


@pytest.mark.parametrize("token_noise", [0.0, 0.3])
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, token_noise):
    inputs = load(write_inputs(tmp_path))
    p = params(epochs=2, token_noise=token_noise)
    full = train(p, inputs, tmp_path / "full")

    class Killed(Exception):
        pass

    def kill_after_first_epoch(epoch: int) -> None:
        if epoch == 1:
            raise Killed  # as if the process died right after the epoch-1 checkpoint was written

    with pytest.raises(Killed):
        train(p, inputs, tmp_path / "resumed", on_epoch_end=kill_after_first_epoch)
    saved = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)
    assert saved["epoch"] == 1
    resumed = train(p, inputs, tmp_path / "resumed")
    wf, wr = _weights(full.model), _weights(resumed.model)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]

    # A checkpoint made with other params is not resumed: training starts over (same as from scratch).
    other = train(params(epochs=1, lr=0.001), inputs, tmp_path / "resumed")
    assert len(other.history) == 1


def test_saved_decoder_is_the_epoch_with_the_best_validation_psnr(tmp_path):
    """The model a run returns (and the stage saves) is its best epoch on the PSNR curve; the resume
    checkpoint stays the last epoch and names the best one."""
    inputs, p = load(write_inputs(tmp_path)), params(epochs=4, lr=0.03)
    per_epoch = {}

    def snapshot(epoch: int) -> None:
        per_epoch[epoch] = torch.load(tmp_path / "ckpt" / CHECKPOINT, weights_only=True)["model"]

    run = train(p, inputs, tmp_path / "ckpt", on_epoch_end=snapshot)
    curve = [h["val_psnr_db"] for h in run.history]
    best = int(np.argmax(curve)) + 1
    assert run.best["epoch"] == best and run.best["value"] == curve[best - 1]
    weights = _weights(run.model)
    assert all(torch.equal(weights[k], per_epoch[best][k]) for k in weights)
    last = torch.load(tmp_path / "ckpt" / CHECKPOINT, weights_only=True)
    assert last["epoch"] == p.epochs and last["best"]["epoch"] == best


class ScriptedRealism:
    """A `realism` scorer (decoder_training.CurveFID's interface) whose FIDs are given: which epoch is kept
    must follow them, not the PSNR curve. The real scorer runs in the tiny pipeline (select: fid)."""

    def __init__(self, fids: list[float]):
        self.fids, self.seen = list(fids), []

    def score(self, reconstructions: np.ndarray) -> dict:
        self.seen.append(reconstructions.shape)
        return {"val_fid_inception": self.fids[len(self.seen) - 1]}


def test_select_fid_keeps_the_epoch_with_the_lowest_curve_fid(tmp_path):
    inputs, p = load(write_inputs(tmp_path)), params(epochs=3, lr=0.03, select="fid")
    realism = ScriptedRealism([7.0, 9.0, 8.0])
    run = train(p, inputs, tmp_path / "ckpt", realism=realism)
    assert run.best["epoch"] == 1 and run.best["value"] == 7.0
    assert realism.seen == [inputs.val_images[: dt.CURVE_IMAGES].shape] * 3  # the curve's val images, each epoch
    assert [h["val_fid_inception"] for h in run.history] == [7.0, 9.0, 8.0]
    assert all("val_psnr_db" in h for h in run.history)
    dt.write_history_csv(run.history, tmp_path / "curve.csv")
    assert (tmp_path / "curve.csv").read_text().splitlines()[0] == "epoch,train_loss,val_psnr_db,val_fid_inception"


def test_token_noise_swaps_the_asked_fraction_of_codes_reproducibly():
    tokens = torch.arange(20_000).remainder(512).view(100, 200)
    assert dt.perturb_tokens(tokens, 0.0, 512, seed=0, step=3) is tokens
    noisy = dt.perturb_tokens(tokens, 0.25, 512, seed=0, step=3)
    assert noisy.dtype == tokens.dtype and noisy.shape == tokens.shape
    assert 0 <= int(noisy.min()) and int(noisy.max()) < 512
    # a swapped cell keeps its code with probability 1/512: the changed fraction is 0.25 * 511/512, +- sampling
    assert abs((noisy != tokens).float().mean().item() - 0.25 * 511 / 512) < 0.01
    assert torch.equal(noisy, dt.perturb_tokens(tokens, 0.25, 512, seed=0, step=3))  # same (seed, step): same noise
    assert not torch.equal(noisy, dt.perturb_tokens(tokens, 0.25, 512, seed=0, step=4))
    assert not torch.equal(noisy, dt.perturb_tokens(tokens, 0.25, 512, seed=1, step=3))


def test_token_noise_draws_each_code_from_its_own_level():
    tokens = torch.stack([torch.zeros(50, 64, dtype=torch.long), torch.full((50, 64), 8)], dim=-1).view(50, 128)
    noisy = dt.perturb_tokens(tokens, 0.5, 16, seed=0, step=0, codes_per_cell=2)
    assert noisy[:, 0::2].max() < 8 and noisy[:, 1::2].min() >= 8 and noisy[:, 1::2].max() < 16
    assert (noisy[:, 0::2] != 0).any() and (noisy[:, 1::2] != 8).any()


def test_token_noise_changes_training_and_leaves_the_inputs_alone(tmp_path):
    inputs = load(write_inputs(tmp_path))
    train_tokens, val_tokens = inputs.train_tokens.copy(), inputs.val_tokens.copy()
    clean, noisy = (
        train(params(), inputs, tmp_path / "clean"),
        train(params(token_noise=0.3), inputs, tmp_path / "noisy"),
    )
    assert clean.history[0]["train_loss"] != noisy.history[0]["train_loss"]
    assert np.array_equal(inputs.train_tokens, train_tokens) and np.array_equal(inputs.val_tokens, val_tokens)


def test_finished_checkpoint_of_other_code_is_not_reused(tmp_path):
    """After a change to the training code, a re-run trains again instead of returning the old weights."""
    inputs, p = load(write_inputs(tmp_path)), params(epochs=2)
    train(p, inputs, tmp_path / "ckpt", code="code-v1")
    epochs_run = []
    train(p, inputs, tmp_path / "ckpt", code="code-v1", on_epoch_end=epochs_run.append)
    assert epochs_run == []  # same params, inputs and code: the finished run is reused
    train(p, inputs, tmp_path / "ckpt", code="code-v2", on_epoch_end=epochs_run.append)
    assert epochs_run == [1, 2]  # other code: every epoch again


def test_saved_decoder_round_trip(tmp_path):
    inputs = load(write_inputs(tmp_path))
    result = train(params(epochs=1), inputs, tmp_path / "ckpt")
    save_cnn_decoder(result.model, tmp_path / "decoder", {"encoder": inputs.encoder})
    decoder = load_token_decoder(tmp_path / "decoder")
    assert decoder.kind == "cnn" and decoder.grid == 8
    images = decoder.decode(inputs.val_tokens)
    assert images.dtype == np.uint8 and images.shape == (10, 32, 32, 3)  # the validation split
    expected = TokenDecoder("cnn", 8, result.model.config.k, model=result.model).decode(inputs.val_tokens, 4)
    assert np.array_equal(images, expected)
    with pytest.raises(PipelineError, match="do not fit"):
        decoder.decode(inputs.val_tokens[:, :16])


@pytest.mark.parametrize("pool, channels", [("avg", 16 + 64), ("unshuffle", 16 * 16 + 64)])
def test_perceptual_features_match_extract(tmp_path, pool, channels):
    from pipeline.features.encoders import build_encoder
    from pipeline.features.extract import GridSpec, encode_batch

    encoder = build_encoder("cifar_resnet20", pretrained=False)
    images, _ = make_images(3)
    spec = GridSpec(("layer1", "layer3"), 8, 32, pool)
    expected = encode_batch(encoder, images, spec, torch.device("cpu"), "fp32", False).permute(0, 3, 1, 2)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    got = dt.GridFeatures(encoder, spec)(x)
    assert got.shape == (3, channels, 8, 8) and torch.allclose(got, expected, atol=1e-5)
    got.sum().backward()  # the loss must reach the decoder's output through the frozen encoder
    assert x.grad is not None and x.grad.abs().sum() > 0
    mean, std = torch.randn(channels), torch.rand(channels) + 0.5
    loss = dt.FeatureLoss(dt.GridFeatures(encoder, spec), mean, std)
    assert float(loss(x, x).detach()) == 0.0


def test_the_perceptual_loss_runs_through_the_folded_encoder_and_keeps_its_gradients(monkeypatch):
    from pipeline.features.encoders import build_encoder
    from pipeline.features.extract import GridSpec

    torch.manual_seed(0)
    encoder = build_encoder("cifar_resnet20", pretrained=False)
    vary_batch_norms(encoder)
    spec = GridSpec(("layer1", "layer3"), 8, 32, "avg")
    folded = dt.frozen_features(encoder, spec)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules())  # a copy: the encoder is kept
    x = torch.from_numpy(make_images(4)[0]).permute(0, 3, 1, 2).float().div(255)
    outputs, grads = [], []
    for features in (dt.GridFeatures(encoder, spec), folded):
        image = x.clone().requires_grad_(True)
        out = features(image)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outputs.append(out.detach()), grads.append(image.grad)
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)
    monkeypatch.setattr(dt, "build_encoder", lambda name: build_encoder(name, pretrained=False))  # no download
    stage_loss = dt.feature_loss("cifar_resnet20", ["layer1"], 8, {"input_size": 32, "pool": "avg"}, None, None, "cpu")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in stage_loss.modules())  # the stage's path folds


# --- pixels palette ---------------------------------------------------------------------------------


def test_palette_decoder_undoes_standardisation(tmp_path):
    inputs = load(write_inputs(tmp_path, encoder="pixels", grid=32, dim=3, k=8, n_train=10, n_test=3))
    colours = dt.palette_colours(inputs)
    expected = np.clip(np.rint((inputs.centroids.numpy() * 0.25 + 0.5) * 255), 0, 255) / 255
    assert np.allclose(colours.numpy(), expected, atol=1e-6)
    save_palette_decoder(colours, tmp_path / "decoder")
    assert json.loads((tmp_path / "decoder" / "config.json").read_text())["kind"] == "palette"
    decoder = load_token_decoder(tmp_path / "decoder")
    images = decoder.decode(inputs.val_tokens)
    token = int(inputs.val_tokens[1, 32 * 2 + 5])
    assert np.array_equal(images[1, 2, 5], np.rint(expected[token] * 255).astype(np.uint8))


def test_pixel_patches_train_the_cnn_not_a_palette(tmp_path):
    # encoder pixels folded 4x4 -> 48 dims per token: a CNN decoder (with the identity "encoder" as its
    # perceptual features), not a palette lookup, which only one colour per token allows.
    paths = write_inputs(tmp_path, encoder="pixels", grid=8, dim=48, k=8, n_train=10, n_test=3)
    with h5py.File(paths["features"], "a") as f:
        f.attrs["pool"] = "unshuffle"
    inputs = load(paths)
    assert not inputs.is_palette and load(write_inputs(tmp_path / "p", encoder="pixels", grid=32, dim=3)).is_palette
    feature_loss = dt.build_feature_loss(inputs, torch.device("cpu"))
    result = dt.train_decoder(
        params(epochs=1, perceptual_weight=0.5),
        inputs,
        tmp_path / "ckpt",
        torch.device("cpu"),
        "fp32",
        "code",
        feature_loss,
    )
    assert result.history[0]["epoch"] == 1 and math.isfinite(result.history[0]["train_loss"])


# --- input checks -----------------------------------------------------------------------------------


def test_mismatching_inputs_fail_clearly(tmp_path):
    with pytest.raises(PipelineError, match="grid 8x8 vs .* grid 16"):
        load(write_inputs(tmp_path / "a", feature_grid=16))
    with pytest.raises(PipelineError, match="do not line up"):
        load(write_inputs(tmp_path / "b", shuffle_labels=True))
    paths = write_inputs(tmp_path / "c")
    paths["codebook"].unlink()
    with pytest.raises(PipelineError, match="codebook stage"):
        load(paths)


# --- the whole stage, with the real ResNet-20 (perceptual loss) ------------------------------------


@requires_real_weights
@pytest.mark.parametrize("kind", ["cnn", "palette"])
def test_stage_end_to_end(tmp_path, monkeypatch, repo_params, torch_home, kind):
    import yaml

    from pipeline.paths import CODEBOOK, DECODER_CHECKPOINTS, FEATURES, RAW, TOKENS
    from stages import decoder as stage

    monkeypatch.chdir(tmp_path)
    if kind == "cnn":  # real ResNet-20 layers 1-3 give 16 + 32 + 64 = 112 channels
        paths, dim, grid = write_inputs(tmp_path / "in", dim=112, n_train=16, n_test=8), 112, 8
    else:
        paths, dim, grid = (
            write_inputs(tmp_path / "in", encoder="pixels", grid=32, dim=3, k=8, n_train=10, n_test=8),
            3,
            32,
        )
    for name, target in (("raw", RAW), ("features", FEATURES), ("codebook", CODEBOOK), ("tokens", TOKENS)):
        target.parent.mkdir(parents=True, exist_ok=True)
        paths[name].rename(target)
    with h5py.File(FEATURES, "a") as f:
        del f["stats/mean"], f["stats/std"]
        f["stats/mean"], f["stats/std"] = np.zeros(dim, np.float32), np.ones(dim, np.float32)
    repo_params["decoder"] = {**SMALL, "epochs": 1, "perceptual_weight": 0.1}
    Path("params.yaml").write_text(yaml.safe_dump(repo_params))
    stage.decoder(Path("params.yaml"))
    metrics, info = (json.loads(Path(f"{folder}/decoder.json").read_text()) for folder in ("metrics", "info"))
    assert info["kind"] == kind and info["tokens_per_image"] == grid * grid and info["n_images"] == 10
    assert info["split"] == "val"
    assert metrics["val_psnr_db"] > 0 and -1 <= metrics["val_ssim"] <= 1
    assert (info["epochs"], metrics["decoder_best_epoch"]) == ((1, 1) if kind == "cnn" else (0, 0))
    assert "accuracy_reconstructions" not in metrics  # classifier scores come from the reconstruct stage
    assert Path("plots/reconstructions.png").is_file() and Path("data/models/decoder/config.json").is_file()
    assert Path("plots/decoder_loss.csv").read_text().startswith("epoch,train_loss,val_psnr_db")
    assert any(DECODER_CHECKPOINTS.iterdir())  # a declared DVC output must exist after the stage
