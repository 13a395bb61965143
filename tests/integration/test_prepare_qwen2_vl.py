"""``prepare`` on Qwen2-VL: ids, pixels and ``image_grid_thw`` equal to ``Qwen2VLProcessor``'s with its
chat template, token groups, and the ``ImageGrid`` of the resized, 2×2-merged patch grid checked
against Hugging Face's patch order and by painting a box and running the real processor
(docs/methods.md#box-to-patches)."""

from __future__ import annotations

import pytest
import torch
import transformers
from PIL import Image, ImageDraw
from transformers.vision_utils import get_vision_position_ids

from mmlens import HookedVLM
from mmlens.geometry import BASE, ResizedGeometry
from mmlens.zoo.tiny_qwen_vl import save_tiny_qwen_vl

# (width, height): square; wide; very wide; tall; over the pixel budget (shrunk); under it (grown).
SIZES = [(40, 40), (70, 30), (100, 30), (30, 64), (66, 70), (12, 20)]
QUESTIONS = ["Is the circle red?", "Which shape is left of the square?"]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    path = save_tiny_qwen_vl(tmp_path_factory.mktemp("qwen2_vl"))
    return HookedVLM.from_pretrained(str(path)), transformers.Qwen2VLForConditionalGeneration.from_pretrained(path).eval()


def reference(processor, images, questions):
    """``Qwen2VLProcessor`` on its chat template's prompts."""
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                                           add_generation_prompt=True) for q in questions]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def test_inputs_match_the_processor_and_hugging_face(family):
    model, hf = family
    images = [Image.effect_noise(size, 60).convert("RGB") for size in SIZES[1:3]]
    inputs = model.prepare(images, QUESTIONS, template="qwen2_vl")
    ref = reference(model.processor, images, QUESTIONS)
    for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw"):
        assert torch.equal(getattr(inputs, key), ref[key]), key
    with torch.no_grad():
        ours = model(inputs)
        theirs = hf(**ref).logits
    valid = inputs.attention_mask.bool()
    torch.testing.assert_close(ours[valid], theirs[valid], atol=1e-4, rtol=0)
    # One row alone (its run of packed patches) gives that row's logits.
    with torch.no_grad():
        alone = model(inputs.row(1))
    torch.testing.assert_close(alone[0][valid[1]], ours[1][valid[1]], atol=1e-4, rtol=0)


def test_token_groups(family):
    model, _ = family
    inputs = model.prepare([Image.new("RGB", s) for s in SIZES[1:3]], QUESTIONS, template="qwen2_vl")
    tok = model.processor.tokenizer
    groups = inputs.groups
    for r, question in enumerate(QUESTIONS):
        ids = inputs.input_ids[r]
        assert tok.decode(ids[groups["question"][r]]).replace(" ", "") == question.replace(" ", "")
        assert tok.convert_ids_to_tokens(ids[groups["image_start"][r]].tolist()) == ["<|vision_start|>"]
        assert tok.convert_ids_to_tokens(ids[groups["image_end"][r]].tolist()) == ["<|vision_end|>"]
        assert torch.equal(groups["image"][r], ids == model.vlm_cfg.image_token_index)
        assert tok.convert_ids_to_tokens(ids[groups["last"][r]].tolist()) == ["assistant"]
        assert not (groups["system"][r] & (groups["image_start"][r] | groups["image"][r])).any()


@pytest.mark.parametrize("size", SIZES, ids=str)
def test_token_coordinates_follow_hugging_face_patch_order(family, size):
    """Every image token's (row, col) is that of its 2×2 patches in Hugging Face's packed order."""
    model, _ = family
    inputs = model.prepare(Image.new("RGB", size), QUESTIONS[0], template="qwen2_vl")
    geometry = inputs.image_grid.views[0]
    grid = inputs.image_grid_thw
    assert isinstance(geometry, ResizedGeometry)
    assert (geometry.resized_height, geometry.resized_width) == tuple(int(v) * 4 for v in grid[0, 1:])
    hw = get_vision_position_ids(grid, 2).view(-1, 4, 2)  # [token, its 4 patches, (row, col)]
    image = inputs.groups["image"][0]
    row, col = inputs.image_grid.row[0, image], inputs.image_grid.col[0, image]
    assert torch.equal(hw[:, :, 0].amin(1), 2 * row) and torch.equal(hw[:, :, 1].amin(1), 2 * col)
    assert (inputs.image_grid.kind[0, image] == BASE).all()


BOXES = [(0.2, 0.3, 0.55, 0.7), (0.0, 0.0, 0.3, 0.25), (0.6, 0.45, 1.0, 1.0)]  # fractions of (w, h, w, h)


@pytest.mark.parametrize("size", SIZES, ids=str)
def test_patches_in_box_agree_with_a_painted_box(family, size):
    """Paint the box red, run the real processor, merge per-patch flags as the merger does (every 4
    consecutive packed patches form one token): every token with a clearly red pixel must be
    related, and every related token must have changed at all (resampling blurs the edge)."""
    model, _ = family
    w, h = size
    ip = model.processor.image_processor
    mean, std = torch.tensor(ip.image_mean)[:, None, None, None], torch.tensor(ip.image_std)[:, None, None, None]

    def pixels(img):  # packed rows [n_patches, 3 * 2 * 4 * 4] → [n_patches, 3, 2, 4, 4] in 0..1
        return reference(model.processor, [img], QUESTIONS[:1])["pixel_values"].view(-1, 3, 2, 4, 4) * std + mean

    blank = Image.new("RGB", (w, h))
    clean = pixels(blank)
    for fx0, fy0, fx1, fy1 in BOXES:
        box = (round(fx0 * w), round(fy0 * h), round(fx1 * w), round(fy1 * h))
        img = blank.copy()
        ImageDraw.Draw(img).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 0, 0))
        px = pixels(img)
        red = ((px[:, 0] > 0.5) & (px[:, 1] < 0.3)).flatten(1).any(-1)
        changed = ((px - clean).abs() > 1e-4).flatten(1).any(-1)
        strict, loose = red.view(-1, 4).any(-1), changed.view(-1, 4).any(-1)
        inputs = model.prepare(img, QUESTIONS[0], template="qwen2_vl")
        ours = inputs.patches_in_box(box)[0, inputs.groups["image"][0]]
        assert strict.any()
        assert not (strict & ~ours).any(), (size, box, "painted tokens missed")
        assert not (ours & ~loose).any(), (size, box, "unpainted tokens marked")
