"""The offline HTML views: token labels, the stored attention and values (checked against the
model's cache), patch boxes on the model's input square, size, Jupyter display and errors."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mmlens import HookedVLM, MMLensError
from mmlens.viz.attention_view import View, attention_view, position_view, token_labels


def view_data(view: View) -> tuple[dict, np.ndarray]:
    """The JSON payload of a view and its values decoded from float16 (as view.js does)."""
    text = re.search(r'<script type="application/json" id="mmlens-data">(.*?)</script>', view.html, re.S).group(1)
    payload = json.loads(text.replace("<\\/", "</"))
    return payload, np.frombuffer(base64.b64decode(payload["data"]), dtype="<f2").astype(np.float32)


@pytest.fixture(scope="module")
def model(checkpoint_factory):
    return HookedVLM.from_pretrained(checkpoint_factory())


def test_attention_view_labels_image_tokens_by_patch(model):
    inputs = model.prepare(Image.new("RGB", (32, 32)), "Is there a star?")
    labels = token_labels(model, inputs)
    image = inputs.groups.positions("image").tolist()
    assert [labels[i] for i in image[:5]] == ["img(0,0)", "img(0,1)", "img(0,2)", "img(0,3)", "img(1,0)"]
    assert labels[-2:] == ["ASSISTANT", ":"]
    assert '"n":"img(3,3)"' in str(attention_view(model, inputs, layers=[1]))


def test_stored_attention_is_the_cached_pattern_of_every_text_query(model):
    inputs = model.prepare(Image.new("RGB", (32, 32), "red"), "Is there a star?")
    payload, data = view_data(attention_view(model, inputs, layers=[0, 2]))
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_pattern"))
    text = (~inputs.groups["image"][0]).nonzero().flatten()
    expected = torch.stack([cache["pattern", l][0][:, text] for l in (0, 2)]).numpy()  # [layer, head, q, k]
    assert payload["layers"] == [0, 2] and payload["heads"] == model.cfg.n_heads
    assert payload["queries"] == text.tolist()  # no padding: view index = position
    np.testing.assert_allclose(data.reshape(expected.shape), expected, rtol=1e-3, atol=1e-4)
    kinds = [p["k"] for p in payload["pos"]]
    assert kinds[0] == "special" and payload["pos"][0]["t"] == "<s>"  # BOS shown, in a box
    assert kinds.count("img") == 16 and set(kinds) == {"special", "text", "img"}


def test_patches_tile_the_model_input_square_with_pad_margins(model):
    """64x32 padded to 64x64: the model square extends 16 px above and below the picture."""
    inputs = model.prepare(Image.new("RGB", (64, 32)), "Is there a star?")
    payload, _ = view_data(attention_view(model, inputs, layers=[0]))
    (panel,) = payload["panels"]
    assert panel["img"] == [0.0, 0.25, 1.0, 0.5]  # picture rectangle inside the square
    assert panel["w"] == panel["h"]
    boxes = {p["n"]: p["b"] for p in payload["pos"] if p["k"] == "img"}
    assert boxes["img(0,0)"] == [0.0, 0.0, 0.25, 0.25] and boxes["img(2,3)"] == [0.75, 0.5, 1.0, 0.75]


def test_padded_batch_rows_drop_their_padding(model):
    inputs = model.prepare([Image.new("RGB", (32, 32))] * 2, ["Is there a star?", "Is there a big red star here?"])
    pad = int((inputs.attention_mask[0] == 0).sum())
    assert pad > 0
    payload, data = view_data(attention_view(model, inputs, layers=[1], row=0))
    assert [p["i"] for p in payload["pos"]] == list(range(pad, inputs.input_ids.shape[1]))
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter="blocks.1.attn.hook_pattern")
    last = cache["pattern", 1][0, :, -1, pad:].numpy()
    np.testing.assert_allclose(data.reshape(model.cfg.n_heads, len(payload["queries"]), -1)[:, -1], last, atol=1e-3)


def test_position_view_stores_the_values_per_row(model):
    inputs = model.prepare(Image.new("RGB", (32, 32)), "Is there a star?")
    values = torch.linspace(-1, 1, 3 * inputs.input_ids.shape[1]).reshape(3, -1)
    view = position_view(model, inputs, values, names=["a", "b", "c"], value_name="effect")
    payload, data = view_data(view)
    assert payload["mode"] == "values" and payload["rows"] == ["a", "b", "c"] and payload["signed"]
    np.testing.assert_allclose(data.reshape(3, -1), values.numpy(), atol=1e-3)
    one, _ = view_data(position_view(model, inputs, values[1].abs()))
    assert one["rows"] == ["layer 0"] and not one["signed"]


def test_views_are_offline_files_and_show_in_jupyter(model, tmp_path):
    inputs = model.prepare(Image.new("RGB", (32, 32)), "Is there a star?")
    view = attention_view(model, inputs)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", view.html)
    assert "<script src" not in view.html and "fetch(" not in view.html and "XMLHttpRequest" not in view.html
    assert view.save(tmp_path / "v.html").read_text() == view.html
    shown = view._repr_html_()
    assert shown.startswith("<iframe srcdoc=") and "<script" not in shown  # escaped inside srcdoc


def test_every_layer_of_the_shipped_model_fits_in_3_mb():
    from mmlens.data.shapes import make_sample
    from mmlens.inputs import sample_inputs

    model = HookedVLM.from_pretrained("shapes-llava")
    sample = make_sample(0, "ChooseAttr")
    view = attention_view(model, sample_inputs(model, sample, "vicuna_v1"), image=sample.load_image())
    payload, _ = view_data(view)
    assert payload["layers"] == list(range(model.cfg.n_layers))
    assert len(view.html.encode()) < 3_000_000


def test_bad_arguments_name_the_fix(model):
    inputs = model.prepare(Image.new("RGB", (32, 32)), "Is there a star?")
    with pytest.raises(MMLensError, match="not decoder layers"):
        attention_view(model, inputs, layers=[7])
    with pytest.raises(MMLensError, match="one value per position"):
        position_view(model, inputs, torch.zeros(5))
    with pytest.raises(MMLensError, match="one name per row"):
        position_view(model, inputs, torch.zeros(2, inputs.input_ids.shape[1]), names=["a"])
    with pytest.raises(MMLensError, match="NaN"):
        position_view(model, inputs, torch.full((inputs.input_ids.shape[1],), float("nan")))
