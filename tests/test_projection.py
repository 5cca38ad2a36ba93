"""The run-time projection `make repro` prints: every long stage timed on this CPU, scaled by what the params ask."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pipeline import projection
from pipeline.params import apply_words, parse_params, read_yaml
from tests.conftest import REPO, TINY_PROFILE

STAGES = ["reference", "extract", "codebook", "decoder", "reconstruct", "train", "sample", "evaluate"]


def tiny(*words: str):
    """params.yaml with the tiny profile and `-S` words on top (the tiny models keep the probes fast)."""
    raw = read_yaml((REPO / "params.yaml").read_text())
    for section, values in read_yaml(TINY_PROFILE.read_text()).items():
        raw[section] |= values
    return parse_params(apply_words(raw, list(words), "test"))


def test_every_long_stage_is_projected_from_a_real_timing():
    stages, probe_seconds = projection.project(tiny())
    assert [s.stage for s in stages] == STAGES
    assert all(s.seconds > 0 and s.basis for s in stages)
    assert probe_seconds > 0
    text = projection.describe(stages, probe_seconds)
    assert text.startswith("projected on this CPU: about ") and all(f"{s} " in text for s in STAGES)


@pytest.fixture
def constant_timings(monkeypatch):
    """Every probe takes 10 ms, so the projection is the params' arithmetic alone."""
    monkeypatch.setattr(projection, "timed_seconds", lambda fn, repeats=3, warmup=1: 0.01)


def by_stage(params) -> dict[str, float]:
    return {s.stage: s.seconds for s in projection.project(params)[0]}


def test_the_projection_scales_with_what_the_params_ask_for(constant_timings):
    base = by_stage(tiny())
    # the GPT: steps x seconds per step plus one validation pass per epoch, so twice the epochs is twice the time
    assert by_stage(tiny("-S", "train.epochs=2"))["train"] == pytest.approx(2 * base["train"])
    # the decoder: 160 train images at batch 50 are 4 steps an epoch, at batch 20 8 (plus the same decoding)
    steps = by_stage(tiny("-S", "decoder.batch_size=20"))["decoder"] - base["decoder"]
    assert steps == pytest.approx(4 * 0.01)
    # Inception: the reference's images at a fixed rate
    assert by_stage(tiny("-S", "reference.n_train=24"))["reference"] > base["reference"]
    assert by_stage(tiny("-S", "reference.n_train=24"))["train"] == base["train"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="projected only where no CUDA GPU runs the pipeline")
def test_make_repro_prints_the_projection_before_it_starts():
    out = subprocess.run(
        [sys.executable, "repro.py", "--dry-run", "--preset", "cpu"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("make repro: PRESET=cpu was asked for -> the CPU preset")
    assert any(line.strip().startswith("projected on this CPU: about ") for line in lines)
