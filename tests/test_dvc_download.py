"""`dvc repro download` end to end with the real dvc binary, in a fresh copy of the repository."""

import h5py
import yaml
from conftest import copy_repo, run, write_npz


def test_dvc_repro_download_then_nothing_to_do(tmp_path, repo_params):
    repo = copy_repo(tmp_path / "repo")
    npz = write_npz(tmp_path / "cifar_small.npz", n_train=40, n_test=10)
    repo_params["download"].update(source=str(npz), expect_train=40, expect_test=10, val_size=10)
    (repo / "params.yaml").write_text(yaml.safe_dump(repo_params, sort_keys=False))

    run(["dvc", "repro", "download"], cwd=repo)
    with h5py.File(repo / "data/raw/cifar10.h5") as f:
        assert f["train/images"].shape == (30, 32, 32, 3) and f["val/images"].shape == (10, 32, 32, 3)
        assert f["test/labels"].shape == (10,)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["download"]["params"]["params.yaml"]["download"]["source"] == str(npz)

    again = run(["dvc", "repro", "download"], cwd=repo)
    assert "didn't change, skipping" in again.stdout and "Running stage" not in again.stdout

    repo_params["download"]["expect_test"] = 11
    (repo / "params.yaml").write_text(yaml.safe_dump(repo_params, sort_keys=False))
    failed = run(["dvc", "repro", "download"], cwd=repo, check=False)
    assert failed.returncode != 0 and "10 images, expected 11" in failed.stdout + failed.stderr
