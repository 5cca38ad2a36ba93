"""dvc.yaml must list, for every stage, exactly the project code that stage runs (`hashing.stage_code`).

A stage's code is its module under stages/ plus every project module it imports, transitively. A module
missing from `deps` would let DVC skip a stage whose code changed; an extra one re-runs it needlessly.
The same file list is hashed into every training checkpoint, so the two notions of "the code" agree.
"""

import pytest
import yaml
from conftest import REPO

from pipeline.core.hashing import stage_code

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(DVC))
def test_deps_list_exactly_the_code_a_stage_runs(stage):
    declared = {d for d in DVC[stage]["deps"] if d.endswith(".py")}
    needed = set(stage_code(stage))
    assert not needed - declared, f"{stage}: add to deps {sorted(needed - declared)}"
    assert not declared - needed, f"{stage}: deps list code it does not run {sorted(declared - needed)}"


def test_every_stage_is_a_cli_subcommand():
    main = (REPO / "stages/__main__.py").read_text()
    for stage in DVC:
        assert f"from stages import {stage}" in main
