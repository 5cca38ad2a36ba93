"""dvc.yaml must list, for every stage, exactly the project code that stage runs.

A stage's code is its module under stages/ plus every project module it imports, transitively. A module
missing from `deps` would let DVC skip a stage whose code changed; an extra one re-runs it needlessly.
"""

import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PACKAGES = ("pipeline", "stages")
SHARED_CLI = {"stages/__init__.py", "stages/paths.py"}  # every stage's entry point; not per-stage code


def module_file(name: str) -> str | None:
    path = Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if (REPO / candidate).is_file():
            return candidate.as_posix()
    return None


def imports_of(rel: str) -> set[str]:
    tree = ast.parse((REPO / rel).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from pipeline import x`
    files = {module_file(n) for n in names if n.split(".")[0] in PACKAGES}
    if rel.endswith("__init__.py") is False and "/" in rel:
        parent = module_file(rel.rsplit("/", 1)[0].replace("/", "."))  # importing a.b runs a/__init__.py
        files.add(parent)
    return {f for f in files if f}


def code_of(stage: str) -> set[str]:
    todo, seen = [f"stages/{stage}.py"], set()
    while todo:
        rel = todo.pop()
        if rel not in seen:
            seen.add(rel)
            todo += imports_of(rel) - seen
    return seen - SHARED_CLI - {"pipeline/__init__.py"}


@pytest.mark.parametrize("stage", list(DVC))
def test_deps_list_exactly_the_code_a_stage_runs(stage):
    declared = {d for d in DVC[stage]["deps"] if d.endswith(".py")}
    needed = code_of(stage)
    assert not needed - declared, f"{stage}: add to deps {sorted(needed - declared)}"
    assert not declared - needed, f"{stage}: deps list code it does not run {sorted(declared - needed)}"


def test_every_stage_is_a_cli_subcommand():
    main = (REPO / "stages/__main__.py").read_text()
    for stage in DVC:
        assert f"from stages import {stage}" in main
