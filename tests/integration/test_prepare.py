"""``model.prepare``: token groups and box → patch mapping on a real processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mmlens import EmptyTokenGroupError, HookedVLM, ImageTokenMismatchError, MissingImageSlotError, UnknownNameError


@pytest.fixture(scope="module")
def model(checkpoint_factory):
    return HookedVLM.from_pretrained(checkpoint_factory())


def words(model, inputs, name, row=0):
    ids = inputs.input_ids[row, inputs.groups.positions(name, row)]
    return model.processor.tokenizer.convert_ids_to_tokens(ids.tolist())


def test_vicuna_groups_match_a_hand_count(model):
    inputs = model.prepare(Image.new("RGB", (32, 32)), "Is the circle red or blue?")
    g = inputs.groups
    system = ["<s>", "A", "chat", "between", "a", "curious", "user", "and", "an", "artificial", "intelligence",
              "assistant", ".", "The", "assistant", "gives", "helpful", ",", "detailed", ",", "and", "polite",
              "answers", "to", "the", "user", "'", "s", "questions", ".", "USER", ":"]
    assert words(model, inputs, "system") == system
    assert g.positions("image").tolist() == list(range(len(system), len(system) + 16))
    assert words(model, inputs, "question") == ["Is", "the", "circle", "red", "or", "blue", "?"]
    assert words(model, inputs, "user") == ["Is", "the", "circle", "red", "or", "blue", "?", "ASSISTANT", ":"]
    assert g.positions("last").tolist() == [inputs.input_ids.shape[1] - 1]
    # system, image and user partition the prompt.
    assert torch.equal(g["system"] | g["image"] | g["user"], inputs.attention_mask.bool())


def test_groups_survive_left_padding_and_combine(model):
    img = Image.new("RGB", (32, 32))
    inputs = model.prepare([img, img], ["What colour is the square?", "Is there a star?"],
                           template="llava_hf", mark={"object": ["square", "star"]})
    g = inputs.groups
    assert inputs.attention_mask[1].sum() < inputs.attention_mask[0].sum()
    assert words(model, inputs, "question", 1) == ["Is", "there", "a", "star", "?"]
    assert words(model, inputs, "object", 0) == ["square"] and words(model, inputs, "object", 1) == ["star"]
    assert (g["last"].sum(-1) == 1).all() and g["last"][:, -1].all()
    assert words(model, inputs, "system", 1) == ["<s>", "USER", ":"]
    assert not (g["question"] & ~g["user"]).any()
    # Padded prompts give the unpadded logits at their real positions.
    with torch.no_grad():
        batched = model(inputs)
        alone = model(model.prepare(img, "Is there a star?", template="llava_hf"))
    n = int(inputs.attention_mask[1].sum())
    torch.testing.assert_close(batched[1, -n:], alone[0], atol=1e-5, rtol=0)


def test_patches_in_box_pad_geometry(model):
    # 48x32 image padded to 48x48 (8 px above), resized to 32: 2/3 model px per original px.
    inputs = model.prepare(Image.new("RGB", (48, 32)), "Is there a star?")
    mask = inputs.patches_in_box((5, 12, 20, 30))  # model x 3.3..13.3, y 13.3..25.3 → cols 0-1, rows 1-3
    rows, cols = inputs.image_grid.row[mask], inputs.image_grid.col[mask]
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    assert not (mask & ~inputs.groups["image"]).any()
    # Model rows span original y = 1.5*[0,8,16,24,32] - 8 → row 0 covers y < 4: real pixels, no padding-only row.
    assert inputs.image_grid.padding_patches().sum() == 0
    wide = model.prepare(Image.new("RGB", (64, 16)), "Is there a star?")  # 24 px of padding above and below
    pad_rows = wide.image_grid.row[wide.image_grid.padding_patches()]
    assert sorted(set(pad_rows.tolist())) == [0, 3]


def test_patches_in_box_agree_with_a_painted_box(model):
    """The reference paints the box red, runs the image through the processor, and looks for red."""
    for size, template, box in [((48, 32), "vicuna_v1", (5, 12, 20, 30)), ((64, 48), "llava_hf", (20, 5, 41, 27))]:
        img = Image.new("RGB", size)
        ImageDraw.Draw(img).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 0, 0))
        inputs = model.prepare(img, "Is there a star?", template=template)
        ip = model.processor.image_processor
        px = inputs.pixel_values[0].permute(1, 2, 0).numpy() * np.array(ip.image_std) + np.array(ip.image_mean)
        red = (px[..., 0] > 0.5) & (px[..., 1] < 0.3)
        painted = red.reshape(4, 8, 4, 8).any(axis=(1, 3))
        mask = inputs.patches_in_box(box)
        ours = np.zeros((4, 4), dtype=bool)
        ours[inputs.image_grid.row[mask], inputs.image_grid.col[mask]] = True
        assert (ours == painted).all(), (size, ours, painted)


def test_bad_inputs_raise_clear_errors(model):
    img = Image.new("RGB", (32, 32))
    with pytest.raises(MissingImageSlotError, match="exactly once"):
        model.prepare(img, "USER: no image here ASSISTANT:", template=None)
    inputs = model.prepare(img, "Is there a star?")
    with pytest.raises(ImageTokenMismatchError, match="give 16 features"):
        keep = torch.ones(inputs.input_ids.shape[1], dtype=torch.bool)
        keep[inputs.groups.positions("image")[:3]] = False
        model(input_ids=inputs.input_ids[:, keep], pixel_values=inputs.pixel_values)
    with pytest.raises(UnknownNameError, match="question"):
        inputs.groups["questoin"]
    with pytest.raises(EmptyTokenGroupError, match="row"):
        inputs.groups.require(inputs.groups["image"] & inputs.groups["user"])


def test_prompt_text_marks_question_and_options(model):
    from mmlens.prompts import PromptText

    text = PromptText.build([("Is the circle red or blue?", "question"), ("\nOptions:", None), (" red", "options"),
                             (" blue", "options"), ("\nAnswer with one word.", None)])
    inputs = model.prepare(Image.new("RGB", (32, 32)), text)
    assert words(model, inputs, "question") == ["Is", "the", "circle", "red", "or", "blue", "?"]
    assert words(model, inputs, "options") == ["red", "blue"]
    assert words(model, inputs, "user")[-2:] == ["ASSISTANT", ":"]
