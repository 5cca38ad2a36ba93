"""The reliability battery, second round (issue 30): non-finite and exponent-form params, a full disk, params
edited while a stage runs, DVC's own temporaries and a dvc.lock cut short by a kill, odd sources.

Helpers come from the first round (tests/test_reliability.py). The disk-full case mounts a small tmpfs and
skips where this user may not mount one; the end-to-end case needs the real weights (tiny_pipeline).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, copy_repo, copy_run, run, venv_env, write_npz
from dvc.utils.serialize import modify_yaml
from test_reliability import dead_pid, stage_exit, write_params

from pipeline.core.atomic import remove_stale_temps, temp_path
from pipeline.core.dvc_lock import lock_problem, set_aside_damaged_lock
from pipeline.core.errors import write_failure
from pipeline.data import cifar10
from pipeline.data.cifar10 import DataError
from pipeline.params import ParamsError, load_params, parse_params, preset_overrides
from pipeline.paths import RAW
from pipeline.tokenizer import decoder_training as dt

DVC_TEMP = ".Z3YqM0u9yvfYaMlwllymKQ.tmp"  # the name a killed `dvc checkout` left in the issue


# ---- F4: no float may be inf or nan ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("train", "lr", float("inf")),
        ("train", "weight_decay", float("inf")),
        ("decoder", "lr", float("inf")),
        ("decoder", "perceptual_weight", float("inf")),
        ("sample", "cfg_scale", float("inf")),
        ("sample", "temperature", float("inf")),
        ("train", "dropout", float("nan")),
    ],
)
def test_non_finite_params_are_refused_naming_the_key(repo_params, section, key, value):
    repo_params[section][key] = value
    with pytest.raises(ParamsError, match=f"{section}.{key} = {value!r}: must be a finite number"):
        parse_params(repo_params)


def test_non_finite_layer_weight_is_refused(repo_params):
    repo_params["codebook"]["layer_weights"] = {"stem": float("inf")}
    with pytest.raises(ParamsError, match="codebook.layer_weights.stem = inf: must be a finite number"):
        parse_params(repo_params)


def test_train_stage_with_an_infinite_lr_exits_2_before_training(tmp_path, monkeypatch, capsys):
    text = (REPO / "params.yaml").read_text().replace("  lr: 0.0012\n", "  lr: .inf\n")
    assert ".inf" in text
    (tmp_path / "params.yaml").write_text(text)
    code, err = stage_exit("train", tmp_path, monkeypatch, capsys)
    assert code == 2 and "train.lr = inf: must be a finite number" in err and "Traceback" not in err


# ---- F5: floats in exponent form, as DVC writes them -------------------------------------------------------


def test_exponent_floats_written_by_dvc_are_floats(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    with modify_yaml(params) as data:  # what `dvc exp run -S train.min_lr=1e-6 -S decoder.weight_decay=1e-5` does
        data["train"]["min_lr"], data["decoder"]["weight_decay"], data["train"]["lr"] = 1e-6, 1e-5, 3e-4
    assert "1e-06" in params.read_text()  # DVC's YAML 1.2 writer: no dot, a string to YAML 1.1
    p = load_params(params)
    assert (p.train.min_lr, p.decoder.weight_decay, p.train.lr) == (1e-6, 1e-5, 3e-4)


def test_exponent_floats_typed_by_hand_and_in_presets_are_floats(tmp_path):
    text = (
        (REPO / "params.yaml")
        .read_text()
        .replace("  lr: 0.0012\n", "  lr: 3e-4\n")
        .replace("min_lr: 0.00012", "min_lr: 1E-5")
    )
    (tmp_path / "params.yaml").write_text(text)
    assert (load_params(tmp_path / "params.yaml").train.lr, load_params(tmp_path / "params.yaml").train.min_lr) == (
        3e-4,
        1e-5,
    )
    args = tmp_path / "x.args"
    args.write_text("-S train.lr=1e30\n-S train.min_lr=2.5e-6\n")
    assert preset_overrides(args) == {"train": {"lr": 1e30, "min_lr": 2.5e-6}}


# ---- F6 and the smaller params items ------------------------------------------------------------------------


def test_pca_dims_above_the_sample_size_is_a_params_error(repo_params):
    repo_params["codebook"]["sample_size"] = 40
    with pytest.raises(ParamsError, match=r"codebook: pca_dims \(64\) exceeds sample_size \(40\).*raise sample_size"):
        parse_params(repo_params)


def test_a_rule_across_a_sections_keys_is_said_without_dumping_the_section(repo_params):
    repo_params["train"]["n_head"] = 7
    with pytest.raises(ParamsError) as err:
        parse_params(repo_params)
    assert "train: n_embd (384) must be divisible by n_head (7)" in str(err.value)
    assert "'n_layer'" not in str(err.value)  # the section's other values are not printed


# ---- F7 and odd sources ---------------------------------------------------------------------------------------


def test_a_source_name_too_long_for_the_filesystem_exits_2(tmp_path, monkeypatch, capsys):
    write_params(tmp_path, download=dict(source="x" * 5000))
    code, err = stage_exit("download", tmp_path, monkeypatch, capsys)
    assert code == 2 and "download.source" in err and "5000 characters" in err and "Traceback" not in err


def test_a_class_without_training_images_says_the_source_lacks_it(tmp_path):
    x, y = np.zeros((40, 32, 32, 3), np.uint8), (np.arange(40) % 9).astype(np.uint8)  # no truck
    data = cifar10.Cifar10(cifar10.Split(x, y), cifar10.Split(x[:10], y[:10]), cifar10.CLASSES, "synthetic")
    with pytest.raises(DataError, match=r"no image of class 9 \(truck\).*complete CIFAR-10 source") as err:
        cifar10.write_h5(data, tmp_path / "raw.h5", 10, 0)
    assert "val_size" not in str(err.value)


# ---- F9: a local source replaced under the same name ---------------------------------------------------------


def test_a_replaced_source_file_is_noticed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    npz = write_npz(tmp_path / "c.npz")
    p = load_params(write_params(tmp_path, download=dict(source="c.npz", expect_train=60, expect_test=20, val_size=10)))
    cifar10.download(p.download, RAW)
    assert cifar10.source_changed(RAW, "c.npz") is None
    write_npz(npz, n_train=60, n_test=20, x_test=np.zeros((20, 32, 32, 3), np.uint8))  # other images, same name
    assert "c.npz changed since data/raw/cifar10.h5 was made" in cifar10.source_changed(RAW, "c.npz")
    assert cifar10.source_changed(RAW, "torchvision") is None and cifar10.source_changed(RAW, "other.npz") is None


# ---- F1, F2: what a killed DVC leaves --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, problem",
    [("", "empty"), ("schema: '2.0'\nstages:\n  download: {cmd: [", "not valid YAML"), ("- a\n", "lacks DVC's")],
)
def test_a_damaged_dvc_lock_is_set_aside(tmp_path, text, problem):
    lock = tmp_path / "dvc.lock"
    lock.write_text(text)
    assert problem in lock_problem(lock)
    assert "dvc.lock.broken" in set_aside_damaged_lock(lock)
    assert not lock.exists() and (tmp_path / "dvc.lock.broken").read_text() == text


def test_a_sound_or_absent_dvc_lock_is_left_alone(tmp_path):
    lock = tmp_path / "dvc.lock"
    assert set_aside_damaged_lock(lock) is None
    lock.write_text("schema: '2.0'\nstages: {}\n")
    assert set_aside_damaged_lock(lock) is None and lock.exists()


def test_dvc_temporaries_are_swept_and_ignored_by_dvc(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    folder = repo / "data" / "checkpoints" / "decoder"
    folder.mkdir(parents=True)
    left = [folder / DVC_TEMP, folder / f"inception.h5{DVC_TEMP}"]
    live = temp_path(folder / "last.pt", os.getppid())  # ours, of a running process: kept
    for path in [*left, live, folder / "last.pt"]:
        path.write_bytes(b"x")
    ignored = run(["dvc", "check-ignore", *(str(p.relative_to(repo)) for p in left)], cwd=repo).stdout
    assert all(str(p.relative_to(repo)) in ignored for p in left)
    assert sorted(remove_stale_temps(folder)) == sorted(left)
    assert live.exists() and (folder / "last.pt").exists()


@pytest.mark.usefixtures("torch_home")
def test_make_repro_recovers_from_an_empty_dvc_lock(tiny_pipeline, tmp_path):
    """F1: a `dvc repro` killed while DVC rewrote dvc.lock left it empty; repro.py (make repro, the notebook)
    sets it aside: DVC restores the outputs from its run cache, and the two training stages (persist
    checkpoints, which DVC's run cache skips) resume from their last epoch and save the same models."""
    repo = copy_run(tiny_pipeline[0], tmp_path / "repo")
    models = {
        m: (repo / m).read_bytes()
        for m in ("data/models/gpt/model.safetensors", "data/models/decoder/model.safetensors")
    }
    (repo / "dvc.lock").write_text("")
    assert run(["dvc", "status"], cwd=repo, check=False).returncode != 0  # what DVC alone does with it
    (repo / "data" / "raw" / DVC_TEMP).write_bytes(b"half a restore")
    out = run([sys.executable, "repro.py", "--preset", "gpu"], cwd=repo)
    text = out.stdout + out.stderr
    assert "it is empty" in text and "dvc.lock.broken" in text, text
    assert set(re.findall(r"Running stage '([^']+)'", text)) <= {"decoder", "train"}, text
    assert "resuming from" in text and all((repo / m).read_bytes() == b for m, b in models.items())
    assert not (repo / "data" / "raw" / DVC_TEMP).exists()
    assert lock_problem(repo / "dvc.lock") is None and "up to date" in run(["dvc", "status"], cwd=repo).stdout


# ---- F3: a full disk or a file-size limit ---------------------------------------------------------------------


class SafetensorError(Exception):  # the type safetensors raises, by name
    pass


@pytest.mark.parametrize(
    "error, cause",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left"),
        (OSError(errno.EFBIG, "File too large"), "file-size limit"),
        (
            RuntimeError(
                "Can't decrement id ref count (file write failed: ..., errno = 28, error message = 'No space "
                "left on device')"
            ),
            "no space left",
        ),
        (
            SafetensorError(
                'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left '
                'on device" })'
            ),
            "no space left",
        ),
        (RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 61504 vs 61392"), "short write"),
    ],
)
def test_write_failures_are_recognised_in_every_form_seen(error, cause):
    assert cause in write_failure(error)
    try:
        raise ValueError("while writing") from error
    except ValueError as chained:
        assert cause in write_failure(chained)


def test_other_errors_are_no_write_failures():
    assert write_failure(ValueError("k must be positive")) is None and write_failure(OSError(errno.ENOENT, "x")) is None


def test_a_stage_on_a_full_disk_exits_2_without_a_segfault(tmp_path):
    """F3: an HDF5 writer (here the download stage's) on a tmpfs too small for its output."""
    (tmp_path / "data" / "raw").mkdir(parents=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(tmp_path / "data" / "raw")],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
    try:
        npz = write_npz(tmp_path / "c.npz", n_train=200, n_test=20)  # a 660 KB cifar10.h5
        params = write_params(tmp_path, download=dict(source=str(npz), expect_train=200, expect_test=20, val_size=10))
        proc = subprocess.run(
            [sys.executable, "-m", "stages", "download", "--params", str(params)],
            cwd=tmp_path,
            env=venv_env(),
            capture_output=True,
            text=True,
        )
        left = os.listdir(tmp_path / "data" / "raw")
    finally:
        subprocess.run(["umount", str(tmp_path / "data" / "raw")], check=True)
    assert proc.returncode == 2, proc.stderr
    assert "no space left on the device" in proc.stderr and "Traceback" not in proc.stderr
    assert left == []  # no partial cifar10.h5, no temporary


# ---- F8: params.yaml edited while a stage runs ------------------------------------------------------------------


def _edit_params_during_write(monkeypatch, tmp_path, section: str, key: str, value) -> None:
    original = cifar10.write_h5

    def write_h5_after_an_edit(*args, **kwargs):
        params = yaml.safe_load((tmp_path / "params.yaml").read_text())
        params[section][key] = value
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return original(*args, **kwargs)

    monkeypatch.setattr(cifar10, "write_h5", write_h5_after_an_edit)


def _download_in_a_checkout(tmp_path) -> None:
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")  # which params keys the stage reads
    npz = write_npz(tmp_path / "c.npz")
    write_params(tmp_path, download=dict(source=str(npz), expect_train=60, expect_test=20, val_size=10))


def test_params_edited_while_a_stage_runs_exit_2(tmp_path, monkeypatch, capsys):
    _download_in_a_checkout(tmp_path)
    _edit_params_during_write(monkeypatch, tmp_path, "download", "val_seed", 7)
    code, err = stage_exit("download", tmp_path, monkeypatch, capsys)
    assert (
        code == 2
        and "params.yaml changed while the download stage ran (download)" in err
        and "dvc repro download" in err
    )


def test_params_of_other_stages_may_change_while_a_stage_runs(tmp_path, monkeypatch, capsys):
    _download_in_a_checkout(tmp_path)
    _edit_params_during_write(monkeypatch, tmp_path, "train", "lr", 0.5)
    code, err = stage_exit("download", tmp_path, monkeypatch, capsys)
    assert code == 0, err
    assert (tmp_path / RAW).is_file()


def test_a_stage_run_outside_a_checkout_says_where_its_outputs_go(tmp_path, monkeypatch, capsys, caplog):
    write_params(tmp_path, download=dict(source=str(tmp_path / "absent.npz")))
    code, _ = stage_exit("download", tmp_path, monkeypatch, capsys)
    assert code == 2 and "has no dvc.yaml" in caplog.text and "run stages from the project root" in caplog.text


def test_a_dead_writers_temporary_is_still_swept(tmp_path):  # the first round's rule, next to DVC's names
    stale = temp_path(tmp_path / "x.h5", dead_pid())
    stale.write_bytes(b"half")
    assert remove_stale_temps(tmp_path) == [stale]


# ---- beyond the list: what a finite but bad value can still do -------------------------------------------------


def test_a_diverging_training_is_an_error_and_saves_nothing(tmp_path):
    from test_train import paths_in, tiny_params, train, write_tokens

    from pipeline.core.errors import PipelineError

    paths = paths_in(tmp_path, write_tokens(tmp_path / "tokens.h5"))
    with pytest.raises(PipelineError, match=r"train: training diverged at epoch 1 .*nothing was saved. Lower train.lr"):
        train(tiny_params(lr=1e30, min_lr=0.0, grad_clip=0.0), paths)
    assert not paths.model_dir.exists() and not (paths.checkpoints / "last.pt").exists()


def test_top_k_above_the_codes_is_a_clear_error(tmp_path, monkeypatch):
    from sample_world import K, write_world
    from test_sample import run_sample

    from pipeline.core.errors import PipelineError

    root = write_world(tmp_path, sample={"top_k": K + 1})
    with pytest.raises(PipelineError, match=rf"sample.top_k = {K + 1} exceeds the {K} codes .* at most {K}"):
        run_sample(root, monkeypatch)


def test_decoder_batch_larger_than_the_data_is_refused_as_trains_is(tmp_path):
    from test_decoder import params, write_inputs

    from pipeline.core.errors import PipelineError

    paths = write_inputs(tmp_path, n_train=16)
    inputs = dt.load_inputs(paths["tokens"], paths["codebook"], paths["features"], paths["raw"])
    with pytest.raises(PipelineError, match=r"decoder.batch_size = 64 exceeds the 16 training images"):
        dt.train_decoder(params(batch_size=64), inputs, tmp_path / "ckpt", torch.device("cpu"), "fp32", "code")
