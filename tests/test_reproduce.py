"""The user's reproduction workflow, end to end, with the real `git` and `dvc` binaries.

In a temporary repository made from the project, on a tiny synthetic profile: `dvc repro` the whole
pipeline and `dvc push` to the default local remote; in a fresh clone `dvc pull` reproduces every
artifact without running a stage; `dvc exp run -S train...` re-runs only train and what follows it;
`dvc repro --pull` in another fresh clone reaches the same state.
"""

import re
import subprocess

import yaml

from conftest import copy_run, requires_inception, requires_real_weights, run

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
STAGES = ["download", "reference", "extract", "codebook", "decoder", "reconstruct", "train", "sample", "evaluate"]


def ran(output: str) -> set[str]:
    """Names of the stages DVC actually ran in `output`."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def clone(src, dest):
    subprocess.run(["git", "clone", "-q", str(src), str(dest)], check=True)
    return dest


@requires_real_weights
@requires_inception
def test_push_pull_and_selective_rerun(tiny_pipeline, tmp_path, torch_home):
    base, first = tiny_pipeline  # `dvc repro` of the whole pipeline in a fresh copy of the project
    assert ran(first) == set(STAGES)
    repo = copy_run(base, tmp_path / "repo")
    run(["dvc", "push"], cwd=repo)
    assert (tmp_path / "dvc-storage").is_dir()  # the default remote, next to the clone
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "tiny run"], cwd=repo, check=True)

    # A fresh clone gets every artifact from the remote and has nothing to run.
    fresh = clone(repo, tmp_path / "fresh")
    run(["dvc", "pull"], cwd=fresh)
    status = run(["dvc", "status"], cwd=fresh).stdout
    assert "up to date" in status, status
    assert ran(run(["dvc", "repro"], cwd=fresh).stdout) == set()
    for artifact in ["data/samples/grid.png", "data/samples/samples.h5", "data/models/gpt/model.safetensors"]:
        assert (fresh / artifact).read_bytes() == (repo / artifact).read_bytes(), artifact
    assert yaml.safe_load((fresh / "metrics/eval.json").read_text()) == yaml.safe_load((repo / "metrics/eval.json").read_text())

    # Changing a train param re-runs train and what depends on it, nothing upstream.
    exp = run(["dvc", "exp", "run", "-S", "train.lr=0.001"], cwd=fresh).stdout
    assert ran(exp) == {"train", "sample", "evaluate"}, exp

    # `dvc repro --pull` in another fresh clone pulls instead of running.
    other = clone(repo, tmp_path / "other")
    assert ran(run(["dvc", "repro", "--pull"], cwd=other).stdout) == set()
    assert "up to date" in run(["dvc", "status"], cwd=other).stdout
    assert (other / "data/samples/grid.png").read_bytes() == (repo / "data/samples/grid.png").read_bytes()
