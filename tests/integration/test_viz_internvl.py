"""``attention_view`` / ``position_view`` on InternVL (tiles plus thumbnail): the thumbnail and the
tiles are drawn as two panels, every token's box is its 2×2 patches' pixel box from
``inputs.image_grid``, and the drawn picture is the row's own thumbnail."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from mmlens import HookedVLM
from mmlens.geometry import BASE, TILE, TiledGeometry
from mmlens.viz.attention_view import attention_view, position_view
from mmlens.zoo.tiny import save_tiny_checkpoint, tiny_internvl_config
from tests.unit.viz.test_attention_view import view_data

# Row 0: 70x30, a 1x2 tile grid plus the thumbnail; row 1: square, a single tile (no thumbnail).
SIZES = [(70, 30), (30, 30)]
COLOURS = [(220, 20, 20), (20, 20, 220)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("internvl-view"), tiny_internvl_config())
    model = HookedVLM.from_pretrained(str(path))
    images = [Image.new("RGB", s, c) for s, c in zip(SIZES, COLOURS)]
    return model, model.prepare(images, ["Is the circle red?", "Is there a blue star?"])


def _drawn_boxes(payload, extent):
    """Drawn boxes back in original-image pixels, per position: (panel, box)."""
    w, h = extent
    return {p["i"]: (p["p"], np.array(p["b"]) * [w, h, w, h]) for p in payload["pos"] if p["k"] == "img"}


def _panel_colour(panel) -> np.ndarray:
    png = Image.open(io.BytesIO(base64.b64decode(panel["png"]))).convert("RGB")
    return np.asarray(png).reshape(-1, 3).mean(0)


def test_tiles_and_thumbnail_are_drawn_at_their_image_grid_boxes(setup):
    model, inputs = setup
    grid = inputs.image_grid
    view = grid.views[0]
    assert isinstance(view, TiledGeometry) and (view.rows, view.cols) == (1, 2)
    payload, _ = view_data(attention_view(model, inputs, layers=[0], row=0))
    assert [p["name"] for p in payload["panels"]] == ["thumbnail", "tiles"]
    assert all(p["img"] == [0.0, 0.0, 1.0, 1.0] for p in payload["panels"])  # both panels show the whole image
    drawn = _drawn_boxes(payload, SIZES[0])
    image = grid.image_index[0] >= 0
    assert sorted(drawn) == image.nonzero().flatten().tolist()  # every image token is drawn, nothing else
    kinds = grid.kind[0]
    assert {int(kinds[i]) for i in drawn} == {BASE, TILE}
    for i, (panel, box) in drawn.items():
        assert panel == (0 if int(kinds[i]) == BASE else 1)
        np.testing.assert_allclose(box, grid.boxes[0, i].numpy(), atol=1e-3)
    # The tiles split the image in two halves; the thumbnail covers all of it.
    tiles = np.stack([b for p, b in drawn.values() if p == 1])
    thumb = np.stack([b for p, b in drawn.values() if p == 0])
    for boxes in (tiles, thumb):
        np.testing.assert_allclose([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()],
                                   [0, 0, *SIZES[0]], atol=1e-3)
    labels = {p["i"]: p["n"] for p in payload["pos"]}
    first_tile = int(((kinds == TILE) & (grid.tile[0] == 1)).nonzero()[0])
    assert labels[first_tile] == "t1(0,0)" and labels[int((kinds == BASE).nonzero()[0])] == "base(0,0)"


def test_a_single_tile_image_is_one_panel_and_each_row_draws_its_own_thumbnail(setup):
    model, inputs = setup
    payload, _ = view_data(attention_view(model, inputs, layers=[0], row=1))
    (panel,) = payload["panels"]
    drawn = _drawn_boxes(payload, SIZES[1])
    grid = inputs.image_grid
    assert len(drawn) == int((grid.image_index[1] >= 0).sum()) == 4
    for i, (p, box) in drawn.items():
        assert p == 0
        np.testing.assert_allclose(box, grid.boxes[1, i].numpy(), atol=1e-3)
    # Row 1's picture is its own blue image (its view comes after row 0's three), row 0's its red one.
    blue, red = _panel_colour(panel), _panel_colour(view_data(attention_view(model, inputs, layers=[0]))[0]["panels"][0])
    assert blue[2] > 150 > blue[0] and red[0] > 150 > red[2]


def test_position_view_draws_the_same_layout(setup):
    model, inputs = setup
    values = torch.arange(inputs.input_ids.shape[1], dtype=torch.float32)
    payload, data = view_data(position_view(model, inputs, values, row=0))
    assert _drawn_boxes(payload, SIZES[0]).keys() == _drawn_boxes(view_data(attention_view(model, inputs, layers=[0]))[0],
                                                                   SIZES[0]).keys()
    keep = inputs.attention_mask[0].bool()
    np.testing.assert_allclose(data, values[keep].numpy(), rtol=1e-3)
