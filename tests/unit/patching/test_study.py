"""patching_study and ``mmlens patch`` on the shipped shapes model: regions, skips, resumption."""

from __future__ import annotations

import pytest
import torch

from mmlens import HookedVLM
from mmlens.data.shapes import shapes_dataset
from mmlens.inputs import sample_inputs
from mmlens.patching import activation_patch
from mmlens.studies.patching import corrupt_sample, patch_sample, patching_study, regions


@pytest.fixture(scope="module")
def shapes():
    return HookedVLM.from_pretrained("shapes-llava")


@pytest.fixture(scope="module")
def query():
    return shapes_dataset(1, seed=0, types=["QueryAttr"])[0]


def test_regions_cover_exactly_the_changed_pixels_the_question_and_the_last_position(shapes, query):
    edited, boxes = corrupt_sample(query, "recolour")
    clean, bad = sample_inputs(shapes, query), sample_inputs(shapes, edited)
    where = regions(clean, boxes)
    image = clean.groups["image"][0]
    # Independent: the image tokens whose pixel patch changed (recolour touches the object's pixels only).
    ps = shapes.vlm_cfg.vision.patch_size
    img_pos = image.nonzero().flatten().tolist()
    changed = []
    for p in img_pos:
        r, c = int(clean.image_grid.row[0, p]), int(clean.image_grid.col[0, p])
        cut = (0, slice(None), slice(r * ps, (r + 1) * ps), slice(c * ps, (c + 1) * ps))
        if not torch.equal(clean.pixel_values[cut], bad.pixel_values[cut]):
            changed.append(p)
    assert changed and all(where[p] == "object" for p in changed)
    assert {p for p, r in enumerate(where) if r in ("object", "image")} == set(img_pos)
    assert where[-1] == "last" and [r == "question" for r in where[:-1]] == clean.groups["question"][0][:-1].tolist()


def test_rows_are_activation_patch_values_tagged_by_sample_and_region(shapes, query):
    frame, why = patch_sample(shapes, query, "recolour", ["resid_pre"])
    assert why is None
    edited, _ = corrupt_sample(query, "recolour")
    direct = activation_patch(shapes, sample_inputs(shapes, query), sample_inputs(shapes, edited))
    torch.testing.assert_close(torch.tensor(frame["value"].to_numpy(), dtype=torch.float32), direct.values.flatten())
    assert set(frame["sample"]) == {query.id} and set(frame["corrupt"]) == {"recolour"}
    # The story of a colour question: the last position restores the answer in the top layers.
    top = frame[(frame["layer"] == shapes.cfg.n_layers - 1)].set_index("region")["value"]
    assert top["last"] > 0.5


def test_a_corruption_that_keeps_the_answer_is_skipped_with_its_reason(shapes, query):
    frame, why = patch_sample(shapes, query, "move", ["resid_pre"])  # a colour question: moving keeps the colour
    assert len(frame) == 0 and "unchanged" in why
    assert len(patching_study(shapes, [query], "move", progress=False).frame) == 0


def test_head_sites_are_refused(shapes, query):
    from mmlens.errors import MMLensError

    with pytest.raises(MMLensError, match="position site"):
        patch_sample(shapes, query, "recolour", ["z"])


@pytest.mark.slow
def test_cli_patch_writes_its_files_and_resumes_without_recomputing(tmp_path, monkeypatch):
    from mmlens import cli
    from mmlens.studies import patching

    argv = ["patch", "--types", "QueryAttr", "--n", "1", "--hook", "resid_pre", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {"patching.csv", "per_region.csv", "skipped.csv", "patching.png", "example_resid_pre.png", "summary.md"} <= set(files)
    assert "Region restoring most per layer" in files["summary.md"].decode()

    def boom(*args, **kwargs):
        raise AssertionError("a committed sample was recomputed")

    monkeypatch.setattr(patching, "patch_sample", boom)
    assert cli.main(argv) == 0
    assert (tmp_path / "patching.csv").read_bytes() == files["patching.csv"]
