"""``prepare`` without ``template=`` takes the model family's template (``VLMConfig.template``, set by
each registered adapter): the ids equal those of the family's own processor on its chat template
(or, without one, on the prompt its parity/prepare tests write), and an explicit template wins."""

from __future__ import annotations

import pytest
import torch
import transformers
from PIL import Image

from mmlens import HookedVLM
from mmlens.adapters.llava_original import TEMPLATES as ORIGINAL_TEMPLATES
from mmlens.adapters.processors import LlavaOnevisionImagesProcessor
from mmlens.adapters.registry import VLM_ADAPTERS
from mmlens.errors import UnknownNameError
from mmlens.inputs.templates import LLAVA_SYSTEM, TEMPLATES, get_template
from mmlens.zoo.tiny import (
    ONEVISION_PINPOINTS,
    save_tiny_checkpoint,
    tiny_internvl_config,
    tiny_llava,
    tiny_llava_next_config,
    tiny_onevision_config,
)
from mmlens.zoo.tiny_blip import save_tiny_instructblip
from mmlens.zoo.tiny_original import save_tiny_linear
from mmlens.zoo.tiny_qwen_vl import save_tiny_qwen_vl, tiny_qwen2_5_vl_config
from mmlens.zoo.tokenizer import build_tokenizer

QUESTION = "is there a red star ?"
WORDS = ["USER", "ASSISTANT", "is", "there", "a", "red", "star", "?", ":"]

# The template each family's parity / prepare / analysis tests pass explicitly today.
EXPECTED = {
    "LlavaForConditionalGeneration": "vicuna_v1",  # test_prepare.py (default), test_original_llava.py
    "LlavaNextForConditionalGeneration": "llava_hf",  # test_prepare_anyres.py, test_analyses_next.py
    "LlavaOnevisionForConditionalGeneration": "llava_hf",  # test_prepare_anyres.py, test_processor_loading.py
    "InternVLForConditionalGeneration": "internvl",  # test_prepare_internvl.py, test_analyses_internvl.py
    "InstructBlipForConditionalGeneration": "instructblip",  # test_analyses_instructblip.py
    "Qwen2VLForConditionalGeneration": "qwen2_vl",  # test_prepare_qwen2_vl.py, test_analyses_qwen2_vl.py
    "Qwen2_5_VLForConditionalGeneration": "qwen2_vl",  # test_parity_qwen2_vl.py
}


def test_every_registered_family_names_the_template_its_tests_use():
    assert {name: adapter.template for name, adapter in VLM_ADAPTERS.items()} == EXPECTED
    assert ORIGINAL_TEMPLATES == {"LlavaLlamaForCausalLM": "vicuna_v1", "ShikraLlamaForCausalLM": "shikra"}
    assert set(EXPECTED.values()) | set(ORIGINAL_TEMPLATES.values()) <= set(TEMPLATES)


def test_auto_needs_a_family():
    assert get_template("auto", "internvl") is TEMPLATES["internvl"]
    with pytest.raises(UnknownNameError, match="no model config"):
        get_template("auto")


def _chat(processor, question):
    return processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}], add_generation_prompt=True
    )


def _ids(prompt):
    """Reference ids: the processor itself on ``prompt(processor)`` and the image."""

    def run(processor, image):
        processor.tokenizer.padding_side = "left"
        return processor(images=[image], text=[prompt(processor)], return_tensors="pt", padding=True)["input_ids"]

    return run


def _llava(path):
    return HookedVLM.from_pretrained(str(save_tiny_checkpoint(path))), _ids(lambda p: f"{LLAVA_SYSTEM} USER: <image>\n{QUESTION} ASSISTANT:")


def _next(path):
    pinpoints = ((32, 64), (64, 32), (64, 64))
    tiny_llava(tiny_llava_next_config(pinpoints=pinpoints, n_kv_heads=2)).save_pretrained(path)
    ip = transformers.LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                              image_grid_pinpoints=[list(p) for p in pinpoints])
    processor = transformers.LlavaNextProcessor(image_processor=ip, tokenizer=build_tokenizer(WORDS), patch_size=8,
                                                vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return HookedVLM.from_pretrained(str(path), processor=processor), _ids(lambda p: f"USER: <image>\n{QUESTION} ASSISTANT:")


def _onevision(path):
    tiny_llava(tiny_onevision_config(n_kv_heads=2)).save_pretrained(path)
    ip = transformers.LlavaOnevisionImageProcessor(size={"height": 32, "width": 32},
                                                   image_grid_pinpoints=[list(p) for p in ONEVISION_PINPOINTS])
    processor = LlavaOnevisionImagesProcessor(image_processor=ip, tokenizer=build_tokenizer(WORDS), num_image_tokens=16,
                                              vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    return HookedVLM.from_pretrained(str(path), processor=processor), _ids(lambda p: f"USER: <image>\n{QUESTION} ASSISTANT:")


def _internvl(path):
    return HookedVLM.from_pretrained(str(save_tiny_checkpoint(path, tiny_internvl_config()))), _ids(lambda p: _chat(p, QUESTION))


def _instructblip(path):
    """LAVIS / Hugging Face: the instruction alone, after one image token per query (written by hand:
    this transformers' ``InstructBlipProcessor`` fails on images with a plain-string image token)."""
    model = HookedVLM.from_pretrained(str(save_tiny_instructblip(path)))

    def ids(processor, image):
        text = processor.tokenizer(QUESTION, return_tensors="pt")["input_ids"]
        queries = torch.full((1, model.vlm_cfg.qformer.n_queries), model.vlm_cfg.image_token_index)
        return torch.cat([queries, text], dim=1)

    return model, ids


def _qwen2_vl(path):
    return HookedVLM.from_pretrained(str(save_tiny_qwen_vl(path))), _ids(lambda p: _chat(p, QUESTION))


def _qwen2_5_vl(path):
    return HookedVLM.from_pretrained(str(save_tiny_qwen_vl(path, tiny_qwen2_5_vl_config()))), _ids(lambda p: _chat(p, QUESTION))


FAMILIES = {"llava": _llava, "next": _next, "onevision": _onevision, "internvl": _internvl,
            "instructblip": _instructblip, "qwen2_vl": _qwen2_vl, "qwen2_5_vl": _qwen2_5_vl}


@pytest.mark.parametrize("family", FAMILIES)
def test_default_template_gives_the_processors_own_ids(family, tmp_path):
    model, reference_ids = FAMILIES[family](tmp_path)
    assert model.vlm_cfg.template == EXPECTED[model.vlm_cfg.architecture]
    image = Image.effect_noise((40, 40), 60).convert("RGB")  # square: pad and crop agree
    got = model.prepare(image, QUESTION)
    assert torch.equal(got.input_ids, reference_ids(model.processor, image))
    assert got.prompts == model.prepare(image, QUESTION, template=model.vlm_cfg.template).prompts
    # An explicit template always wins over the family's.
    other = "vicuna_v1" if model.vlm_cfg.template != "vicuna_v1" else "llava_hf"
    forced = model.prepare(image, QUESTION, template=other).prompts[0]
    assert forced.startswith(f"{LLAVA_SYSTEM} USER: " if other == "vicuna_v1" else "USER: ") and forced != got.prompts[0]


@pytest.mark.parametrize("architecture, im_start_end, template", [
    ("LlavaLlamaForCausalLM", False, "vicuna_v1"),
    ("LlavaLlamaForCausalLM", True, "vicuna_v1_im_start_end"),
    ("ShikraLlamaForCausalLM", None, "shikra"),
])
def test_original_layouts_default_to_their_conversation(tmp_path, architecture, im_start_end, template):
    path, clip = save_tiny_linear(tmp_path / "model", tmp_path / "clip", architecture=architecture, patch_size=8,
                                  im_start_end=im_start_end)
    model = HookedVLM.from_pretrained(str(path), vision_tower=str(clip))
    assert model.vlm_cfg.template == template
    image = Image.new("RGB", (32, 32), (20, 200, 30))
    got, explicit = model.prepare(image, QUESTION), model.prepare(image, QUESTION, template=template)
    assert got.prompts == explicit.prompts and torch.equal(got.input_ids, explicit.input_ids)


def test_instructblip_rows_keep_queries_before_bos_under_left_padding(tmp_path):
    model, _ = _instructblip(tmp_path)
    questions = ["is there a star ?", "is there a red star in the image ?"]
    images = [Image.new("RGB", (32, 32), (200, 20, 20))] * 2
    batch = model.prepare(images, questions)
    tok = model.processor.tokenizer
    for r, question in enumerate(questions):
        row = batch.input_ids[r][batch.attention_mask[r].bool()]
        text = tok(question, return_tensors="pt")["input_ids"][0]
        assert torch.equal(row, torch.cat([torch.full((model.vlm_cfg.qformer.n_queries,), model.vlm_cfg.image_token_index), text]))
        # The question group still covers the question's words (offsets moved with the ids).
        assert tok.decode(batch.input_ids[r][batch.groups["question"][r]]).replace(" ", "") == question.replace(" ", "")
        # The moved <s> is the prompt's preamble: the system group, right after the queries.
        system = batch.groups["system"][r].nonzero().flatten().tolist()
        image = batch.groups["image"][r].nonzero().flatten()
        assert system == [int(image[-1]) + 1] and batch.input_ids[r, system[0]] == tok.bos_token_id
