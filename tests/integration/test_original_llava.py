"""Checkpoints in the original LLaVA repository layout load directly, equal to their Hugging Face twin.

Each case writes one tiny random ``LlavaForConditionalGeneration`` twice: as a Hugging Face
directory, and in the original layout (``LlavaLlamaForCausalLM`` config, ``model.mm_projector.{0,2}``
keys, the CLIP tower in a separate ``CLIPModel`` directory).
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
import transformers
from PIL import Image

from mmlens import HookedVLM, MMLensError, UnknownNameError, UnsupportedArchitectureError
from mmlens.data.shapes import VOCAB_WORDS
from mmlens.zoo.tiny import save_tiny_checkpoint, tiny_llava_config
from mmlens.zoo.tiny_original import save_clip_tower, save_original_llava, save_tiny_linear
from mmlens.zoo.tokenizer import build_tokenizer
from tests.conftest import make_batch
from tests.integration.original_reference import OriginalReference

CASES = {
    "patch-layer-2": (dict(), dict()),
    "cls_patch-layer-1": (dict(select_strategy="full", vision_feature_layer=-1), dict()),
    "tower-in-checkpoint": (dict(), dict(tower_in_checkpoint=True)),
    "no-tokenizer": (dict(), dict(tokenizer=None)),
}


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """``case -> (hf_dir, original_dir, clip_dir, hf_model)`` (built once per case)."""
    made = {}

    def make(case):
        if case not in made:
            root = tmp_path_factory.mktemp(case)
            cfg_kwargs, save_kwargs = CASES[case]
            hf_dir = save_tiny_checkpoint(root / "hf", tiny_llava_config(n_kv_heads=2, **cfg_kwargs))
            hf = transformers.LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
            save_kwargs = {"tokenizer": build_tokenizer(VOCAB_WORDS)} | save_kwargs
            original, clip = save_original_llava(hf, root / "original", root / "clip", **save_kwargs)
            if save_kwargs.get("tower_in_checkpoint"):
                # The CLIP directory holds another tower: the checkpoint's own must win.
                torch.manual_seed(123)
                save_clip_tower(transformers.CLIPVisionModel(hf.config.vision_config).eval(), clip)
            made[case] = (str(hf_dir), str(original), str(clip), hf)
        return made[case]

    return make


@pytest.mark.parametrize("case", list(CASES))
def test_logits_equal_the_hugging_face_layout_and_model(twins, case):
    hf_dir, original, clip, hf = twins(case)
    ours_hf = HookedVLM.from_pretrained(hf_dir)
    ours = HookedVLM.from_pretrained(original, vision_tower=clip)
    ids, px, mask = make_batch(ours_hf.vlm_cfg, batch=2, pad=(0, 3))
    vocab = hf.config.text_config.vocab_size
    # Without a tokenizer the placeholder is a new token after the vocabulary (see llava_original).
    image_id = ours.vlm_cfg.image_token_index
    assert image_id == (vocab if case == "no-tokenizer" else hf.config.image_token_id)
    ids_original = torch.where(ids == hf.config.image_token_id, image_id, ids)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=px, attention_mask=mask,
                 position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        a = ours_hf(input_ids=ids, pixel_values=px, attention_mask=mask)
        b = ours(input_ids=ids_original, pixel_values=px, attention_mask=mask)
    valid = mask.bool()
    torch.testing.assert_close(b[..., :vocab], a, atol=1e-5, rtol=0)
    torch.testing.assert_close(b[..., :vocab][valid], ref[valid], atol=1e-4, rtol=0)
    if case == "no-tokenizer":
        assert b.shape[-1] == vocab + 1 and torch.equal(b[..., vocab], torch.zeros_like(b[..., vocab]))


def test_tower_weights_of_the_clip_directory_are_used_when_the_checkpoint_has_none(twins, tmp_path):
    """Control for the tower-in-checkpoint case: another tower gives other logits."""
    hf_dir, original, _, hf = twins("patch-layer-2")
    torch.manual_seed(123)
    other = save_clip_tower(transformers.CLIPVisionModel(hf.config.vision_config).eval(), tmp_path / "other")
    ours_hf = HookedVLM.from_pretrained(hf_dir)
    ours = HookedVLM.from_pretrained(original, vision_tower=other)
    ids, px, _ = make_batch(ours_hf.vlm_cfg, batch=1)
    with torch.no_grad():
        assert (ours(input_ids=ids, pixel_values=px) - ours_hf(input_ids=ids, pixel_values=px)).abs().max() > 1e-3


def test_config_translates_to_the_hugging_face_adapters(twins):
    hf_dir, original, clip, _ = twins("cls_patch-layer-1")
    a = HookedVLM.from_pretrained(hf_dir).vlm_cfg
    b = HookedVLM.from_pretrained(original, vision_tower=clip).vlm_cfg
    assert b.architecture == "LlavaLlamaForCausalLM" and b.projector.kind == "mlp"
    # The padding token comes from the tokenizer (the tiny Hugging Face config has none).
    assert dataclasses.replace(b, architecture=a.architecture, pad_token_id=a.pad_token_id) == a


def test_prepare_builds_the_same_inputs_as_the_hugging_face_processor(twins):
    hf_dir, original, clip, _ = twins("patch-layer-2")
    image = Image.new("RGB", (40, 28), (200, 30, 30))
    a = HookedVLM.from_pretrained(hf_dir).prepare(image, "is the circle red?")
    b = HookedVLM.from_pretrained(original, vision_tower=clip).prepare(image, "is the circle red?")
    assert a.prompts == b.prompts
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.pixel_values, b.pixel_values)
    assert all(torch.equal(a.groups[g], b.groups[g]) for g in a.groups)


def test_linear_projector_llava1_matches_a_plain_reimplementation(tmp_path):
    """LLaVA-1 (``mm_projector_type="linear"``): the projector is one linear, with no hooks of its own."""
    path, clip = save_tiny_linear(tmp_path / "llava1", tmp_path / "clip", architecture="LlavaLlamaForCausalLM",
                                  patch_size=8)
    model = HookedVLM.from_pretrained(str(path), vision_tower=str(clip))
    ref = OriginalReference(path, clip)
    assert model.vlm_cfg.projector.kind == "linear"
    assert not any(name.startswith("vision_projector.") for name in model.hook_dict)
    inputs = model.prepare(Image.new("RGB", (32, 48), (20, 200, 30)), "is the circle red?")
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs)
    torch.testing.assert_close(cache["hook_image_embed"], ref.image_features(inputs.pixel_values), atol=1e-5, rtol=0)
    expected = ref.logits(inputs.input_ids, inputs.pixel_values, model.vlm_cfg.image_token_index)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_im_start_end_template_wraps_the_image_and_keeps_the_delimiters_out_of_the_groups(tmp_path):
    path, clip = save_tiny_linear(tmp_path / "llava1", tmp_path / "clip", architecture="LlavaLlamaForCausalLM",
                                  patch_size=8, im_start_end=True)
    model = HookedVLM.from_pretrained(str(path), vision_tower=str(clip))
    inputs = model.prepare(Image.new("RGB", (32, 32), (20, 200, 30)), "is the circle red?",
                           template="vicuna_v1_im_start_end")
    assert " USER: <im_start>" + "<image>" * 16 + "<im_end>\nis the circle red? ASSISTANT:" in inputs.prompts[0]
    groups, image = inputs.groups, inputs.groups["image"][0].nonzero().flatten()
    assert groups["image_start"][0].nonzero().flatten().tolist() == [int(image[0]) - 1]
    assert groups["image_end"][0].nonzero().flatten().tolist() == [int(image[-1]) + 1]
    assert not (groups["image_start"] | groups["image_end"])[0][groups["system"][0] | groups["user"][0]].any()
    with torch.no_grad():
        logits = model(inputs)
    expected = OriginalReference(path, clip).logits(inputs.input_ids, inputs.pixel_values, model.vlm_cfg.image_token_index)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_vision_tower_is_found_beside_the_checkpoint_and_never_downloaded(twins, tmp_path):
    _, original, clip, _ = twins("patch-layer-2")
    with pytest.raises(UnknownNameError, match=r"openai/clip-vit-large-patch14-336.*vision_tower="):
        HookedVLM.from_pretrained(original)
    moved = _copy(original, tmp_path / "ckpt", mm_vision_tower="../clip_copy")
    _copy(clip, tmp_path / "clip_copy")
    HookedVLM.from_pretrained(str(moved))  # a relative name resolves beside the checkpoint
    with pytest.raises(UnknownNameError, match="not a directory holding a CLIP checkpoint"):
        HookedVLM.from_pretrained(original, vision_tower=str(tmp_path / "nowhere"))


def test_vision_tower_argument_is_refused_for_hugging_face_checkpoints(twins):
    hf_dir, _, clip, _ = twins("patch-layer-2")
    with pytest.raises(MMLensError, match="only for checkpoints in the original LLaVA repository layout"):
        HookedVLM.from_pretrained(hf_dir, vision_tower=clip)


@pytest.mark.parametrize(
    "fields,match",
    [
        (dict(image_aspect_ratio="anyres", mm_patch_merge_type="flat", image_grid_pinpoints=[[32, 64]]),
         "not mm_patch_merge_type='flat'"),
        (dict(image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad", image_grid_pinpoints="(1x1),...,(3x3)"),
         r"image_grid_pinpoints='\(1x1\)"),
        (dict(image_aspect_ratio="anyres_max_9"), "image_aspect_ratio='anyres_max_9'"),
        (dict(mm_projector_type="mlp3x_gelu"), "mm_projector_type='mlp3x_gelu'"),
        (dict(mm_vision_select_feature="cls"), "mm_vision_select_feature='cls'"),
        (dict(mm_patch_merge_type="unpad"), "mm_patch_merge_type='unpad'"),
        (dict(mm_resampler_type="perceiver"), "mm_resampler_type='perceiver'"),
        (dict(mm_hidden_size=1024), "mm_hidden_size=1024"),
        (dict(some_new_field=1), r"\['some_new_field'\] are not known"),
    ],
)
def test_unsupported_options_are_refused(twins, tmp_path, fields, match):
    _, original, clip, _ = twins("patch-layer-2")
    changed = _copy(original, tmp_path / "ckpt", **fields)
    with pytest.raises(UnsupportedArchitectureError, match=match):
        HookedVLM.from_pretrained(str(changed), vision_tower=clip)


def test_an_original_class_without_support_is_refused(twins, tmp_path):
    _, original, clip, _ = twins("patch-layer-2")
    changed = _copy(original, tmp_path / "ckpt", architectures=["LlavaMistralForCausalLM"], model_type="llava_mistral")
    with pytest.raises(UnsupportedArchitectureError, match="LlavaMistralForCausalLM .*not supported.*LlavaLlamaForCausalLM"):
        HookedVLM.from_pretrained(str(changed), vision_tower=clip)


def test_a_tensor_of_an_unknown_module_is_refused(twins, tmp_path):
    from safetensors.torch import load_file, save_file

    _, original, clip, _ = twins("patch-layer-2")
    changed = _copy(original, tmp_path / "ckpt")
    state = load_file(str(changed / "model.safetensors")) | {"model.image_newline": torch.zeros(64)}
    save_file(state, str(changed / "model.safetensors"))
    with pytest.raises(UnsupportedArchitectureError, match="'model.image_newline'"):
        HookedVLM.from_pretrained(str(changed), vision_tower=clip)


def _copy(src, dst, **fields):
    """A copy of a checkpoint directory with config fields replaced."""
    shutil.copytree(src, dst)
    if fields:
        raw = json.loads((dst / "config.json").read_text()) | fields
        (dst / "config.json").write_text(json.dumps(raw))
    return dst


def test_convert_writes_a_hugging_face_directory_with_the_same_logits(twins, tmp_path):
    from mmlens.cli import main

    hf_dir, original, clip, hf = twins("patch-layer-2")
    out = tmp_path / "converted"
    assert main(["convert", original, "--vision-tower", clip, "--out", str(out)]) == 0
    converted = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
    ours = HookedVLM.from_pretrained(str(out))
    ids, px, _ = make_batch(ours.vlm_cfg, batch=1)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=px).logits
        torch.testing.assert_close(converted(input_ids=ids, pixel_values=px).logits, ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(input_ids=ids, pixel_values=px), ref, atol=1e-4, rtol=0)
    image = Image.new("RGB", (40, 28), (200, 30, 30))
    assert ours.prepare(image, "is the circle red?").prompts == HookedVLM.from_pretrained(hf_dir).prepare(
        image, "is the circle red?").prompts


def test_convert_refuses_a_linear_projector(tmp_path, capsys):
    from mmlens.cli import main

    path, clip = save_tiny_linear(tmp_path / "llava1", tmp_path / "clip", architecture="LlavaLlamaForCausalLM",
                                  patch_size=8)
    assert main(["convert", str(path), "--vision-tower", str(clip), "--out", str(tmp_path / "out")]) == 2
    assert "no Hugging Face LLaVA equivalent" in capsys.readouterr().err
