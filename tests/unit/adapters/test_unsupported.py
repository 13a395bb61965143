"""Checkpoints mmlens cannot run exactly are refused with a clear error."""

from __future__ import annotations

import pytest
import transformers

from mmlens import HookedVLM, UnknownNameError, UnsupportedArchitectureError
from mmlens.adapters import VLM_ADAPTERS
from mmlens.zoo.tiny import tiny_llava, tiny_llava_config, tiny_onevision_config


def test_unknown_decoder_family_is_refused():
    cfg = tiny_llava_config()
    cfg.text_config = transformers.GemmaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, head_dim=16,
    )
    with pytest.raises(UnsupportedArchitectureError, match=r"decoder 'gemma' is not supported.*llama"):
        HookedVLM.from_pretrained(transformers.LlavaForConditionalGeneration(cfg))


def test_non_llava_directory_is_refused(tmp_path):
    lm = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4))
    lm.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="LlamaForCausalLM.*LlavaForConditionalGeneration"):
        HookedVLM.from_pretrained(str(tmp_path))


def test_dynamic_rope_is_refused():
    cfg = tiny_llava_config(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(UnsupportedArchitectureError, match="config field rope_parameters: rope_type 'dynamic'"):
        HookedVLM.from_pretrained(tiny_llava(cfg))


def test_unknown_name_or_missing_directory(tmp_path):
    with pytest.raises(UnknownNameError, match="neither a registered model name nor a local directory"):
        HookedVLM.from_pretrained(str(tmp_path / "nope"))


def convert(hf_config):
    """mmlens' config for a Hugging Face LLaVA config (no weights needed)."""
    return VLM_ADAPTERS[hf_config.architectures[0] if hf_config.architectures else "LlavaForConditionalGeneration"].config(hf_config)


def with_vision(cfg, **fields):
    for name, value in fields.items():
        setattr(cfg.vision_config, name, value)
    return cfg


@pytest.mark.parametrize(
    "make,message",
    [
        # A decoder field outside the Llama allow-list (tensor-parallel emulation of the matmuls).
        (lambda: tiny_llava_config(pretraining_tp=2), r"llama: config field pretraining_tp=2 \(default 1\)"),
        # A vision-tower field outside the CLIP / SigLIP allow-list.
        (lambda: with_vision(tiny_llava_config(), num_channels=4), r"clip vision tower: config field num_channels=4"),
        (lambda: with_vision(tiny_llava_config(vision="siglip"), num_channels=1),
         r"siglip vision tower: config field num_channels=1"),
    ],
    ids=["decoder-field", "clip-field", "siglip-field"],
)
def test_a_field_mmlens_does_not_implement_is_refused_by_name(make, message):
    with pytest.raises(UnsupportedArchitectureError, match=message):
        convert(make())


def test_a_onevision_aspect_ratio_other_than_anyres_max_is_refused():
    cfg = tiny_onevision_config(aspect="anyres")
    with pytest.raises(UnsupportedArchitectureError, match="vision_aspect_ratio='anyres'"):
        VLM_ADAPTERS["LlavaOnevisionForConditionalGeneration"].config(cfg)


def test_fields_that_do_not_change_a_forward_are_accepted():
    cfg = tiny_llava_config(initializer_range=0.5, attention_dropout=0.1, use_cache=False, bos_token_id=7)
    cfg.vision_config.projection_dim = 7  # CLIP's joint-space projection is not part of the tower LLaVA reads
    assert convert(cfg).decoder.n_layers == cfg.text_config.num_hidden_layers
