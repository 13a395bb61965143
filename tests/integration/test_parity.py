"""Parity with Hugging Face on tiny random checkpoints, through the public loader."""

from __future__ import annotations

import pytest
import torch
import transformers

from mmlens import HookedVLM
from mmlens.models.decoder import positions_from_mask
from tests.conftest import make_batch

CASES = {
    "llama-mha-clip": dict(),
    "llama-gqa-clip": dict(n_kv_heads=2),
    "llama-gqa-clip-layer-1": dict(n_kv_heads=1, vision_feature_layer=-1),
    "llama-clip-layer-list": dict(vision_feature_layer=[-3, -1]),
    "llama-clip-full": dict(select_strategy="full"),
    "llama-tied": dict(tie_word_embeddings=True),
    "llama-biases-head-dim": dict(n_kv_heads=2, attention_bias=True, mlp_bias=True, head_dim=24),
    "mistral-sliding": dict(decoder="mistral", n_kv_heads=2, sliding_window=7),
    "qwen2-bias-siglip": dict(decoder="qwen2", vision="siglip", n_kv_heads=2),
    "qwen2-siglip-full": dict(decoder="qwen2", vision="siglip", select_strategy="full", vision_feature_layer=-1),
    "llama-siglip-list": dict(vision="siglip", vision_feature_layer=[0, -2]),
}


def hf_reference(hf, ids, px, mask):
    """Logits, vision hidden states, image features and decoder hidden states from Hugging Face."""
    with torch.no_grad():
        out = hf(
            input_ids=ids,
            pixel_values=px,
            attention_mask=mask,
            position_ids=positions_from_mask(mask),
            output_hidden_states=True,
        )
        vision = hf.model.vision_tower(px, output_hidden_states=True).hidden_states
        image = hf.model.get_image_features(pixel_values=px).pooler_output
    return out.logits, vision, torch.stack(list(image)), out.hidden_states


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_tower_activations_match_hugging_face(checkpoint_factory, case):
    path = checkpoint_factory(**CASES[case])
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(path).eval()
    model = HookedVLM.from_pretrained(path)
    ids, px, mask = make_batch(model.vlm_cfg, batch=2, pad=(0, 4))
    ref_logits, ref_vision, ref_image, ref_hidden = hf_reference(hf, ids, px, mask)
    with torch.no_grad():
        logits, cache = model.run_with_cache(input_ids=ids, pixel_values=px, attention_mask=mask)

    valid = mask.bool()
    torch.testing.assert_close(logits[valid], ref_logits[valid], atol=1e-4, rtol=0)
    # Vision tower: every block output that is run, and the features the projector consumes.
    for layer in range(model.vlm_cfg.vision.n_layers):
        torch.testing.assert_close(
            cache[f"vision_encoder.blocks.{layer}.hook_resid_post"], ref_vision[layer + 1], atol=1e-4, rtol=0
        )
    torch.testing.assert_close(cache["hook_image_embed"], ref_image, atol=1e-4, rtol=0)
    # Decoder residual stream entering each block (HF's last entry is post-norm, compared via logits).
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(
            cache["resid_pre", layer][valid], ref_hidden[layer][valid], atol=1e-4, rtol=0
        )


@pytest.mark.parametrize("dtype,atol", [(torch.bfloat16, 0.1), (torch.float16, 0.02)])
def test_half_precision_within_documented_tolerance(checkpoint_factory, dtype, atol):
    """bf16/fp16 logits agree with Hugging Face in the same dtype to ``atol`` (see docs/parity.md)."""
    path = checkpoint_factory(n_kv_heads=2)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype).eval()
    model = HookedVLM.from_pretrained(path, dtype=dtype)
    ids, px, mask = make_batch(model.vlm_cfg, batch=1)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=px.to(dtype)).logits.float()
        ours = model(input_ids=ids, pixel_values=px.to(dtype)).float()
    assert model.unembed.weight.dtype == dtype
    torch.testing.assert_close(ours, ref, atol=atol, rtol=0)


def test_loads_an_already_loaded_model_without_copying(tiny_pair):
    model, hf = tiny_pair
    again = HookedVLM.from_pretrained(hf)
    assert again.blocks[0].attn.q_proj.weight.data_ptr() == hf.model.language_model.layers[0].self_attn.q_proj.weight.data_ptr()
    ids, px, _ = make_batch(model.vlm_cfg, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, pixel_values=px), model(input_ids=ids, pixel_values=px))


def test_left_padding_gives_the_unpadded_result(tiny_pair):
    model, _ = tiny_pair
    ids, px, mask = make_batch(model.vlm_cfg, batch=2, pad=(0, 5))
    with torch.no_grad():
        batched = model(input_ids=ids, pixel_values=px, attention_mask=mask)
        alone = model(input_ids=ids[1:, 5:], pixel_values=px[1:])
    torch.testing.assert_close(batched[1, 5:], alone[0], atol=1e-5, rtol=0)
