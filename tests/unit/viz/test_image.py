"""Patch heat maps land on the right pixels of the original image, on a colour scale the figure states."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmlens import HookedVLM, MMLensError
from mmlens.viz.image import heat_panels, heat_to_image, overlay, patch_heat, plot_image_attention


@pytest.fixture(scope="module")
def model(checkpoint_factory):
    return HookedVLM.from_pretrained(checkpoint_factory())


def test_heat_follows_the_patch_geometry(model):
    # 64x32 padded to 64x64 (16 px above), resized to 32: each 8-px patch is 16 original px.
    inputs = model.prepare(Image.new("RGB", (64, 32)), "Is there a star?")
    values = torch.zeros(inputs.input_ids.shape[1])
    image_pos = inputs.groups.positions("image")
    target = image_pos[(inputs.image_grid.row[0, image_pos] == 1) & (inputs.image_grid.col[0, image_pos] == 2)]
    values[target] = 1.0
    heat = patch_heat(inputs, values)
    assert heat.shape == (4, 4) and heat[1, 2] == 1 and heat.sum() == 1
    px = heat_to_image(inputs, heat)
    assert px.shape == (32, 64)
    ys, xs = np.nonzero(px)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (0, 15, 32, 47)
    fig = plot_image_attention(inputs, Image.new("RGB", (64, 32)), values * 0.3)
    panel, bar = fig.axes  # the picture and its colour bar
    assert bar.get_ylabel() == "attention" and panel.images[1].norm.vmax == pytest.approx(0.3)


def _heat_image(ax):
    """The heat layer of a panel (drawn over the picture)."""
    return ax.images[1]


def _opacity(ax, value):
    im = _heat_image(ax)
    return float(im.get_cmap()(im.norm(value))[3]) * (1 if im.get_alpha() is None else im.get_alpha())


IMAGE = Image.new("RGB", (8, 6), "white")


def test_panels_share_one_colour_scale_and_one_colour_bar():
    weak, strong = np.full((6, 8), 0.01), np.zeros((6, 8))
    strong[2:4, 2:5] = 0.99
    fig = heat_panels(IMAGE, [weak, strong], ["head 0", "head 1"], label="attention")
    panels, bars = fig.axes[:2], fig.axes[2:]
    assert len(bars) == 1 and bars[0].get_ylabel() == "attention"
    assert [_heat_image(ax).norm.vmax for ax in panels] == [pytest.approx(0.99)] * 2
    # Opacity follows value / shared maximum: the 0.01 head stays almost transparent.
    assert _opacity(panels[0], 0.01) == pytest.approx(0.8 * 0.01 / 0.99, abs=0.004)
    assert _opacity(panels[1], 0.99) == pytest.approx(0.8) and _opacity(panels[1], 0.0) == 0
    assert [ax.get_title() for ax in panels] == ["head 0", "head 1"]


def test_per_panel_scales_are_labelled_as_such():
    weak, strong = np.full((6, 8), 0.01), np.full((6, 8), 0.5)
    fig = heat_panels([IMAGE, IMAGE], [weak, strong], ["a", "b"], scale="panel")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["a (own scale)", "b (own scale)"]
    assert [_heat_image(ax).norm.vmax for ax in panels] == [pytest.approx(0.01), pytest.approx(0.5)]
    assert len(fig.axes) == 4 and "own colour scale" in fig._suptitle.get_text()  # one bar per panel
    with_zero = heat_panels(IMAGE, [weak, np.zeros((6, 8))], ["a", "b"], scale="panel")
    assert len(with_zero.axes) == 3  # no colour bar for a panel with nothing on it


def test_an_all_zero_panel_says_so_and_paints_nothing():
    fig = heat_panels(IMAGE, [np.zeros((6, 8)), np.full((6, 8), 0.2)], ["empty", "full"])
    empty, full = fig.axes[:2]
    assert [t.get_text() for t in empty.texts] == ["all zero"] and _opacity(empty, 0.2) == 0
    assert not full.texts
    alone = overlay(IMAGE, np.zeros((6, 8)), title="x")
    assert [t.get_text() for t in alone.axes[0].texts] == ["all zero"]


def test_signed_maps_use_a_symmetric_diverging_scale():
    heat = np.zeros((6, 8))
    heat[0, 0], heat[1, 1] = -0.4, 0.1
    im = _heat_image(overlay(IMAGE, heat).axes[0])
    assert (im.norm.vmin, im.norm.vmax) == (pytest.approx(-0.4), pytest.approx(0.4))
    assert im.get_cmap().name == "RdBu_r_fading" and im.get_cmap()(0.5)[3] == pytest.approx(0, abs=0.01)


def test_a_panel_drawn_into_given_axes_without_a_scale_says_own_scale():
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    overlay(IMAGE, np.full((6, 8), 0.3), ax=ax, title="layer 1")
    assert ax.get_title() == "layer 1 (own scale)"
    ax2 = Figure().subplots()
    overlay(IMAGE, np.full((6, 8), 0.3), ax=ax2, title="layer 1", vmax=1.0)
    assert ax2.get_title() == "layer 1" and _heat_image(ax2).norm.vmax == 1.0


def test_bad_heat_panel_arguments():
    with pytest.raises(MMLensError, match="scale must be one of"):
        heat_panels(IMAGE, [np.zeros((6, 8))], ["a"], scale="own")
    with pytest.raises(MMLensError, match="one title per map"):
        heat_panels(IMAGE, [np.zeros((6, 8))], ["a", "b"])
