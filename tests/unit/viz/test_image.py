"""Patch heat maps land on the right pixels of the original image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmlens import HookedVLM
from mmlens.viz import heat_to_image, patch_heat, plot_image_attention


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
    fig = plot_image_attention(inputs, Image.new("RGB", (64, 32)), values)
    assert len(fig.axes) == 1
