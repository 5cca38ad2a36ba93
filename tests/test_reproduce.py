"""The user's reproduction workflow, end to end, with the real `git` and `dvc` binaries.

In a temporary repository made from the project, on a tiny synthetic profile: `dvc repro` the whole
pipeline and `dvc push` to the default local remote; in a fresh clone `dvc pull` reproduces every
artifact without running a stage; `dvc exp run -S train...` re-runs only train and what follows it;
`dvc repro --pull` in another fresh clone reaches the same state.
"""

import re
import subprocess

import h5py
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
    assert yaml.safe_load((fresh / "metrics/eval.json").read_text()) == yaml.safe_load(
        (repo / "metrics/eval.json").read_text()
    )

    # Changing a train param re-runs train and what depends on it, nothing upstream.
    exp = run(["dvc", "exp", "run", "-S", "train.lr=0.001"], cwd=fresh).stdout
    assert ran(exp) == {"train", "sample", "evaluate"}, exp

    # `dvc repro --pull` in another fresh clone pulls instead of running.
    other = clone(repo, tmp_path / "other")
    assert ran(run(["dvc", "repro", "--pull"], cwd=other).stdout) == set()
    assert "up to date" in run(["dvc", "status"], cwd=other).stdout
    assert (other / "data/samples/grid.png").read_bytes() == (repo / "data/samples/grid.png").read_bytes()


@requires_real_weights
@requires_inception
def test_two_codes_per_cell_run_end_to_end(tiny_pipeline, tmp_path, torch_home):
    """codebook.codes_per_cell = 2 (residual quantisation) re-runs the codebook and everything after it; the
    second code lowers the quantisation error and every later stage reads and writes 2 x 8 x 8 tokens."""
    repo = copy_run(tiny_pipeline[0], tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["codebook"]["codes_per_cell"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(run(["dvc", "repro"], cwd=repo).stdout) == set(STAGES[3:])
    metrics = {
        name: yaml.safe_load((repo / f"metrics/{name}.json").read_text()) for name in ("codebook", "decoder", "eval")
    }
    info = {name: yaml.safe_load((repo / f"info/{name}.json").read_text()) for name in ("codebook", "decoder")}
    assert metrics["codebook"]["rel_quant_error_test"] < metrics["codebook"]["rel_quant_error_test_first_code"]
    assert info["codebook"]["tokens_per_image"] == info["decoder"]["tokens_per_image"] == 128
    with h5py.File(repo / "data/samples/samples.h5") as f:
        tokens, k = f["tokens"][()], int(f.attrs["k"])
    assert tokens.shape[1] == 128 and k == 2 * params["codebook"]["k"]
    assert metrics["eval"]["test_bits_per_image"] > 0 and metrics["eval"]["sample_fid"] > 0
