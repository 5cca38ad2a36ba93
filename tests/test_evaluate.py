"""The reference, reconstruct and evaluate stages on tiny real artifacts; likelihood baselines, class table.

The stages run the real Inception network (skipped without its weights file) and the real CIFAR ResNets.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, inception_weights, make_images, requires_inception, requires_real_weights, write_raw
from sample_world import K, tiny_gpt, write_world
from test_sample import run_sample

from pipeline.core.errors import PipelineError
from pipeline.evaluation import inception
from pipeline.evaluation.distribution import class_table, pooled_features, proxy_distances
from pipeline.evaluation.feature_stats import Gaussian
from pipeline.evaluation.reference import Reference, description, read_reference
from pipeline.gpt import likelihood
from pipeline.gpt.model import training_inputs
from pipeline.paths import METRICS, PLOTS, RAW, REFERENCE
from pipeline.tokenizer.files import TokenSplit

N_TRAIN, N_TEST = 60, 40  # the raw images of write_world
# Inception is slow on a CPU: few images everywhere (degenerate covariances, but every code path runs).
REFERENCE_PARAMS = {
    "n_train": 10,
    "n_test": 12,
    "kid_images": 8,
    "batch_size": 12,
    "precision": "fp32",
    "seed": 0,
    "device": "cpu",
}
FEW = {"n_samples": 10, "kid_subset_size": 5}  # samples scored by evaluate (the world holds 30)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    """A folder in which the reference stage ran on write_world's raw images (once for this module)."""
    if inception_weights() is None:
        pytest.skip("Inception weights absent")
    from stages.reference import reference

    root = tmp_path_factory.mktemp("reference")
    write_raw(root / RAW, N_TRAIN, N_TEST)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["reference"] = REFERENCE_PARAMS
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    before = os.getcwd()
    os.chdir(root)
    try:
        reference(root / "params.yaml")
    finally:
        os.chdir(before)
    return root


def with_reference(root, reference_dir):
    (root / REFERENCE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(reference_dir / REFERENCE, root / REFERENCE)
    return root


@requires_inception
def test_reference_stage_writes_statistics_and_the_floor(reference_dir):
    ref = read_reference(reference_dir / REFERENCE)
    assert (ref.train.n, ref.test.n, len(ref.train_kid)) == (10, 12, 8)
    assert ref.train.mean.shape == (inception.FEATURES,) and ref.train.cov.shape == (inception.FEATURES,) * 2
    assert ref.test_features.shape == (12, inception.FEATURES)
    assert (
        len(set(ref.test_indices)) == 12 and np.all(np.diff(ref.test_indices) > 0) and ref.test_indices.max() < N_TEST
    )
    assert ref.precision == "fp32" and ref.protocol == inception.PROTOCOL
    m = json.loads((reference_dir / METRICS / "reference.json").read_text())
    info = json.loads((reference_dir / "info" / "reference.json").read_text())
    assert (
        m["fid_test_vs_train"] > 0 and info["reference_train_images"] == 10 and info["protocol"] == inception.PROTOCOL
    )


@requires_inception
def test_a_reference_made_under_another_protocol_is_refused(reference_dir, tmp_path):
    other = tmp_path / "inception.h5"
    shutil.copy(reference_dir / REFERENCE, other)
    with h5py.File(other, "a") as f:
        f.attrs["protocol"] = "pytorch-fid"
    with pytest.raises(PipelineError, match="another Inception protocol .* re-run the reference stage"):
        read_reference(other)


def test_description_says_whether_the_counts_are_the_published_ones():
    def g(n):
        return Gaussian(np.zeros(2), np.eye(2), n)

    features = np.zeros((3, 2), np.float32)
    ref = Reference(
        train=g(50_000),
        train_kid=features,
        test=g(10_000),
        test_features=features,
        test_indices=np.arange(3),
        precision="fp32",
    )
    assert (
        description(ref, 50_000, "train")["published_counts"] and description(ref, 10_000, "test")["published_counts"]
    )
    assert "counts_note" not in description(ref, 50_000, "train") and "published_counts" not in description(ref)
    small = description(ref, 1000, "train")
    assert small["published_counts"] is False and small["counts_note"].startswith("1000 images against 50000 train")


@requires_real_weights
def test_proxy_distance_of_an_image_set_to_itself_is_zero(torch_home):
    from pipeline.features.encoders.cifar_resnet import load_cifar_resnet

    images, _ = make_images(80)
    resnet, cpu = load_cifar_resnet(56), torch.device("cpu")
    real, fake = (pooled_features(x, resnet, 40, cpu) for x in (images, images.copy()))
    assert real.shape == (80, 64)
    d = proxy_distances(real, fake, "resnet56", kid_subset_size=40, seed=0)
    assert abs(d["fid_resnet56"]) < 1e-3 and d["kid_resnet56_mean"] < 1e-3


def test_unigram_baselines():
    uniform = np.tile(np.arange(K), (4, 2))  # every code equally often, 32 tokens per image
    u = likelihood.unigram_baselines(uniform, uniform, K)
    assert math.isclose(u["unigram_test_entropy"], math.log(K))
    assert math.isclose(u["unigram_test_entropy_bits_per_image"], 32 * math.log2(K))
    assert math.isclose(u["unigram_train_xent"], math.log(K))  # add-one smoothing keeps it uniform
    skewed = likelihood.unigram_baselines(np.zeros((4, 32), int), uniform, K)
    assert skewed["unigram_train_xent"] > skewed["unigram_test_entropy"]


def test_mean_nll_is_the_mean_cross_entropy_per_code():
    model = tiny_gpt(True)
    g = torch.Generator().manual_seed(0)
    split = TokenSplit(torch.randint(0, K, (12, 16), generator=g), torch.arange(12) % 10)
    out = likelihood.nll_metrics(likelihood.mean_nll(model, split, 5, torch.device("cpu"), "fp32"), 16, "test")
    with torch.no_grad():
        _, loss, _ = model(training_inputs(split.tokens, model.cfg.prefix(split.labels, 12, "cpu")), split.tokens)
    assert math.isclose(out["test_nll"], loss.item(), rel_tol=1e-5)
    assert math.isclose(out["test_bits_per_image"], out["test_nll"] * 16 / math.log(2))


def test_class_table():
    rows = class_table(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), 3)
    assert [r["share"] for r in rows] == [0.5, 0.25, 0.25]
    assert [r["agreement"] for r in rows] == [1.0, 0.5, 1.0]
    assert "agreement" not in class_table(np.array([0]), None, 3)[0]


@requires_inception
@requires_real_weights
@pytest.mark.parametrize("conditional", [True, False])
def test_evaluate_writes_eval_json(tmp_path, monkeypatch, torch_home, reference_dir, conditional):
    from stages.evaluate import evaluate

    # unconditional: more samples scored than the reference has test images; the floor then uses all of them
    few = FEW if conditional else FEW | {"n_samples": 20}
    root = with_reference(
        write_world(tmp_path, conditional=conditional, n_train=N_TRAIN, n_test=N_TEST, evaluate=few), reference_dir
    )
    run_sample(root, monkeypatch)  # 30 samples
    evaluate(root / "params.yaml")
    m = json.loads((root / METRICS / "eval.json").read_text())
    info = json.loads((root / "info" / "eval.json").read_text())
    assert m["test_nll"] > 0 and m["unigram_bits_per_image"] > 0
    assert info["evaluator"] == "cifar_resnet56" and info["inception"]["reference_train_images"] == 10
    assert info["inception"]["published_counts"] is False
    assert "published CIFAR-10 numbers" in info["inception"]["counts_note"]
    assert info["samples"] == few["n_samples"] and info["floor_test_images"] == min(few["n_samples"], 12)
    assert m["sample_fid"] > 0 and m["floor_fid"] > 0 and m["sample_kid_std"] >= 0 and m["sample_fid_evaluator"] >= 0
    assert all(0 <= m[f"{who}_{key}"] <= 1 for who in ("sample", "floor") for key in ("precision", "recall"))
    assert (0 <= m["class_agreement"] <= 1) if conditional else "class_agreement" not in m
    rows = (root / PLOTS / "eval_classes.csv").read_text().splitlines()
    assert rows[0] == "class,share_of_samples,agreement" and len(rows) == 11


@requires_inception
@requires_real_weights
def test_reconstruct_scores_the_tokenizer_on_the_reference_test_images(
    tmp_path, monkeypatch, torch_home, reference_dir
):
    from stages.reconstruct import reconstruct

    root = with_reference(
        write_world(tmp_path, n_train=N_TRAIN, n_test=N_TEST, reconstruct={"n_images": 6}), reference_dir
    )
    monkeypatch.chdir(root)
    reconstruct(root / "params.yaml")
    m = json.loads((root / METRICS / "reconstruct.json").read_text())
    info = json.loads((root / "info" / "reconstruct.json").read_text())
    assert info["n_images"] == 6 and info["evaluator"] == "cifar_resnet56" and m["rfid"] > 0
    assert m["test_psnr_db"] > 0 and 0 <= m["accuracy_reconstructions"] <= 1 and 0 <= m["prediction_agreement"] <= 1
    assert info["inception"]["reference_test_images"] == 12 and info["inception"]["published_counts"] is False


@requires_inception
@requires_real_weights
def test_evaluate_needs_enough_samples(tmp_path, monkeypatch, torch_home, reference_dir):
    from stages.evaluate import evaluate

    root = with_reference(write_world(tmp_path, evaluate={"n_samples": 31}), reference_dir)
    run_sample(root, monkeypatch)  # 30 samples
    with pytest.raises(PipelineError, match="raise sample.n_per_class"):
        evaluate(root / "params.yaml")
