"""The notebook front door runs headlessly (nbclient) on the tiny profile, as a user would run it.

PRESET is set to "cpu", so the run also goes through `make repro`'s CPU path (repro.py ->
`dvc exp run -S ...` with presets/cpu.args on top of the tiny params): DVC must record the preset's
values as the params that made the outputs.
"""

import json

import nbformat
import yaml
from conftest import REPO, copy_run, venv_env
from nbclient import NotebookClient

from pipeline.params import preset_overrides
from repro import plan

NOTEBOOK = REPO / "notebooks" / "cifar10_image_gpt.ipynb"


def with_parameters(nb: nbformat.NotebookNode, source: str) -> nbformat.NotebookNode:
    """`nb` with a cell running `source` right after the cell tagged `parameters` (papermill's convention)."""
    (index,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    return nb


def test_make_repro_runs_the_cpu_preset_without_cuda_and_the_default_with_it():
    cpu, gpu = plan("auto", cuda=False), plan("auto", cuda=True)
    assert cpu.preset == "cpu" and cpu.command[:3] == ["dvc", "exp", "run"]
    pairs = list(zip(cpu.command[3::2], cpu.command[4::2]))
    assert pairs and all(flag == "-S" for flag, _ in pairs) and len(cpu.command[3:]) == 2 * len(pairs)
    assert gpu.preset == "gpu" and gpu.command == ["dvc", "repro"]
    assert plan("gpu", cuda=False).command == gpu.command and plan("cpu", cuda=True).command == cpu.command


def test_notebook_runs_the_pipeline_and_shows_its_outputs(tiny_pipeline, tmp_path, monkeypatch, torch_home):
    tiny_project = copy_run(tiny_pipeline[0], tmp_path / "repo")  # extract and codebook are reused from it
    # The preset's evaluation sizes (samples, reference images) exceed the tiny profile's few hundred
    # images: the copy's preset keeps the model and training lines, which are what it changes.
    preset = tiny_project / "presets/cpu.args"
    sized = ("-S sample.", "-S reference.", "-S reconstruct.", "-S evaluate.")
    preset.write_text(
        "".join(line for line in preset.read_text().splitlines(keepends=True) if not line.startswith(sized))
    )
    monkeypatch.setenv("PATH", venv_env()["PATH"])  # the kernel's `python` and `dvc`: this interpreter's venv
    nb = with_parameters(nbformat.read(NOTEBOOK, as_version=4), 'PRESET = "cpu"')
    where = {"metadata": {"path": str(tiny_project / "notebooks")}}  # Jupyter starts a kernel in its notebook's folder
    NotebookClient(nb, timeout=900, kernel_name="python3", resources=where).execute()

    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # codebook usage, reconstructions, loss curve, samples
    assert json.loads((tiny_project / "metrics/eval.json").read_text())["test_nll"] > 0
    # DVC recorded the CPU preset's values, layered on the tiny profile, as the params of the outputs
    locked = yaml.safe_load((tiny_project / "dvc.lock").read_text())["stages"]
    for section, values in preset_overrides(preset).items():
        recorded = locked[section]["params"]["params.yaml"][section]
        assert recorded | values == recorded
