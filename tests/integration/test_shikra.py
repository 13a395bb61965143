"""Shikra (LLaVA-v0 style: linear projector, 256 ``<im_patch>`` tokens between ``<im_start>`` and
``<im_end>``) through the original-layout loader, against a plain re-implementation."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmlens import HookedVLM
from mmlens.inputs.templates import LLAVA_SYSTEM
from mmlens.zoo.tiny_original import save_tiny_linear
from tests.integration.original_reference import OriginalReference

QUESTION = "is the circle red?"


@pytest.fixture(scope="module")
def shikra(tmp_path_factory):
    """(HookedVLM, reference, prepared inputs) of a tiny random Shikra with 256 image tokens."""
    root = tmp_path_factory.mktemp("shikra")
    path, clip = save_tiny_linear(root / "shikra", root / "clip")
    model = HookedVLM.from_pretrained(str(path), vision_tower=str(clip))
    inputs = model.prepare(Image.new("RGB", (48, 32), (30, 30, 220)), QUESTION, template="shikra")
    return model, OriginalReference(path, clip), inputs


def test_prompt_is_the_released_template(shikra):
    model, _, inputs = shikra
    assert model.vlm_cfg.architecture == "ShikraLlamaForCausalLM"
    assert model.vlm_cfg.image_seq_length == 256 and model.vlm_cfg.projector.kind == "linear"
    # "From Redundancy to Relevance" code: system message + "USER: <im_start><ImageHere><im_end> <question> ASSISTANT:"
    patches = "<im_patch>" * 256
    assert inputs.prompts == (f"{LLAVA_SYSTEM}USER: <im_start>{patches}<im_end> {QUESTION} ASSISTANT:",)


def test_start_and_end_tokens_belong_to_no_standard_group(shikra):
    model, _, inputs = shikra
    tok = model.processor.tokenizer
    ids, groups = inputs.input_ids[0], inputs.groups
    start, end = (int(groups[name][0].nonzero().squeeze()) for name in ("image_start", "image_end"))
    image = groups["image"][0].nonzero().flatten()
    assert ids[start] == tok.convert_tokens_to_ids("<im_start>") and ids[end] == tok.convert_tokens_to_ids("<im_end>")
    assert image.tolist() == list(range(start + 1, end))
    for name in ("system", "image", "user", "question", "last"):
        assert not groups[name][0, [start, end]].any(), name
    # Every other position keeps its group: system before <im_start>, user after <im_end>.
    assert groups["system"][0, :start].all() and groups["user"][0, end + 1 :].all()


def test_logits_equal_a_plain_reimplementation(shikra):
    model, ref, inputs = shikra
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs)
    torch.testing.assert_close(cache["hook_image_embed"], ref.image_features(inputs.pixel_values), atol=1e-5, rtol=0)
    expected = ref.logits(inputs.input_ids, inputs.pixel_values, model.vlm_cfg.image_token_index)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    # The image matters: the reference with zero features differs (the comparison can fail).
    blank = ref.logits(inputs.input_ids, torch.zeros_like(inputs.pixel_values), model.vlm_cfg.image_token_index)
    assert (logits - blank).abs().max() > 1e-3


def test_greedy_generation_matches_the_reimplementation(shikra):
    model, ref, inputs = shikra
    out = model.generate(inputs, max_new_tokens=4, eos_token_id=-1)
    ids = inputs.input_ids
    for _ in range(4):
        nxt = ref.logits(ids, inputs.pixel_values, model.vlm_cfg.image_token_index)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    assert torch.equal(out, ids)
