"""Checkpoints mmlens cannot run exactly are refused with a clear error."""

from __future__ import annotations

import pytest
import transformers

from mmlens import HookedVLM, UnknownNameError, UnsupportedArchitectureError
from mmlens.zoo.tiny import tiny_llava, tiny_llava_config


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
    with pytest.raises(UnsupportedArchitectureError, match="rope_type 'dynamic'"):
        HookedVLM.from_pretrained(tiny_llava(cfg))


def test_unknown_name_or_missing_directory(tmp_path):
    with pytest.raises(UnknownNameError, match="neither a registered model name nor a local directory"):
        HookedVLM.from_pretrained(str(tmp_path / "nope"))
