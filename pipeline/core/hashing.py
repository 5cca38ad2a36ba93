"""Content hashes: of files (provenance attributes, resume fingerprints) and of a stage's own code.

A stage's code is its module under stages/ plus every project module it imports, transitively: exactly
the `.py` deps that dvc.yaml lists for it (tests/test_dvc_yaml.py keeps the two equal). Its hash makes
a training checkpoint belong to one version of the code.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: pipeline/ and stages/ live here
PACKAGES = ("pipeline", "stages")
CLI_FILES = {"stages/__init__.py", "pipeline/__init__.py", "pipeline/paths.py"}  # every stage's shared entry


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _module_file(name: str) -> str | None:
    path = Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if (ROOT / candidate).is_file():
            return candidate.as_posix()
    return None


def _imports_of(rel: str) -> set[str]:
    """Project files that `rel` imports (absolute imports only; importing a.b also runs a/__init__.py)."""
    names = set()
    for node in ast.walk(ast.parse((ROOT / rel).read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from pipeline.x import module`
    files = {_module_file(n) for n in names if n.split(".")[0] in PACKAGES}
    parts = rel.split("/")[:-1]
    files |= {_module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)}
    return {f for f in files if f and f != rel}


@cache
def stage_code(stage: str) -> frozenset[str]:
    """The project files (relative to the checkout) that `python -m stages <stage>` runs."""
    todo, seen = [f"stages/{stage}.py"], set()
    while todo:
        rel = todo.pop()
        if rel not in seen:
            seen.add(rel)
            todo += _imports_of(rel) - seen
    return frozenset(seen - CLI_FILES)


def code_sha256(stage: str) -> str:
    """One hash over the stage's code files (path and content)."""
    h = hashlib.sha256()
    for rel in sorted(stage_code(stage)):
        h.update(f"{rel}\0{sha256_file(ROOT / rel)}\n".encode())
    return h.hexdigest()
