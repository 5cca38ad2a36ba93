"""core: the time estimate, the checkpoint's run identity, image tiling, the precision resolver."""

import logging

import numpy as np
import pytest
import torch

from pipeline.core import progress, runtime
from pipeline.core.checkpoint import Checkpoint, run_fingerprint
from pipeline.core.hashing import code_sha256, stage_code
from pipeline.core.images import tile_rows


def test_eta_measures_after_warmup_and_extrapolates(monkeypatch):
    clock = iter([0.0, 10.0, 14.0])  # warm-up ends at t=0; 4 batches of 10 units take 14 s, not 10
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    eta = progress.Eta("x", total=1000, unit="images", warmup=2, measure=4)
    for _ in range(5):
        eta.update(10)
    assert eta.minutes is None
    monkeypatch.setattr(progress.time, "perf_counter", lambda: 14.0)
    eta.update(10)
    # 40 units in 14 s after warm-up; 1000 - 60 left
    assert np.isclose(eta.minutes, 940 * 14 / 40 / 60)


def test_checkpoint_is_reused_only_by_the_same_params_inputs_and_code(tmp_path):
    fingerprint = run_fingerprint({"lr": 1.0}, {"tokens": "abc"}, "code-v1")
    Checkpoint(tmp_path, fingerprint, "t").save({"epoch": 3, "w": torch.ones(2)})
    assert Checkpoint(tmp_path, fingerprint, "t").load()["epoch"] == 3
    for other in (
        run_fingerprint({"lr": 2.0}, {"tokens": "abc"}, "code-v1"),
        run_fingerprint({"lr": 1.0}, {"tokens": "abd"}, "code-v1"),
        run_fingerprint({"lr": 1.0}, {"tokens": "abc"}, "code-v2"),
    ):
        assert Checkpoint(tmp_path, other, "t").load() is None


def test_code_hash_covers_every_file_the_stage_runs():
    assert "pipeline/gpt/training.py" in stage_code("train") and "stages/train.py" in stage_code("train")
    assert "pipeline/tokenizer/kmeans.py" not in stage_code("train")
    assert code_sha256("train") != code_sha256("decoder")
    assert code_sha256("train") == code_sha256("train")


def test_tile_rows_places_each_row_and_pads_short_rows_white():
    a = np.zeros((3, 4, 4, 3), np.uint8)
    b = np.full((1, 4, 4, 3), 7, np.uint8)
    out = tile_rows([a, b], columns=3, gap=1)
    assert out.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    assert (out[1:5, 1:5] == 0).all() and (out[6:10, 1:5] == 7).all()
    assert (out[6:10, 6:10] == 255).all()  # the missing tiles of row 2
    assert (out[0] == 255).all() and (out[:, 0] == 255).all()


@pytest.mark.parametrize(
    "requested, device, native_bf16, expected",
    [
        ("auto", "cuda", True, "bf16"),  # Ampere and newer
        ("auto", "cuda", False, "fp16"),  # T4, V100, P100: fp16 with a gradient scaler
        ("auto", "cpu", True, "bf16"),  # AMX or AVX512-BF16
        ("auto", "cpu", False, "fp32"),  # AVX2-only CPUs
        ("fp32", "cuda", True, "fp32"),
        ("fp32", "cpu", True, "fp32"),
        ("bf16", "cpu", True, "bf16"),
        ("bf16", "cpu", False, "bf16"),  # emulated: runs as asked, with a warning
        ("fp16", "cuda", False, "fp16"),
    ],
)
def test_precision_resolution_table(monkeypatch, caplog, requested, device, native_bf16, expected):
    monkeypatch.setattr(runtime, "native", lambda dev, precision: precision == "fp16" or native_bf16)
    monkeypatch.setattr(runtime.torch.cuda, "get_device_name", lambda dev=None: "a CUDA card")
    monkeypatch.setattr(runtime, "emulation_slowdown", lambda dev, precision: 40.0)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert runtime.resolve_precision(requested, torch.device(device), "stage.precision") == expected
    emulated = requested == "bf16" and not native_bf16
    assert any(r.levelno == logging.WARNING for r in caplog.records) == emulated
    assert runtime.grad_scaler(torch.device("cpu"), expected).is_enabled() == (expected == "fp16")


@pytest.mark.parametrize(
    "requested, device, native_bf16, expected",
    [
        ("auto", "cpu", True, "bf16"),  # AMX: Inception in bf16 keeps the CPU preset inside its budget
        ("auto", "cpu", False, "fp32"),  # AVX2: never emulated bf16
        ("auto", "cuda", True, "fp32"),  # a GPU runs the published protocol's fp32
        ("fp32", "cpu", True, "fp32"),
        ("bf16", "cpu", False, "bf16"),  # explicit: as asked (the reference stage warns)
    ],
)
def test_feature_precision_resolution(monkeypatch, requested, device, native_bf16, expected):
    monkeypatch.setattr(runtime, "native", lambda dev, precision: native_bf16)
    assert runtime.resolve_feature_precision(requested, torch.device(device)) == expected


@pytest.mark.parametrize(
    "requested, device, world, expected",
    [
        ("auto", "cuda", 1, "default"),  # the small GPT step is launch-bound on a GPU
        ("auto", "cuda", 4, None),  # DDP: eager (not measured compiled)
        ("auto", "cpu", 1, None),  # eager: compiling the CPU step gained nothing
        ("none", "cuda", 1, None),
        ("default", "cpu", 1, "default"),
        ("reduce-overhead", "cuda", 2, "reduce-overhead"),  # explicit: as asked
    ],
)
def test_compile_resolution_table(requested, device, world, expected):
    assert runtime.resolve_compile(requested, torch.device(device), world) == expected


@pytest.mark.parametrize(
    "supported, speedup, expected",
    [
        (True, 7.0, "bf16"),  # AMX tiles
        (True, 0.6, "fp32"),  # AVX512-BF16 without AMX: "native", yet slower (issue 29's Xeon)
        (True, 0.22, "fp32"),  # AVX-512 without AVX512-BF16: oneDNN claims bf16 and emulates it
        (True, 1.1, "fp32"),  # inside the timing margin: never a precision that may be slower
        (False, 7.0, "fp32"),  # no bf16 kernels at all (AVX2): nothing is measured
    ],
)
def test_auto_on_a_cpu_takes_bf16_only_where_it_measures_faster(monkeypatch, caplog, supported, speedup, expected):
    monkeypatch.setattr(runtime, "_cpu_supports", lambda precision: supported)
    monkeypatch.setattr(runtime, "cpu_speedup", lambda precision: speedup)
    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert runtime.resolve_precision("auto", cpu, "train.precision") == expected
    assert runtime.resolve_feature_precision("auto", cpu) == expected
    reason = f"bf16 matrix products at {speedup:.2f}x fp32's speed (measured)" if supported else "no bf16 kernels"
    assert f"train.precision: auto -> {expected} on " in caplog.text and reason in caplog.text


def test_the_cpu_precision_probe_runs_once_per_process(monkeypatch):
    timed = []
    monkeypatch.setattr(runtime, "_matmul_seconds", lambda device, dtype: timed.append(dtype) or 1.0)
    runtime.cpu_speedup.cache_clear()
    try:
        assert runtime.cpu_speedup("bf16") == runtime.cpu_speedup("bf16") == 1.0
        assert timed == [torch.float32, torch.bfloat16]
    finally:
        runtime.cpu_speedup.cache_clear()  # the real machine's value for the tests that follow
