"""The code is linted and formatted by ruff with the settings in pyproject.toml (`make test` runs this).

To fix a finding: `ruff check --fix . && ruff format .` from the checkout (ruff is in requirements.txt)."""

import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff_finds_nothing(command):
    proc = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, f"ruff {' '.join(command)}:\n{proc.stdout}{proc.stderr}"
