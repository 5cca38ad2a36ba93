"""The reliability battery (issue 16), as a careful user would run it: kills, stray temporaries, damaged and
bad inputs, tampered weights, byte-stable outputs.

Most cases run in-process or as one stage on tiny synthetic data. The end-to-end ones drive the real `dvc`
on the tiny profile (tests/profiles/tiny.yaml) and need the real ResNet weights (they skip without them);
kill -9 is injected at exact points of an atomic write by tests/killpoint/sitecustomize.py.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import (
    REPO,
    TINY_PROFILE,
    copy_repo,
    copy_run,
    make_images,
    requires_real_weights,
    run,
    venv_env,
    write_npz,
    write_raw,
)
from sample_world import gpt_config, tiny_gpt
from test_codebook import CENTERS, blob_grids, write_features
from test_train import write_tokens

from pipeline.core.atomic import temp_path, write_bytes
from pipeline.core.checkpoint import Checkpoint
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import sha256_file
from pipeline.data import cifar10
from pipeline.data.cifar10 import DataError
from pipeline.features.encoders import build_encoder
from pipeline.features.encoders.cifar_resnet import CHECKPOINTS, CifarResNet, load_cifar_resnet
from pipeline.features.files import read_feature_info
from pipeline.gpt.model import load_gpt, save_gpt
from pipeline.gpt.sampling import read_samples, sample_labels, write_samples
from pipeline.params import ParamsError, SampleParams, parse_params
from pipeline.paths import GPT_CHECKPOINTS, OUTPUT_ROOTS, RAW, TOKENS
from pipeline.tokenizer import files as tok
from pipeline.tokenizer.decoder import DecoderConfig, InverseCNN
from pipeline.tokenizer.decoding import load_token_decoder, save_cnn_decoder
from stages.__main__ import main as cli_main

KILL_HOOK = REPO / "tests" / "killpoint"
PR_CAPBSET_DROP = 24  # prctl option (linux/prctl.h)


def dead_pid() -> int:
    """The id of a process that has just ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def temporaries(repo: Path) -> set[str]:
    """Atomic-write temporaries (.<name>.<pid>.tmp) anywhere in the pipeline's output folders of `repo`."""
    return {p.relative_to(repo).as_posix() for root in OUTPUT_ROOTS for p in (repo / root).rglob(".*.tmp")}


def stage_exit(stage: str, cwd: Path, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`python -m stages <stage> [args]` in-process in `cwd`: (exit status, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["stages", stage, *args])
    with pytest.raises(SystemExit) as exited:
        cli_main()
    return exited.value.code, capsys.readouterr().err


def write_params(folder: Path, base: Path = REPO / "params.yaml", **sections) -> Path:
    """params.yaml in `folder`: `base` (the repository's), with `sections` updated."""
    params = yaml.safe_load(base.read_text())
    for section, values in sections.items():
        params[section].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder / "params.yaml"


# ---- (2) temporaries of killed processes: removed, and never cached -------------------------------------


def test_atomic_write_removes_the_temporaries_of_dead_processes_only(tmp_path):
    target = tmp_path / "out.bin"
    stale_file = temp_path(target, dead_pid())
    stale_file.write_bytes(b"half")
    stale_folder = temp_path(tmp_path / "model", dead_pid())
    (stale_folder / "sub").mkdir(parents=True)
    live = temp_path(target, os.getppid())  # a running process (pytest's parent) may still be writing it
    live.write_bytes(b"in progress")
    write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert not stale_file.exists() and not stale_folder.exists() and live.exists()


def test_opening_a_checkpoint_folder_removes_half_written_checkpoints(tmp_path):
    stale = temp_path(tmp_path / "last.pt", dead_pid())
    stale.write_bytes(b"a checkpoint cut off by kill -9")
    assert Checkpoint(tmp_path, "fingerprint", "t").load() is None  # a run resumed at its last epoch saves nothing
    assert not stale.exists()


def test_every_stage_starts_by_sweeping_what_killed_stages_left(tmp_path, monkeypatch, capsys):
    stale = [temp_path(tmp_path / out, dead_pid()) for out in ("data/features/features.h5", "metrics/x.json")]
    live = temp_path(tmp_path / "data/tokens/tokens.h5", os.getppid())
    for path in [*stale, live]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"tmp")
    code, _ = stage_exit("download", tmp_path, monkeypatch, capsys, "--params", "no-such-params.yaml")
    assert code == 2  # the stage itself fails; the sweep ran first
    assert not any(p.exists() for p in stale) and live.exists()


def test_dvc_never_records_a_temporary_in_a_directory_output(tmp_path):
    """A temporary inside data/checkpoints/gpt (a persist directory output) when `dvc repro` records it:
    a dead process's is removed by the stage, a live one's is ignored (.dvcignore); neither is cached."""
    repo = copy_repo(tmp_path / "repo")
    write_tokens(repo / TOKENS)  # synthetic tokens: train runs without the upstream stages
    write_params(repo, train=yaml.safe_load(TINY_PROFILE.read_text())["train"])
    ckpts = repo / GPT_CHECKPOINTS
    ckpts.mkdir(parents=True)
    stale, live = temp_path(ckpts / "last.pt", dead_pid()), temp_path(ckpts / "last.pt", os.getppid())
    stale.write_bytes(b"half a checkpoint of a killed run")
    live.write_bytes(b"a checkpoint another process is writing")

    run(["dvc", "repro", "--single-item", "train"], cwd=repo)
    assert not stale.exists() and live.exists()
    out = next(
        o
        for o in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train"]["outs"]
        if o["path"] == GPT_CHECKPOINTS.as_posix()
    )
    assert out["nfiles"] == 1
    assert [e["relpath"] for e in json.loads(cache_object(repo, out["md5"]).read_text())] == ["last.pt"]
    assert not cache_object(repo, hashlib.md5(live.read_bytes()).hexdigest()).exists()


# ---- (3) a damaged artifact is exit 2 naming the file and the stage to re-run ---------------------------


def _raw(folder):
    write_raw(folder / "cifar10.h5", 20, 10)
    return folder / "cifar10.h5", folder / "cifar10.h5"


def _features(folder):
    write_features(folder / "features.h5", blob_grids(20, 4, CENTERS, 1)[0], blob_grids(10, 4, CENTERS, 2)[0])
    return folder / "features.h5", folder / "features.h5"


def _tokens(folder):
    return write_tokens(folder / "tokens.h5"), folder / "tokens.h5"


def _codebook(folder):
    tok.write_codebook(folder / "codebook.safetensors", np.ones((8, 4), np.float32), {"k": 8})
    return folder / "codebook.safetensors", folder / "codebook.safetensors"


def _samples(folder):
    cfg = gpt_config()
    labels = sample_labels(cfg, 2)
    tokens = np.zeros((len(labels), cfg.block_size), np.uint16)
    p = SampleParams(**yaml.safe_load((REPO / "params.yaml").read_text())["sample"])
    write_samples(folder / "samples.h5", tokens, labels, make_images(len(labels))[0], cfg, p, cifar10.CLASSES, "cnn")
    return folder / "samples.h5", folder / "samples.h5"


def _gpt(folder):
    save_gpt(tiny_gpt(), folder / "gpt")
    return folder / "gpt", folder / "gpt/model.safetensors"


def _decoder(folder):
    save_cnn_decoder(
        InverseCNN(DecoderConfig(in_channels=4, grid=4, k=8, channels=32, res_blocks=0), torch.ones(8, 4)),
        folder / "decoder",
    )
    return folder / "decoder", folder / "decoder/model.safetensors"


ARTIFACTS = {  # what: (writer, reader, the stage that writes it)
    "raw": (_raw, lambda p: cifar10.read_split(p, "train"), "download"),
    "features": (_features, read_feature_info, "extract"),
    "tokens": (_tokens, lambda p: tok.read_split(p, "train"), "codebook"),
    "codebook": (_codebook, tok.load_codebook, "codebook"),
    "samples": (_samples, read_samples, "sample"),
    "gpt": (_gpt, load_gpt, "train"),
    "decoder": (_decoder, load_token_decoder, "decoder"),
}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _overwrite_head(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:64] = b"\xff" * 64
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _overwrite_head], ids=["truncated", "overwritten-header"])
@pytest.mark.parametrize("what", list(ARTIFACTS))
def test_damaged_artifact_names_the_file_and_the_stage_to_rerun(tmp_path, what, damage):
    write, read, stage = ARTIFACTS[what]
    path, file = write(tmp_path)
    read(path)  # intact: reads
    damage(file)
    with pytest.raises(PipelineError) as err:
        read(path)
    assert str(file) in str(err.value) and f"dvc repro {stage}" in str(err.value)


def test_stage_with_a_truncated_input_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    write_raw(tmp_path / RAW, 20, 10)
    _truncate(tmp_path / RAW)
    pixels = dict(encoder="pixels", layers=["rgb"], grid=8, pool="avg", standardize=False, device="cpu")  # no weights
    write_params(tmp_path, extract=pixels)
    code, err = stage_exit("extract", tmp_path, monkeypatch, capsys)
    assert code == 2 and str(RAW) in err and "dvc repro download" in err and "Traceback" not in err


# ---- (3) bad sources and params --------------------------------------------------------------------------


def test_npy_source_says_a_npz_is_needed(tmp_path):
    np.save(tmp_path / "images.npy", make_images(4)[0])
    with pytest.raises(DataError, match=r"images\.npy: a \.npy file holds one array.*\.npz"):
        cifar10.load_source(str(tmp_path / "images.npy"), tmp_path)


def test_object_array_of_class_names_is_named_not_called_corrupt(tmp_path):
    npz = write_npz(tmp_path / "c.npz", classes=np.array(list(cifar10.CLASSES), dtype=object))
    with pytest.raises(DataError) as err:
        cifar10.load_source(str(npz), tmp_path)
    assert "'classes' is an object array" in str(err.value) and "corrupt" not in str(err.value)
    write_npz(npz, classes=np.array(list(cifar10.CLASSES)))  # the fix the message gives
    assert cifar10.load_source(str(npz), tmp_path).classes == cifar10.CLASSES


def test_batches_folder_names_each_bad_file_and_the_fix(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ["data_batch_1", "data_batch_2", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"not the official file")
    with pytest.raises(DataError) as err:
        cifar10.load_source(str(folder), tmp_path)
    message = str(err.value)
    assert "data_batch_3 (missing)" in message and "data_batch_1 (md5 differs" in message
    assert "cifar-10-python.tar.gz" in message and "download=True" not in message


def test_offline_download_says_how_to_use_a_local_copy(tmp_path):
    params = write_params(tmp_path, download=dict(source="torchvision", cache_dir=str(tmp_path / "cache")))
    unreachable = "http://127.0.0.1:9"  # nothing listens on the discard port: refused at once, as offline
    env = venv_env() | {
        "https_proxy": unreachable,
        "HTTPS_PROXY": unreachable,
        "no_proxy": "",
        "NO_PROXY": "",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "stages", "download", "--params", str(params)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert "CIFAR-10 could not be downloaded" in proc.stderr and "dvc exp run -S download.source=" in proc.stderr


def obey_permissions() -> None:
    """preexec_fn: a child running as root loses root's override of file permissions (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH dropped from its bounding set), so a read-only folder is read-only to it too."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_read_only_data_folder_exits_2_naming_it(tmp_path):
    npz = write_npz(tmp_path / "c.npz")
    params = write_params(tmp_path, download=dict(source=str(npz), expect_train=60, expect_test=20, val_size=10))
    (tmp_path / "data").mkdir()
    (tmp_path / "data").chmod(0o555)
    command = [sys.executable, "-m", "stages", "download", "--params", str(params)]
    env = venv_env() | {"PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run(
            command,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            preexec_fn=obey_permissions if os.geteuid() == 0 else None,
        )
    except subprocess.SubprocessError as e:
        pytest.skip(f"cannot run a child that obeys file permissions as root here: {e}")
    finally:
        (tmp_path / "data").chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert "data/raw: cannot create this folder, data is not writable" in proc.stderr


@pytest.mark.parametrize(
    "section, key, value, word",
    [
        ("train", "epochs", True, "integer"),
        ("decoder", "epochs", False, "integer"),
        ("extract", "standardize", 1, "boolean"),
        ("train", "lr", True, "number"),
    ],
)
def test_yaml_booleans_are_no_numbers_and_numbers_no_booleans(repo_params, section, key, value, word):
    repo_params[section][key] = value
    with pytest.raises(ParamsError, match=f"{section}.{key} = {value!r}: .*{word}"):
        parse_params(repo_params)


def test_an_integer_is_still_a_float(repo_params):
    repo_params["train"]["lr"] = 1
    assert parse_params(repo_params).train.lr == 1.0


# ---- (4) pre-trained weights verified before they are loaded ---------------------------------------------


def fake_weights(tmp_path, monkeypatch, truncate: bool) -> Path:
    """A torch hub cache whose resnet20 file is loadable (or truncated) but not the published one."""
    buffer = io.BytesIO()
    torch.save({"state_dict": CifarResNet(20).state_dict()}, buffer)
    data = buffer.getvalue()
    path = tmp_path / "torch-home" / "hub" / "checkpoints" / CHECKPOINTS[20][0]
    path.parent.mkdir(parents=True)
    path.write_bytes(data[: len(data) // 2] if truncate else data)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return path


@pytest.mark.parametrize("truncate", [False, True], ids=["modified", "truncated"])
def test_weights_that_are_not_the_published_file_are_refused(tmp_path, monkeypatch, truncate):
    path = fake_weights(tmp_path, monkeypatch, truncate)
    with pytest.raises(PipelineError) as err:
        load_cifar_resnet(20)
    assert str(path) in str(err.value) and "Delete it" in str(err.value)


def test_extract_with_tampered_weights_exits_2(tmp_path, monkeypatch, capsys):
    path = fake_weights(tmp_path, monkeypatch, truncate=False)
    write_raw(tmp_path / RAW, 20, 10)
    write_params(tmp_path, extract=dict(device="cpu", precision="fp32"))
    code, err = stage_exit("extract", tmp_path, monkeypatch, capsys)
    assert code == 2 and str(path) in err


def test_recorded_weights_hash_is_the_files_own(torch_home):
    path = torch_home / "hub" / "checkpoints" / CHECKPOINTS[20][0]
    assert build_encoder("cifar_resnet20").weights_sha256 == load_cifar_resnet(20).weights_sha256 == sha256_file(path)


# ---- (5) byte-identical outputs --------------------------------------------------------------------------

CODEBOOK_TIMINGS = {"kmeans_minutes", "assign_minutes"}


def test_codebook_stage_twice_writes_the_same_bytes(tmp_path):
    """Two processes (other hash seeds) running codebook on the same features with the same params."""
    outputs = [
        "data/tokens/tokens.h5",
        "data/tokens/codebook.safetensors",
        "plots/codebook_usage.csv",
        "plots/codebook_usage.png",
        "metrics/codebook.json",
    ]
    runs = []
    for seed in ("1", "2"):
        folder = tmp_path / f"run{seed}"
        folder.mkdir()
        train, test = blob_grids(40, 4, CENTERS, 1)[0], blob_grids(10, 4, CENTERS, 2)[0]
        write_features(folder / "data/features/features.h5", train, test)
        write_params(
            folder,
            codebook=dict(k=8, niter=10, sample_size=10_000, max_points_per_centroid=1000, pca_dims=None, device="cpu"),
        )
        env = venv_env() | {"PYTHONPATH": str(REPO), "PYTHONHASHSEED": seed}
        command = [sys.executable, "-m", "stages", "codebook"]
        subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True)
        runs.append({out: (folder / out).read_bytes() for out in outputs})
    first, second = runs
    assert {out for out in outputs if first[out] != second[out]} <= {"metrics/codebook.json"}
    drop = lambda blob: {k: v for k, v in json.loads(blob).items() if k not in CODEBOOK_TIMINGS}  # noqa: E731
    assert drop(first["metrics/codebook.json"]) == drop(second["metrics/codebook.json"])


# Every file the pipeline writes, and why two runs with the same params on the same machine give (or
# cannot give) the same bytes. test_which_outputs_are_byte_identical_across_reruns keeps this list true.
BYTE_IDENTICAL = {
    "data/raw/cifar10.h5": "h5py stores no timestamps; the images as given",
    "data/reference/inception.h5": "deterministic CPU inference in fp32; seeded subsets; stats in a fixed order",
    "data/features/features.h5": "deterministic CPU inference; stats reduced in a fixed order",
    "data/tokens/tokens.h5": "seeded FAISS k-means, deterministic assignment",
    "data/tokens/codebook.safetensors": "metadata written as one sorted JSON string",
    "data/models/decoder/config.json": "sorted JSON",
    "data/models/decoder/model.safetensors": "seeded init and batch order, deterministic CPU training",
    "data/models/gpt/config.json": "sorted JSON",
    "data/models/gpt/model.safetensors": "seeded init, batch order and dropout, deterministic CPU training",
    "data/samples/samples.h5": "one seeded generator drives every batch",
    "data/samples/grid.png": "matplotlib writes no dates into PNGs",
    "metrics/eval.json": "seeded subsets; no timings",
    "info/codebook.json": "settings and counts",
    "info/eval.json": "settings, counts and the protocol",
    "info/reconstruct.json": "settings, counts and the protocol",
    "info/reference.json": "settings, counts and the protocol",
    "info/train.json": "settings and counts",
    "plots/codebook_usage.csv": "counts",
    "plots/codebook_usage.png": "no dates",
    "plots/decoder_loss.csv": "losses of a deterministic run",
    "plots/reconstructions.png": "no dates",
    "plots/eval_classes.csv": "shares of deterministic samples",
    "plots/samples.png": "a copy of grid.png",
    "plots/train_loss.csv": "losses of a deterministic run",
    "plots/train_loss.png": "no dates",
}
TIMINGS = {  # keys that hold wall-clock measurements; everything else in these files is identical
    "metrics/codebook.json": CODEBOOK_TIMINGS,
    "metrics/decoder.json": {"decoder_minutes"},
    "info/decoder.json": {"eval_minutes"},
    "metrics/reference.json": {"reference_minutes", "reference_images_per_s"},
    "metrics/reconstruct.json": {"reconstruct_minutes"},
    "metrics/train.json": {"train_tokens_per_s", "train_minutes"},
}
# the training skeleton (core/training.py) records each run's wall-clock `seconds` in its checkpoint
CHECKPOINTS_TIMED = {"data/checkpoints/decoder/last.pt": {"seconds"}, "data/checkpoints/gpt/last.pt": {"seconds"}}
NOT_BYTE_IDENTICAL = {
    **{path: f"wall-clock timings {sorted(keys)}" for path, keys in TIMINGS.items()},
    **{
        path: "torch.save writes a random serialization id into every file"
        + (f"; and wall-clock timings {sorted(keys)}" if keys else "")
        for path, keys in CHECKPOINTS_TIMED.items()
    },
}


# ---- the end-to-end battery on the tiny profile, with the real dvc ---------------------------------------


def cache_object(repo: Path, md5: str) -> Path:
    return repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def cache_objects(repo: Path) -> set[str]:
    root = repo / ".dvc" / "cache" / "files" / "md5"
    return {p.parent.name + p.name for p in root.rglob("*") if p.is_file()}


def recorded(repo: Path) -> tuple[set[str], set[str]]:
    """(every output file dvc.lock records, every cache object it references), directories expanded."""
    files, objects = set(), set()
    for stage in yaml.safe_load((repo / "dvc.lock").read_text())["stages"].values():
        for out in stage.get("outs", []):
            objects.add(out["md5"])
            if out["md5"].endswith(".dir"):
                for entry in json.loads(cache_object(repo, out["md5"]).read_text()):
                    files.add(f"{out['path']}/{entry['relpath']}")
                    objects.add(entry["md5"])
            else:
                files.add(out["path"])
    return files, objects


def assert_clean(repo: Path, cache_before: set[str], stage: str) -> None:
    """Up to date; nothing under data/ that dvc.lock does not record; no new cache object it does not use."""
    assert "up to date" in run(["dvc", "status", stage], cwd=repo).stdout
    assert not temporaries(repo)
    files, objects = recorded(repo)
    assert {p.relative_to(repo).as_posix() for p in (repo / "data").rglob("*") if p.is_file()} == {
        f for f in files if f.startswith("data/")
    }
    assert cache_objects(repo) - cache_before <= objects


def dvc_killed_at(point: str, args: list[str], repo: Path) -> None:
    """`dvc <args>`, killed -9 (dvc and the stage) at `point` ("<file name>:<before|after>" its rename)."""
    python_path = os.pathsep.join(filter(None, [str(KILL_HOOK), os.environ.get("PYTHONPATH")]))
    env = venv_env() | {"KILL_AT": point, "PYTHONPATH": python_path}
    proc = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, start_new_session=True)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point}:\n{proc.stdout}\n{proc.stderr}"


@requires_real_weights
def test_kill_9_during_extract_then_repro_completes_and_leaves_nothing(tiny_pipeline, tmp_path, torch_home):
    repo = copy_run(tiny_pipeline[0], tmp_path / "repo")
    write_params(repo, repo / "params.yaml", extract={"batch_size": 60})  # never run before: dvc must run it
    cache_before = cache_objects(repo)
    dvc_killed_at("features.h5:before", ["repro", "extract"], repo)
    assert [Path(t).parent.as_posix() for t in temporaries(repo)] == ["data/features"]  # killed mid-write
    dvc_killed_at("features.h5:after", ["repro", "extract"], repo)  # output in place, not recorded
    assert not temporaries(repo)
    run(["dvc", "repro", "extract"], cwd=repo)
    assert_clean(repo, cache_before, "extract")


@requires_real_weights
def test_kill_9_during_train_then_repro_completes_and_leaves_nothing(tiny_pipeline, tmp_path, torch_home):
    repo = copy_run(tiny_pipeline[0], tmp_path / "repo")
    write_params(repo, repo / "params.yaml", train={"seed": 1})
    cache_before = cache_objects(repo)
    dvc_killed_at("last.pt:before", ["repro", "train"], repo)  # while the checkpoint is written
    assert [Path(t).parent.as_posix() for t in temporaries(repo)] == [GPT_CHECKPOINTS.as_posix()]
    dvc_killed_at("last.pt:after", ["repro", "train"], repo)  # last epoch saved, outputs not written
    dvc_killed_at("gpt:before", ["repro", "train"], repo)  # resumed at the end, killed writing the model
    assert [Path(t).parent.as_posix() for t in temporaries(repo)] == ["data/models"]
    run(["dvc", "repro", "train"], cwd=repo)
    assert_clean(repo, cache_before, "train")


@requires_real_weights
def test_which_outputs_are_byte_identical_across_reruns(tiny_pipeline, tmp_path, torch_home):
    first_run = tiny_pipeline[0]
    again = copy_run(first_run, tmp_path / "again")
    for folder in ("data/checkpoints/decoder", "data/checkpoints/gpt"):
        shutil.rmtree(again / folder)  # from scratch, not resumed
    run(["dvc", "repro", "--force", "--no-run-cache"], cwd=again)
    files, _ = recorded(first_run)
    assert files == set(BYTE_IDENTICAL) | set(NOT_BYTE_IDENTICAL)  # every output is classified
    differ = {f for f in files if (first_run / f).read_bytes() != (again / f).read_bytes()}
    # the byte-identical ones are; the others may differ (rounded timings can coincide by chance)
    assert not differ & set(BYTE_IDENTICAL), sorted(differ & set(BYTE_IDENTICAL))
    for path, keys in TIMINGS.items():
        first, second = (json.loads((repo / path).read_text()) for repo in (first_run, again))
        assert {k: v for k, v in first.items() if k not in keys} == {k: v for k, v in second.items() if k not in keys}
    for path, keys in CHECKPOINTS_TIMED.items():
        first, second = (torch.load(repo / path, weights_only=True) for repo in (first_run, again))
        for key in keys:
            first.pop(key), second.pop(key)
        assert_same_state(first, second)


def assert_same_state(a, b) -> None:
    """Nested checkpoint contents equal (tensors bit for bit)."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b
