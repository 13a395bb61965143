"""Counterfactual inputs: only the intended pixels or tokens change, and misaligned pairs are refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from mmlens import HookedVLM
from mmlens.data.shapes import COLOUR_RGB, make_sample
from mmlens.patching import (
    CounterfactualError,
    ImageLayoutMismatchError,
    TokenLengthMismatchError,
    blur_box,
    check_aligned,
    fill_box,
    image_pair,
    move,
    noise_box,
    recolour,
    remove,
    swap,
    text_pair,
)


def _changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return (np.array(a) != np.array(b)).any(-1)


def _inside(mask: np.ndarray, box) -> bool:
    x0, y0, x1, y1 = box
    outside = mask.copy()
    outside[y0:y1, x0:x1] = False
    return not outside.any()


def test_recolour_changes_only_the_objects_pixels_to_the_new_colour():
    sample = make_sample(3, "QueryAttr")
    corrupt, change = recolour(sample, colour="red")
    diff = _changed(sample.load_image(), corrupt.load_image())
    assert diff.any() and _inside(diff, change.old_box)
    assert (np.array(corrupt.load_image())[diff] == COLOUR_RGB["red"]).all()
    assert (change.object, change.old, change.new) == ("square", "blue", "red")
    assert {o["shape"]: o["colour"] for o in corrupt.meta["objects"]}["square"] == "red"
    with pytest.raises(CounterfactualError, match="other than"):
        recolour(sample, colour="blue")
    with pytest.raises(CounterfactualError, match="no 'hexagon'"):
        recolour(sample, shape="hexagon")


def test_move_remove_and_swap_keep_the_object_pixels():
    sample = make_sample(3, "QueryAttr")
    before = np.array(sample.load_image())
    moved, change = move(sample)
    after = np.array(moved.load_image())
    (x0, y0, x1, y1), (u0, v0, u1, v1) = change.old_box, change.new_box
    patch = before[y0:y1, x0:x1]
    assert (after[v0:v1, u0:u1] == patch).all() and moved.boxes["square"] == change.new_box
    assert _inside(_changed(sample.load_image(), moved.load_image()), change.old_box) is False  # it left its box
    gone, change = remove(sample)
    assert (np.array(gone.load_image())[y0:y1, x0:x1] == 0).all()
    assert _inside(_changed(sample.load_image(), gone.load_image()), change.old_box)
    swapped, change = swap(make_sample(7, "ChooseAttr"))
    assert _changed(make_sample(7, "ChooseAttr").load_image(), swapped.load_image()).any()
    with pytest.raises(CounterfactualError, match="cannot move"):
        move(sample, to=(60, 60))


def test_image_edits_stay_inside_the_box():
    image = make_sample(0).load_image()
    box = (10, 12, 30, 40)
    for edited in (fill_box(image, box, (1, 2, 3)), blur_box(image, box), noise_box(image, box, seed=1)):
        diff = _changed(image, edited)
        assert diff.any() and _inside(diff, box)
    with pytest.raises(CounterfactualError, match="inside"):
        fill_box(image, (0, 0, 100, 10))


@pytest.fixture(scope="module")
def shapes_model():
    return HookedVLM.from_pretrained("shapes-llava")


def test_text_and_image_pairs_line_up(shapes_model):
    sample = make_sample(3, "QueryAttr")
    clean, corrupt = text_pair(shapes_model, sample.load_image(), sample.question, "square", "circle")
    differ = check_aligned(clean, corrupt, edited=clean.groups["edited"])
    assert differ.sum() == 1 and torch.equal(differ, clean.groups["edited"])
    with pytest.raises(TokenLengthMismatchError, match="1 token"):
        text_pair(shapes_model, sample.load_image(), sample.question, "square", "red square")
    other = recolour(sample)[0].load_image()
    a, b = image_pair(shapes_model, sample.load_image(), other, sample.question)
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.pixel_values, b.pixel_values)


def test_check_aligned_names_what_differs(shapes_model):
    sample = make_sample(3, "QueryAttr")
    clean = shapes_model.prepare(sample.load_image(), sample.question)
    moved = dataclasses.replace(clean.image_grid, image_index=clean.image_grid.image_index.roll(1, -1))
    with pytest.raises(ImageLayoutMismatchError, match="image occupies"):
        check_aligned(clean, dataclasses.replace(clean, image_grid=moved))
    flipped = dataclasses.replace(clean.image_grid, col=clean.image_grid.col.flip(-1))
    with pytest.raises(ImageLayoutMismatchError, match="patch layouts differ"):
        check_aligned(clean, dataclasses.replace(clean, image_grid=flipped))
