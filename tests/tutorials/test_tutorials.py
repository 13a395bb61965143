"""Every tutorial notebook runs top to bottom on the default model."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = sorted((Path(__file__).parents[2] / "tutorials").glob("*.ipynb"))
MODEL = "shapes-llava"
"""The shipped default model; the tutorials must show its real effects (``MMLENS_MODEL`` overrides)."""


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MMLENS_CACHE", str(tmp_path))
    monkeypatch.setenv("MMLENS_MODEL", os.environ.get("MMLENS_MODEL", MODEL))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    book = nbformat.read(path, as_version=4)
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
