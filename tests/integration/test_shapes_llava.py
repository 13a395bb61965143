"""The shipped shapes checkpoints (shapes-llava, shapes-llava-deep): each exists, answers held-out
questions, and mmlens runs it exactly as Hugging Face does.

These tests fail (never skip) when the packaged checkpoint is missing or broken, so a bad
checkpoint cannot land.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from mmlens import HookedVLM
from mmlens.data.shapes import QUESTION_TYPES, shapes_dataset
from mmlens.inputs import sample_inputs
from mmlens.zoo.registry import MODELS, resolve_model_name
from mmlens.zoo.shapes_model import TEST_SPLIT, accuracy_by_type, predict_first_tokens

PER_TYPE = 30
"""Held-out samples per question type in the unit-test set (split ``TEST_SPLIT``)."""


SHIPPED = ("shapes-llava", "shapes-llava-deep")
"""Every shapes checkpoint the package ships (a missing one fails, never skips)."""


@pytest.fixture(scope="module", params=SHIPPED)
def name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def checkpoint(name) -> Path:
    path = Path(resolve_model_name(name))
    assert path == MODELS[name]
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json")
               if not (path / f).exists()]  # fmt: skip
    assert not missing, f"packaged {name} checkpoint incomplete at {path}: missing {missing}"
    return path


@pytest.fixture(scope="module")
def hf_pair(checkpoint):
    model = transformers.LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    return model, transformers.AutoProcessor.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def held_out():
    return shapes_dataset(PER_TYPE * len(QUESTION_TYPES), seed=TEST_SPLIT, types=QUESTION_TYPES)


def test_checkpoint_fits_the_package_budget(name, checkpoint):
    size = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
    assert size <= 25 * 2**20, f"{name} is {size / 2**20:.1f} MiB, over the 25 MiB budget"


def test_held_out_accuracy_of_every_type_is_at_least_90_percent(hf_pair, held_out):
    acc = accuracy_by_type(*hf_pair, held_out)
    low = {t: round(a, 3) for t, a in acc.items() if a < 0.9}
    assert not low, f"held-out accuracy below 90%: {low} (all: {acc})"


def test_hooked_model_matches_hugging_face_logits_and_towers(name, checkpoint, hf_pair, held_out):
    hf, _ = hf_pair
    model = HookedVLM.from_pretrained(name)
    for sample in held_out[:: PER_TYPE * 2]:
        inputs = sample_inputs(model, sample)
        with torch.no_grad():
            ref = hf(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values,
                     attention_mask=inputs.attention_mask, output_hidden_states=True)  # fmt: skip
            ref_vision = hf.model.vision_tower(inputs.pixel_values, output_hidden_states=True).hidden_states
            ref_image = hf.model.get_image_features(pixel_values=inputs.pixel_values).pooler_output[0]
            logits, cache = model.run_with_cache(inputs)
        torch.testing.assert_close(logits, ref.logits, atol=1e-4, rtol=0)
        # Trained activations reach the hundreds (the projector output does), where one float32
        # ulp is ~3e-5: towers are compared with a relative tolerance of ~10 ulp on top.
        close = dict(atol=1e-4, rtol=1e-6)
        for layer in range(model.vlm_cfg.vision.n_layers):
            got = cache[f"vision_encoder.blocks.{layer}.hook_resid_post"]
            torch.testing.assert_close(got, ref_vision[layer + 1], **close)
        torch.testing.assert_close(cache["hook_image_embed"][0], ref_image, **close)
        for layer in range(model.cfg.n_layers):
            torch.testing.assert_close(cache["resid_pre", layer], ref.hidden_states[layer], **close)


def test_hooked_model_answers_as_hugging_face_does(name, hf_pair, held_out):
    model = HookedVLM.from_pretrained(name)
    samples = held_out[:: len(QUESTION_TYPES) + 1][:20]
    expected = predict_first_tokens(*hf_pair, samples)
    tok = model.processor.tokenizer
    got = []
    for sample in samples:
        with torch.no_grad():
            logits = model(sample_inputs(model, sample))
        got.append(tok.convert_ids_to_tokens(int(logits[0, -1].argmax())))
    assert got == expected


def test_grad_cam_peaks_on_the_named_object_above_chance(capsys):
    """Grad-CAM ("From Redundancy to Relevance") on a model with ground truth: the hit rate per
    decoder layer (the heat map's peak patch overlaps a box the question names) against a uniformly
    random peak."""
    from mmlens.studies import cam_hit_rate

    model = HookedVLM.from_pretrained("shapes-llava")
    samples = shapes_dataset(24, seed=TEST_SPLIT, types=["QueryAttr", "ChooseAttr", "Exist"])
    hits = cam_hit_rate(model, [s for s in samples if s.boxes]).to_dataframe()
    table = hits.groupby("layer")[["hit", "chance"]].mean()
    with capsys.disabled():
        print("\nshapes-llava Grad-CAM hit rate per decoder layer:\n" + table.round(3).to_string())
    assert table["hit"].max() >= 2 * table["chance"].mean(), table
