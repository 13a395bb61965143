"""``prepare`` for anyres models (LLaVA-NeXT, LLaVA-OneVision) against their real processors:
per-image token counts, pixel layout, image sizes, image positions' kinds, and box → patches
checked by painting the box and running the processor (docs/methods.md#box-to-patches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image, ImageDraw

from mmlens import HookedVLM
from mmlens.geometry import BASE, NEWLINE, TILE
from mmlens.inputs import get_template
from mmlens.zoo.tiny import tiny_llava, tiny_llava_next_config
from mmlens.zoo.tokenizer import build_tokenizer
from mmlens.zoo.tiny import ONEVISION_PINPOINTS as PINPOINTS, tiny_llava, tiny_onevision_config

NEXT_PINPOINTS = ((32, 64), (64, 32), (64, 64))
WORDS = ["USER", "ASSISTANT", "is", "there", "a", "star", "what", "colour", "the", "square", "?", ":"]
SIZES = [(40, 70), (64, 30), (50, 50), (90, 35)]  # (height, width)
FAMILIES = ["next", "onevision", "onevision-shrunk"]


def _next(path):
    tiny_llava(tiny_llava_next_config(pinpoints=NEXT_PINPOINTS, n_kv_heads=2)).save_pretrained(path)
    ip = transformers.LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                              image_grid_pinpoints=[list(p) for p in NEXT_PINPOINTS])
    # CLIP keeps a CLS token that the "default" strategy drops again.
    return transformers.LlavaNextProcessor(image_processor=ip, tokenizer=build_tokenizer(WORDS), patch_size=8,
                                           vision_feature_select_strategy="default", num_additional_image_tokens=1)


class ImagesOnlyOnevisionProcessor(transformers.LlavaOnevisionProcessor):
    """The real processor without its video processor, which needs torchvision (absent on CPU CI)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def _onevision(path, aspect):
    tiny_llava(tiny_onevision_config(aspect=aspect, n_kv_heads=2)).save_pretrained(path)
    ip = transformers.LlavaOnevisionImageProcessor(size={"height": 32, "width": 32},
                                                   image_grid_pinpoints=[list(p) for p in PINPOINTS])
    return ImagesOnlyOnevisionProcessor(image_processor=ip, tokenizer=build_tokenizer(WORDS), num_image_tokens=16,
                                                vision_feature_select_strategy="full", vision_aspect_ratio=aspect)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(HookedVLM with the processor, Hugging Face model, processor)."""
    path = tmp_path_factory.mktemp(request.param)
    if request.param == "next":
        processor, cls = _next(path), transformers.LlavaNextForConditionalGeneration
    else:
        aspect = "anyres_max_1" if request.param.endswith("shrunk") else "anyres_max_9"
        processor, cls = _onevision(path, aspect), transformers.LlavaOnevisionForConditionalGeneration
    return HookedVLM.from_pretrained(str(path), processor=processor), cls.from_pretrained(path).eval(), processor


def reference(processor, images, question, template="llava_hf"):
    prompt = get_template(template).render(question, processor.image_token)[0]
    processor.tokenizer.padding_side = "left"
    return processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True)


def hf_pack(hf, per_view, image_size):
    """Hugging Face's own packing of per-view, per-patch values ``[n_views, n_patch, c]``."""
    newline = torch.zeros(per_view.shape[-1])
    newline[-1] = 1.0
    sizes = torch.tensor([image_size])
    if isinstance(hf, transformers.LlavaOnevisionForConditionalGeneration):
        packed, _ = hf.model.pack_image_features([per_view], sizes, image_newline=newline,
                                                 vision_aspect_ratio=hf.config.vision_aspect_ratio)
    else:
        packed, _ = hf.model.pack_image_features([per_view], sizes, "default", image_newline=newline)
    return packed[0]


def test_inputs_match_the_processor_and_hugging_face(family):
    model, hf, processor = family
    images = [Image.effect_noise((w, h), 60).convert("RGB") for h, w in SIZES[:2]]
    inputs = model.prepare(images, ["is there a star ?", "what colour is the square ?"], template="llava_hf")
    ref = reference(processor, images, "is there a star ?")
    counts = (inputs.input_ids == model.vlm_cfg.image_token_index).sum(-1)
    assert counts[0] != counts[1]
    assert torch.equal(counts, (ref["input_ids"] == model.vlm_cfg.image_token_index).sum(-1))
    assert torch.equal(inputs.pixel_values, ref["pixel_values"])
    assert torch.equal(inputs.image_sizes, ref["image_sizes"])
    # Row 0 has the same prompt as the reference: same ids after the padding.
    n = int(inputs.attention_mask[0].sum())
    assert torch.equal(inputs.input_ids[0, -n:], ref["input_ids"][0][ref["attention_mask"][0].bool()])
    with torch.no_grad():
        ours = model(inputs)
        theirs = hf(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=ref["pixel_values"],
                    image_sizes=ref["image_sizes"], position_ids=(inputs.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits
    valid = inputs.attention_mask.bool()
    torch.testing.assert_close(ours[valid], theirs[valid], atol=1e-4, rtol=0)


@pytest.mark.parametrize("size", SIZES, ids=str)
def test_kinds_and_patch_coordinates_follow_hugging_face_packing(family, size):
    model, hf, _ = family
    inputs = model.prepare(Image.new("RGB", size[::-1]), "is there a star ?", template="llava_hf")
    grid, image = inputs.image_grid, inputs.groups["image"][0]
    n_views = int(inputs.pixel_values.shape[1])
    # Each patch announces (view, row, col); HF's packing tells where it ends up.
    ids = torch.stack(torch.meshgrid(torch.arange(n_views), torch.arange(4), torch.arange(4), indexing="ij"), -1)
    packed = hf_pack(hf, torch.cat([ids.view(n_views, 16, 3).float() + 1, torch.zeros(n_views, 16, 1)], -1), size)
    kind, tile, row, col = (t[0, image] for t in (grid.kind, grid.tile, grid.row, grid.col))
    assert torch.equal(kind == NEWLINE, packed[:, 3] == 1)
    assert (kind[:16] == BASE).all() and (kind[16:] != BASE).all()
    assert torch.equal(image, inputs.image_grid.image_index[0] == 0)
    exact = (packed[:, :3] == packed[:, :3].round()).all(-1) & (kind == TILE)
    if model.vlm_cfg.anyres_max_patches == 1 and not exact[kind == TILE].all():
        assert (tile[kind == TILE] == -1).all()  # shrunk: cells mix patches of several tiles
        return
    view, prow, pcol = (packed[kind != NEWLINE, :3] - 1).long().unbind(-1)
    assert torch.equal(torch.where(kind[kind != NEWLINE] == BASE, -1, view - 1), tile[kind != NEWLINE])
    assert torch.equal(prow, row[kind != NEWLINE]) and torch.equal(pcol, col[kind != NEWLINE])


BOXES = [(0.2, 0.3, 0.55, 0.7), (0.0, 0.0, 0.3, 0.25), (0.6, 0.45, 1.0, 1.0)]  # fractions of (w, h, w, h)


@pytest.mark.parametrize("size", SIZES, ids=str)
def test_patches_in_box_agree_with_a_painted_box(family, size):
    """Paint the box red, run the real processor, and look for the patches whose pixels changed:
    every patch with a clearly red pixel must be related, and every related patch must have
    changed at all (resampling blurs the box edge by a pixel or two)."""
    model, hf, processor = family
    h, w = size
    ip = processor.image_processor
    mean, std = torch.tensor(ip.image_mean)[:, None, None], torch.tensor(ip.image_std)[:, None, None]
    blank = Image.new("RGB", (w, h))
    clean = reference(processor, [blank], "is there a star ?")["pixel_values"][0] * std + mean
    for fx0, fy0, fx1, fy1 in BOXES:
        box = (round(fx0 * w), round(fy0 * h), round(fx1 * w), round(fy1 * h))
        img = blank.copy()
        ImageDraw.Draw(img).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 0, 0))
        px = reference(processor, [img], "is there a star ?")["pixel_values"][0] * std + mean
        red = ((px[:, 0] > 0.5) & (px[:, 1] < 0.3)).float()
        changed = ((px - clean).abs() > 1e-4).any(1).float()
        # [n_views, 32, 32] → per patch [n_views, 16] (patches of 8 px, row-major)
        per_patch = [m.view(-1, 4, 8, 4, 8).amax((2, 4)).view(-1, 16) for m in (red, changed)]
        packed = hf_pack(hf, torch.stack([*per_patch, torch.zeros_like(per_patch[0])], -1), size)
        inputs = model.prepare(img, "is there a star ?", template="llava_hf")
        ours = inputs.patches_in_box(box)[0, inputs.groups["image"][0]]
        strict, loose = packed[:, 0] > 1e-5, packed[:, 1] > 1e-5
        assert not (strict & ~ours).any(), (size, box, "painted patches missed")
        assert not (ours & ~loose).any(), (size, box, "unpainted patches marked")
        kinds = inputs.image_grid.kind[0, inputs.groups["image"][0]]
        assert ours[kinds == BASE].any() and ours[kinds == TILE].any()
        assert not ours[kinds == NEWLINE].any()
