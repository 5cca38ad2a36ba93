"""Comparing runs: numbers-only metrics files, compare.py in 80 columns, and a study run through DVC's queue.

The tiny study (two variants x two seeds of the tiny profile's GPT) runs for real: `studies/study.py run`
queues four `dvc exp run`s and runs the queue; `table` turns the finished experiments into the Markdown and
CSV table, the curves, the sample rows and a figure per variant; a second `run` queues nothing.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from statistics import mean

import pytest
import yaml
from conftest import REPO, copy_run, run

from pipeline.core.results import Results, is_number

STUDY = {
    "name": "tiny",
    "title": "Tiny study",
    "page": "docs/tiny_study.md",
    "target": "evaluate",
    "shared": ["train.epochs=2"],
    "variants": {"l1": ["train.n_layer=1"], "l2": ["train.n_layer=2"]},
    "seeds": {"param": "train.seed", "values": [0, 1]},
    "decide": ["val_bits_per_image"],
    "report": ["test_bits_per_image", "sample_fid"],
    "curve": {"file": "plots/train_loss.csv", "x": "epoch", "y": "val_loss", "label": "validation NLL"},
    "figure": "plots/reconstructions.png",
}
NAMES = ["tiny-l1-s0", "tiny-l1-s1", "tiny-l2-s0", "tiny-l2-s1"]


def test_results_refuse_words_among_the_metrics():
    assert Results({"fid": 1.5, "dead_codes": 0}, {"device": "cpu"}).metrics["fid"] == 1.5
    for bad in ("cpu", True, None, float("nan"), {"nested": 1.0}):
        with pytest.raises(TypeError, match="move these to info"):
            Results({"x": bad})


def test_every_metrics_file_holds_numbers_only_under_names_unique_across_files(tiny_pipeline):
    repo = tiny_pipeline[0]
    declared = yaml.safe_load((repo / "dvc.yaml").read_text())["metrics"]
    seen: dict[str, str] = {}
    for path in declared:
        metrics = json.loads((repo / path).read_text())
        assert metrics and all(is_number(v) for v in metrics.values()), path
        for key in metrics:
            assert key not in seen, f"{key} in {path} and {seen.get(key)}"
            seen[key] = path
        assert (repo / "info" / Path(path).name).is_file()  # its words: device, protocol, counts


def committed_copy(tiny_pipeline, dest: Path) -> Path:
    """The tiny pipeline's repository with its run committed: experiments branch off HEAD."""
    repo = copy_run(tiny_pipeline[0], dest)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "the tiny run"], cwd=repo, check=True)
    return repo


def test_a_study_runs_through_the_queue_and_becomes_its_table(tiny_pipeline, tmp_path, torch_home):
    repo = committed_copy(tiny_pipeline, tmp_path / "repo")
    (repo / "studies" / "specs").mkdir(exist_ok=True)
    (repo / "studies/specs/tiny.yaml").write_text(yaml.safe_dump(STUDY))
    (repo / "docs/tiny_study.md").write_text("# Tiny\n\n<!-- study:tiny -->\nold\n<!-- /study:tiny -->\nafter\n")

    out = run([sys.executable, "studies/study.py", "run", "studies/specs/tiny.yaml"], cwd=repo).stdout
    assert "4 of 4 runs queued" in out
    again = run([sys.executable, "studies/study.py", "run", "studies/specs/tiny.yaml"], cwd=repo).stdout
    assert "0 of 4 runs queued" in again  # resumable: finished runs are not queued again

    run([sys.executable, "studies/study.py", "table", "studies/specs/tiny.yaml"], cwd=repo)
    shown = run([sys.executable, "compare.py", "--csv", *NAMES], cwd=repo).stdout
    runs = {r["experiment"]: r for r in csv.DictReader(shown.splitlines())}
    dotted = {c for c in shown.splitlines()[0].split(",") if "." in c}
    assert dotted == {"train.n_layer", "train.seed"}  # the differing params once each, none among the metrics
    assert sorted(runs) == NAMES and {runs[n]["train.n_layer"] for n in NAMES} == {"1", "2"}
    with open(repo / "docs/studies/tiny.csv") as f:
        table = {r["variant"]: r for r in csv.DictReader(f)}
    for variant, layers in (("l1", "1"), ("l2", "2")):
        mine = [float(r["val_bits_per_image"]) for r in runs.values() if r["train.n_layer"] == layers]
        assert table[variant]["seeds"] == "2"
        assert float(table[variant]["val_bits_per_image_mean"]) == pytest.approx(mean(mine))
        assert float(table[variant]["sample_fid_max"]) >= float(table[variant]["sample_fid_min"])
    markdown = (repo / "docs/studies/tiny.md").read_text()
    assert "val_bits_per_image (decides)" in markdown and "python studies/study.py table" in markdown
    page = (repo / "docs/tiny_study.md").read_text()
    assert "old" not in page and "| l2 | `train.n_layer=2` | 2 |" in page and page.endswith("after\n")
    assert "](studies/tiny_curves.png)" in page and "](tiny_curves.png)" in markdown
    for png in ("tiny_curves.png", "tiny_samples.png", "tiny_figures.png"):
        assert (repo / "docs/studies" / png).read_bytes()[:4] == b"\x89PNG"

    # dvc plots diff of two runs: the loss curves of both on one chart, their sample grids side by side
    plots = json.loads(run(["dvc", "plots", "diff", "tiny-l1-s0", "tiny-l2-s0", "--json"], cwd=repo).stdout)["data"]
    curve = next(v for k, v in plots.items() if k.startswith("GPT NLL per epoch"))
    assert [p["revisions"] for p in curve] == [["tiny-l1-s0", "tiny-l2-s0"]]
    assert [p["revisions"] for p in plots["plots/samples.png"]] == [["tiny-l1-s0"], ["tiny-l2-s0"]]

    table80 = run([sys.executable, "compare.py", "tiny-l1-s0", "tiny-l2-s0"], cwd=repo).stdout
    assert max(map(len, table80.splitlines())) <= 80
    assert "val NLL bits/img" in table80 and "train.n_layer" in table80 and "tiny-l2-s0" in table80


def test_every_study_file_is_valid_and_its_page_holds_its_block(monkeypatch):
    monkeypatch.chdir(REPO)  # specs name their preset and page from the project root
    monkeypatch.syspath_prepend(str(REPO / "studies"))
    import study

    specs = sorted((REPO / "studies/specs").glob("*.yaml"))
    assert specs
    for path in specs:
        spec = study.load_spec(path)
        study.check_params(spec, path)  # every run's overrides name real params with valid values
        assert spec.page and f"<!-- study:{spec.name} -->" in Path(spec.page).read_text(), path


def test_a_study_file_with_a_bad_override_fails_before_queueing(tiny_pipeline, tmp_path):
    repo = committed_copy(tiny_pipeline, tmp_path / "repo")
    bad = STUDY | {"variants": {"l1": ["train.n_layers=1"]}}
    (repo / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = run([sys.executable, "studies/study.py", "run", "bad.yaml"], cwd=repo, check=False)
    assert proc.returncode == 2 and "tiny-l1-s0" in proc.stderr and "train.n_layers" in proc.stderr
    assert "queued" not in proc.stdout
