"""The circuitsvis view labels image tokens by their patch."""

from __future__ import annotations

from PIL import Image

from mmlens import HookedVLM
from mmlens.viz import attention_view, token_labels


def test_attention_view_labels_image_tokens_by_patch(checkpoint_factory):
    model = HookedVLM.from_pretrained(checkpoint_factory())
    inputs = model.prepare(Image.new("RGB", (32, 32)), "Is there a star?")
    labels = token_labels(model, inputs)
    image = inputs.groups.positions("image").tolist()
    assert [labels[i] for i in image[:5]] == ["img(0,0)", "img(0,1)", "img(0,2)", "img(0,3)", "img(1,0)"]
    assert labels[-2:] == ["ASSISTANT", ":"]
    html = str(attention_view(model, inputs, layer=1))
    assert "img(3,3)" in html
