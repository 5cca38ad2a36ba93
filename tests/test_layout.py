"""The library's packages form layers: a package imports only from itself and the layers below it.

core  <  data  <  features  <  evaluation  <  tokenizer  <  gpt   (params, paths, hints: read by all but core)
"""

import ast

from conftest import REPO

LAYERS = ["core", "data", "features", "evaluation", "tokenizer", "gpt"]


def _package_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (REPO / "pipeline").rglob("*.py"):
        parts = path.relative_to(REPO / "pipeline").parts
        if len(parts) < 2:  # pipeline/params.py, pipeline/__init__.py
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline."):
                found.setdefault(parts[0], set()).add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("pipeline."):
                        found.setdefault(parts[0], set()).add(alias.name.split(".")[1])
    return found


def test_every_package_has_a_layer():
    packages = {p.name for p in (REPO / "pipeline").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages == set(LAYERS)


def test_no_package_imports_a_layer_above_it():
    for package, imported in _package_imports().items():
        allowed = set(LAYERS[: LAYERS.index(package) + 1]) | {"params", "paths", "hints"}  # the top-level modules
        assert imported <= allowed, f"pipeline/{package} imports {sorted(imported - allowed)}, a layer above it"


def test_core_imports_no_other_package():
    assert _package_imports()["core"] <= {"core"}
