"""``prepare`` on InternVL: ids and pixels equal to ``InternVLProcessor``'s with its chat template,
token groups, and the ``ImageGrid`` of tiles + thumbnail + pixel shuffle checked against Hugging
Face's own tiling and pixel shuffle, and by painting a box and running the real processor
(docs/methods.md#box-to-patches)."""

from __future__ import annotations

import pytest
import torch
import transformers
from PIL import Image, ImageDraw

from mmlens import HookedVLM
from mmlens.geometry import BASE, TILE
from mmlens.models.decoder import positions_from_mask
from mmlens.zoo.tiny import save_tiny_checkpoint, tiny_internvl_config

# (width, height): one view; 2 tiles + thumbnail; 3 tiles + thumbnail; 2x2 tiles + thumbnail (wide
# and tall grids, a squashed aspect ratio in each).
SIZES = [(40, 40), (70, 30), (100, 30), (30, 64), (66, 70)]
QUESTIONS = ["Is the circle red?", "Which shape is left of the square?"]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("internvl"), tiny_internvl_config())
    return HookedVLM.from_pretrained(str(path)), transformers.InternVLForConditionalGeneration.from_pretrained(path).eval()


def reference(processor, images, questions):
    """``InternVLProcessor`` on its chat template's prompts."""
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                                           add_generation_prompt=True) for q in questions]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def hf_shuffle(hf, per_patch):
    """Hugging Face's pixel shuffle of per-patch values ``[n_views, n_patch, c]`` → ``[n_views, n_tokens, 4c]``."""
    n, p, c = per_patch.shape
    g = int(p**0.5)
    shuffled = hf.model.pixel_shuffle(per_patch.view(n, g, g, c), scale_factor=hf.config.downsample_ratio)
    return shuffled.reshape(n, -1, shuffled.shape[-1])


def test_inputs_match_the_processor_and_hugging_face(family):
    model, hf = family
    images = [Image.effect_noise(size, 60).convert("RGB") for size in SIZES[1:3]]
    inputs = model.prepare(images, QUESTIONS, template="internvl")
    ref = reference(model.processor, images, QUESTIONS)
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(getattr(inputs, key), ref[key]), key
    # A full prompt with the image token once gets the processor's <img>…</img> too.
    full = model.prepare(images[0], "<|im_start|>user\n<IMG_CONTEXT>\nIs the circle red?<|im_end|>\n<|im_start|>assistant\n",
                         template=None)
    assert torch.equal(full.input_ids, ref["input_ids"][:1, -full.input_ids.shape[1]:])
    with torch.no_grad():
        ours = model(inputs)
        theirs = hf(**ref, position_ids=positions_from_mask(ref["attention_mask"])).logits
    valid = inputs.attention_mask.bool()
    torch.testing.assert_close(ours[valid], theirs[valid], atol=1e-4, rtol=0)


def test_token_groups(family):
    model, _ = family
    inputs = model.prepare([Image.new("RGB", s) for s in SIZES[1:3]], QUESTIONS, template="internvl")
    tok = model.processor.tokenizer
    groups = inputs.groups
    for r, question in enumerate(QUESTIONS):
        ids = inputs.input_ids[r]
        assert tok.decode(ids[groups["question"][r]]).replace(" ", "") == question.replace(" ", "")
        assert tok.convert_ids_to_tokens(ids[groups["image_start"][r]].tolist()) == ["<img>"]
        assert tok.convert_ids_to_tokens(ids[groups["image_end"][r]].tolist()) == ["</img>"]
        assert torch.equal(groups["image"][r], ids == model.vlm_cfg.image_token_index)
        assert tok.convert_ids_to_tokens(ids[groups["last"][r]].tolist()) == ["assistant"]
        assert not (groups["system"][r] & (groups["image_start"][r] | groups["image"][r])).any()


@pytest.mark.parametrize("size", SIZES, ids=str)
def test_kinds_and_token_coordinates_follow_hugging_face_tiling(family, size):
    """Each patch announces (view, patch row, patch col); after HF's pixel shuffle every token
    holds its 2x2 patches, which must sit at the token's (row, col) in the view mmlens names."""
    model, hf = family
    inputs = model.prepare(Image.new("RGB", size), QUESTIONS[0], template="internvl")
    n_views = int(inputs.pixel_values.shape[0])
    geometry = inputs.image_grid.views[0]
    assert n_views == geometry.n_views == (1 if size == (40, 40) else geometry.n_tiles + 1)
    g = model.vlm_cfg.vision.grid
    ids = torch.stack(torch.meshgrid(torch.arange(n_views), torch.arange(g), torch.arange(g), indexing="ij"), -1)
    tokens = hf_shuffle(hf, ids.view(n_views, g * g, 3).float()).flatten(0, 1).view(-1, 4, 3)  # [token, 2x2 patch, 3]
    image = inputs.groups["image"][0]
    kind, tile, row, col = (t[0, image] for t in (inputs.image_grid.kind, inputs.image_grid.tile,
                                                   inputs.image_grid.row, inputs.image_grid.col))
    view = tokens[:, 0, 0].long()
    assert torch.equal(kind, torch.where(view == n_views - 1, BASE, TILE))
    assert torch.equal(tile, torch.where(kind == BASE, -1, view))
    assert torch.equal(tokens[:, :, 1].amin(1).long(), 2 * row) and torch.equal(tokens[:, :, 2].amin(1).long(), 2 * col)


BOXES = [(0.2, 0.3, 0.55, 0.7), (0.0, 0.0, 0.3, 0.25), (0.6, 0.45, 1.0, 1.0)]  # fractions of (w, h, w, h)


@pytest.mark.parametrize("size", SIZES, ids=str)
def test_patches_in_box_agree_with_a_painted_box(family, size):
    """Paint the box red, run the real processor, shuffle per-patch flags with HF's pixel shuffle:
    every token with a clearly red pixel must be related, and every related token must have
    changed at all (resampling blurs the box edge by a pixel or two)."""
    model, hf = family
    w, h = size
    ip = model.processor.image_processor
    mean, std = torch.tensor(ip.image_mean)[:, None, None], torch.tensor(ip.image_std)[:, None, None]
    blank = Image.new("RGB", (w, h))
    clean = reference(model.processor, [blank], QUESTIONS[:1])["pixel_values"] * std + mean
    p = model.vlm_cfg.vision.patch_size
    g = model.vlm_cfg.vision.grid
    for fx0, fy0, fx1, fy1 in BOXES:
        box = (round(fx0 * w), round(fy0 * h), round(fx1 * w), round(fy1 * h))
        img = blank.copy()
        ImageDraw.Draw(img).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 0, 0))
        px = reference(model.processor, [img], QUESTIONS[:1])["pixel_values"] * std + mean
        red = ((px[:, 0] > 0.5) & (px[:, 1] < 0.3)).float()
        changed = ((px - clean).abs() > 1e-4).any(1).float()
        # [n_views, H, W] → per patch [n_views, g*g, 1] → per token (any of its 2x2 patches)
        per_token = [hf_shuffle(hf, m.view(-1, g, p, g, p).amax((2, 4)).view(-1, g * g, 1)).amax(-1).flatten()
                     for m in (red, changed)]
        inputs = model.prepare(img, QUESTIONS[0], template="internvl")
        ours = inputs.patches_in_box(box)[0, inputs.groups["image"][0]]
        strict, loose = per_token[0] > 0, per_token[1] > 0
        assert strict.any()
        assert not (strict & ~ours).any(), (size, box, "painted tokens missed")
        assert not (ours & ~loose).any(), (size, box, "unpainted tokens marked")
        kinds = inputs.image_grid.kind[0, inputs.groups["image"][0]]
        assert ours[kinds == BASE].any()
        if size != (40, 40):
            assert ours[kinds == TILE].any()
