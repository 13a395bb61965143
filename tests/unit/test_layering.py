"""The package layering in pyproject.toml ([tool.importlinter]) holds: no import points upward."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def lint_imports(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -e '.[dev]' (it installs import-linter)")
    return subprocess.run([exe, "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_way_import_breaks_the_contract(tmp_path):
    """The contract is live: a copy of the package with one upward import fails it."""
    shutil.copytree(ROOT / "mmlens", tmp_path / "mmlens", ignore=shutil.ignore_patterns("checkpoints", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "mmlens" / "config.py", "a") as f:
        f.write("\n\ndef _upward():\n    from mmlens.models.vlm import HookedVLM  # noqa: F401\n")
    result = subprocess.run(
        [shutil.which("lint-imports") or "lint-imports", "--no-cache"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent)},
    )
    assert result.returncode != 0, result.stdout
    assert "mmlens.config is not allowed to import mmlens.models" in result.stdout, result.stdout
