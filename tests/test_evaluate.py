"""The evaluate stage and its metrics: distances, likelihood baselines, eval.json on tiny real artifacts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import make_images, requires_real_weights
from pipeline.gpt import likelihood
from pipeline.core.errors import PipelineError
from pipeline.gpt.model import training_inputs
from pipeline.evaluation.distribution import class_table, feature_distances, resnet_features
from pipeline.tokenizer.files import TokenSplit
from sample_world import K, tiny_gpt, write_world
from stages.paths import METRICS, PLOTS
from test_sample import run_sample


def test_identical_feature_sets_are_at_distance_zero_and_shifted_ones_are_not():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 16, generator=g, dtype=torch.float64)
    same = feature_distances(a, a.clone(), kid_subset_size=100, seed=0)
    # KID's unbiased estimate dips below 0 when the real and fake subsets share points
    assert abs(same["fid"]) < 1e-6 and same["kid_mean"] < 0.1
    b = torch.randn(300, 16, generator=g, dtype=torch.float64)  # another draw of the same distribution
    assert abs(feature_distances(a, b, kid_subset_size=100, seed=0)["kid_mean"]) < 0.1
    near = feature_distances(a, a + 0.1, kid_subset_size=100, seed=0)["fid"]
    far = feature_distances(a, a + 1.0, kid_subset_size=100, seed=0)
    assert 0 < near < far["fid"] and far["kid_mean"] > 1.0
    assert math.isclose(far["fid"], 16.0, rel_tol=1e-6)  # pure mean shift: |mu_a - mu_b|^2 = 16 * 1^2
    assert feature_distances(a, a + 1.0, kid_subset_size=100, seed=0) == far  # seeded KID subsets


@requires_real_weights
def test_resnet_distance_of_an_image_set_to_itself_is_zero(torch_home):
    from pipeline.features.encoders.cifar_resnet import load_cifar_resnet

    images, _ = make_images(80)
    resnet, cpu = load_cifar_resnet(20), torch.device("cpu")
    real, fake = (resnet_features(x, resnet, 40, cpu) for x in (images, images.copy()))
    d = feature_distances(real, fake, kid_subset_size=40, seed=0)
    assert abs(d["fid"]) < 1e-3 and d["kid_mean"] < 1e-3


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


@requires_real_weights
@pytest.mark.parametrize("conditional", [True, False])
def test_evaluate_writes_eval_json(tmp_path, monkeypatch, torch_home, conditional):
    from stages.evaluate import evaluate

    root = write_world(tmp_path, conditional=conditional, n_train=60, n_test=40)
    run_sample(root, monkeypatch)  # 30 samples
    evaluate(root / "params.yaml")
    m = json.loads((root / METRICS / "eval.json").read_text())
    assert set(m) >= {"gpt", "tokenizer", "samples", "reference_reconstructions", "reference_train_images"}
    assert m["gpt"]["test_nll"] > 0 and m["gpt"]["unigram_test_entropy"] <= math.log(K) + 1e-9
    assert set(m["tokenizer"]) >= {"psnr_db", "ssim", "accuracy_originals", "accuracy_reconstructions"}
    s = m["samples"]
    assert s["n"] == 30 and s["fid_resnet20"] >= 0 and s["kid_resnet20_std"] >= 0
    assert (0 <= s["class_agreement"] <= 1) if conditional else s["class_agreement"] is None
    assert s["fid_inception"] is None or s["fid_inception"] >= 0
    assert s["fid_inception"] is not None or s["fid_inception_absent"]
    rows = (root / PLOTS / "eval_classes.csv").read_text().splitlines()
    assert rows[0] == "class,share_of_samples,agreement" and len(rows) == 11


@requires_real_weights
def test_evaluate_needs_enough_samples(tmp_path, monkeypatch, torch_home):
    from stages.evaluate import evaluate

    root = write_world(tmp_path, evaluate={"n_samples": 31})
    run_sample(root, monkeypatch)  # 30 samples
    with pytest.raises(PipelineError, match="raise sample.n_per_class"):
        evaluate(root / "params.yaml")
