"""Every tutorial notebook runs top to bottom on the default model, and its saved outputs are what
a reader should see: no warnings or progress bars, each figure once, views that work offline."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = sorted((Path(__file__).parents[2] / "tutorials").glob("*.ipynb"))
MODEL = "shapes-llava"
"""The shipped default model; the tutorials must show its real effects (``MMLENS_MODEL`` overrides)."""

REMOTE = re.compile(r"""((src|href)\s*=\s*(["']|&quot;|&#x27;)?|import\(\s*["'])(https?:)?//""", re.IGNORECASE)
"""A script, style or image fetched from elsewhere (a view must work with no network)."""


def problems(book) -> list[str]:
    """What a reader should not see in a notebook's outputs."""
    found = []
    for i, cell in enumerate(c for c in book.cells if c.cell_type == "code"):
        outputs = cell.get("outputs", [])
        for o in outputs:
            if o.output_type == "error":
                found.append(f"code cell {i}: error {o.get('ename')}")
            if o.output_type == "stream" and o.name == "stderr":
                found.append(f"code cell {i}: stderr {o.text[:80]!r}")
            html = o.get("data", {}).get("text/html", "")
            if REMOTE.search(html):
                found.append(f"code cell {i}: HTML output loads a remote resource")
        figures = sum("image/png" in o.get("data", {}) for o in outputs)
        if figures > 1:
            found.append(f"code cell {i}: {figures} figures (each figure once)")
    return found


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_saved_outputs_are_clean(path):
    book = nbformat.read(path, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{path.name} is saved unexecuted: run it with nbclient"
    assert not problems(book)


def test_circuit_view_tutorial_embeds_offline_views():
    book = nbformat.read(Path(__file__).parents[2] / "tutorials" / "08_circuit_view.ipynb", as_version=4)
    views = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if "mmlens-root" in o.get("data", {}).get("text/html", "")]
    assert len(views) == 3  # attention, Grad-CAM and saliency views, each self-contained


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MMLENS_CACHE", str(tmp_path))
    monkeypatch.setenv("MMLENS_MODEL", os.environ.get("MMLENS_MODEL", MODEL))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    book = nbformat.read(path, as_version=4)
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert not problems(book)
