"""Heat maps of anyres inputs (LLaVA-NeXT, LLaVA-OneVision) land on the original image: values
painted through every image position's pixel box, base view and tiles together."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmlens import HookedVLM, MMLensError
from mmlens.viz import heat_to_image, patch_heat, plot_image_attention, position_heat_to_image
from tests.integration.test_prepare_anyres import _next, _onevision

# (family, (width, height), box): a wide and a tall image per family.
CASES = [
    ("next", (70, 40), (10, 8, 30, 20)),
    ("next", (30, 64), (5, 30, 20, 50)),
    ("onevision-shrunk", (90, 35), (50, 5, 80, 25)),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    for family in ("next", "onevision-shrunk"):
        path = tmp_path_factory.mktemp(family)
        processor = _next(path) if family == "next" else _onevision(path, "anyres_max_1")
        out[family] = HookedVLM.from_pretrained(str(path), processor=processor)
    return out


def _prepare(model, size):
    return model.prepare(Image.effect_noise(size, 60).convert("RGB"), "is there a star ?", template="llava_hf")


@pytest.mark.parametrize(("family", "size", "box"), CASES)
def test_a_box_heat_is_hot_inside_the_box_and_cold_far_from_it(models, family, size, box):
    inputs = _prepare(models[family], size)
    grid = inputs.image_grid
    values = inputs.patches_in_box(box)[0].float()
    assert grid.base_patches()[0][values.bool()].any() and grid.tile_patches()[0][values.bool()].any()
    px = position_heat_to_image(inputs, values)
    assert px.shape == (size[1], size[0])
    x0, y0, x1, y1 = box
    np.testing.assert_array_equal(px[y0:y1, x0:x1], 1.0)
    # A marked patch overlaps the box, so it reaches at most one patch extent beyond it.
    extent = torch.nan_to_num(grid.boxes[0, :, 2:] - grid.boxes[0, :, :2]).max(0).values.numpy()
    ys, xs = np.mgrid[: size[1], : size[0]] + 0.5
    far = (xs < x0 - extent[0]) | (xs > x1 + extent[0]) | (ys < y0 - extent[1]) | (ys > y1 + extent[1])
    assert far.any()
    np.testing.assert_array_equal(px[far], 0.0)


@pytest.mark.parametrize(("family", "size"), [("next", (68, 40)), ("next", (32, 64))])
def test_the_base_view_alone_matches_the_affine_upsampling(models, family, size):
    """Painting base-view boxes equals undoing the base view's resize (sizes with no pixel centre
    on a patch edge, where the two roundings could differ)."""
    inputs = _prepare(models[family], size)
    values = torch.rand(inputs.input_ids.shape[1], generator=torch.Generator().manual_seed(0))
    expected = heat_to_image(inputs, patch_heat(inputs, values))
    np.testing.assert_array_equal(position_heat_to_image(inputs, values, views="base"), expected)
    base = inputs.image_grid.base_patches()[0]
    g = models[family].vlm_cfg.vision.grid
    assert patch_heat(inputs, values).reshape(-1).tolist() == values[base].reshape(g * g).tolist()


def test_base_view_and_tiles_both_contribute(models):
    inputs = _prepare(models["next"], (30, 64))  # a 2x1 tile grid that covers the whole image
    grid = inputs.image_grid
    both = position_heat_to_image(inputs, grid.base_patches()[0].float() + 3 * grid.tile_patches()[0].float())
    np.testing.assert_allclose(both, 2.0)  # mean of 1 (base) and 3 (tile) at every pixel
    newline = position_heat_to_image(inputs, grid.newline_slots()[0].float() * 100)
    np.testing.assert_array_equal(newline, 0.0)


def test_attention_overlay_and_bad_views(models):
    inputs = _prepare(models["next"], (70, 40))
    with torch.no_grad():
        _, cache = models["next"].run_with_cache(inputs, names_filter="blocks.1.attn.hook_pattern")
    fig = plot_image_attention(inputs, Image.new("RGB", (70, 40)), cache["pattern", 1][0, :, -1].mean(0))
    assert len(fig.axes) == 2  # the overlay and its colour bar
    with pytest.raises(MMLensError, match="views must be one of"):
        position_heat_to_image(inputs, torch.zeros(inputs.input_ids.shape[1]), views="tile")


def test_attention_view_labels_base_view_tiles_and_newlines(models):
    from mmlens.viz import attention_view, token_labels

    model = models["next"]
    # 30x64 (w x h) picks the 64x32 (h x w) pinpoint: 2x1 tiles of 4x4 patches, nothing un-padded,
    # so after the 4x4 base view the tile grid is 8 rows of 4 patches, each row closed by a newline.
    inputs = _prepare(model, (30, 64))
    labels = token_labels(model, inputs)
    image = inputs.groups.positions("image").tolist()
    expected = [f"base({r},{c})" for r in range(4) for c in range(4)]
    for r in range(8):
        expected += [f"t{r // 4}({r % 4},{c})" for c in range(4)] + ["nl"]
    assert [labels[i] for i in image] == expected
    assert labels[-1] == ":" and labels[image[0] - 1] not in expected
    html = str(attention_view(model, inputs, layers=[1]))
    assert '"n":"t1(3,3)"' in html and '"n":"base(0,0)"' in html


def test_the_view_draws_base_view_tiles_and_newline_slots_as_the_model_sees_them(models):
    from mmlens.viz.attention_view import attention_view
    from mmlens.viz.view_layout import GUTTER
    from tests.unit.viz.test_attention_view import view_data

    # 30x64: a 4x4 base view of the whole image, then 2x1 tiles = 8 rows of 4 patches + newline.
    inputs = _prepare(models["next"], (30, 64))
    payload, _ = view_data(attention_view(models["next"], inputs, layers=[0]))
    assert [p["name"] for p in payload["panels"]] == ["base view", "tiles"]
    assert payload["panels"][1]["img"] == [0.0, 0.0, pytest.approx(1 / (1 + GUTTER), abs=1e-4), 1.0]
    image = {p["n"]: p for p in payload["pos"] if p["k"] in ("img", "nl")}
    assert image["base(1,2)"]["p"] == 0 and image["base(1,2)"]["b"] == [0.5, 0.25, 0.75, 0.5]
    w = 1 / (1 + GUTTER)  # tile patches fill the picture part of the tile panel
    tile = next(p for p in payload["pos"] if p["n"] == "t1(2,3)")
    box = inputs.image_grid.boxes[0, tile["i"]].numpy()  # its pixels in the 30x64 image
    assert tile["p"] == 1 and box[2] == 30
    np.testing.assert_allclose(tile["b"], [box[0] / 30 * w, 6 / 8, w, 7 / 8], atol=1e-4)
    newlines = [p["b"] for p in payload["pos"] if p["k"] == "nl"]
    assert len(newlines) == 8  # one beside each row of the tile grid, right of the picture
    np.testing.assert_allclose([(b[1], b[3]) for b in newlines], [(r / 8, (r + 1) / 8) for r in range(8)], atol=1e-4)
    assert all(b[0] > w and b[2] == 1.0 for b in newlines)


def test_labels_of_a_shrunk_onevision_grid(models):
    from mmlens.viz import token_labels

    inputs = _prepare(models["onevision-shrunk"], (90, 35))
    grid = inputs.image_grid
    labels = token_labels(models["onevision-shrunk"], inputs)
    tiles = grid.tile_patches()[0].nonzero().flatten().tolist()
    assert tiles and all(labels[i].startswith("tiles(") for i in tiles)
    assert {labels[i] for i in grid.newline_slots()[0].nonzero().flatten().tolist()} == {"nl"}
