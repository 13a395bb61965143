"""LLaVA-OneVision parity with Hugging Face: SigLIP tower, Qwen2 decoder, anyres tiling with the
``anyres_max_N`` shrink, several image sizes, batches of two images with different image-token
counts and left padding."""

from __future__ import annotations

import pytest
import torch
import transformers

from mmlens import HookedVLM, UnsupportedArchitectureError
from mmlens.models.decoder import positions_from_mask
from tests.integration.anyres_batch import assert_decoder_parity, batch_for
from mmlens.zoo.tiny import tiny_llava, tiny_onevision_config

CASES = {
    "default-budget": dict(n_kv_heads=2),
    # A budget of one view's patches: large tile grids are shrunk (bilinear) before the newlines.
    "shrunk-layer-list": dict(aspect="anyres_max_1", n_kv_heads=1, vision_feature_layer=[-3, -1]),
}
BATCHES = [[(40, 70), (64, 30)], [(96, 40), (33, 33)]]  # (height, width): wide, tall, very tall, square


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("onevision")
    tiny_llava(tiny_onevision_config(**CASES[request.param])).save_pretrained(path)
    hf = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(path).eval()
    return HookedVLM.from_pretrained(str(path)), hf




def vision_reference(hf, px, n_views):
    """Hidden states of every tower block and the projector's output, over the views actually used."""
    views = torch.cat([p[:n] for p, n in zip(px, n_views)])
    hidden = hf.model.vision_tower(views, output_hidden_states=True).hidden_states
    layers = hf.config.vision_feature_layer
    layers = [layers] if isinstance(layers, int) else layers
    return hidden, hf.model.multi_modal_projector(torch.cat([hidden[i] for i in layers], dim=-1))


@pytest.mark.parametrize("sizes", BATCHES, ids=str)
def test_logits_and_activations_match_hugging_face(pair, sizes):
    model, hf = pair
    ids, px, image_sizes, mask, n_views, counts = batch_for(hf, sizes)
    assert counts[0] != counts[1]
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=px, image_sizes=image_sizes, attention_mask=mask,
                 position_ids=positions_from_mask(mask), output_hidden_states=True)
        logits, cache = model.run_with_cache(input_ids=ids, pixel_values=px, image_sizes=image_sizes, attention_mask=mask)
        ref_vision, ref_projected = vision_reference(hf, px, n_views)
        packed = torch.cat(list(hf.model.get_image_features(pixel_values=px, image_sizes=image_sizes).pooler_output))
    for layer in range(model.vlm_cfg.vision.n_layers):
        torch.testing.assert_close(cache[f"vision_encoder.blocks.{layer}.hook_resid_post"], ref_vision[layer + 1], atol=1e-4, rtol=0)
    torch.testing.assert_close(cache["hook_image_embed"], ref_projected, atol=1e-4, rtol=0)
    assert_decoder_parity(logits, cache, ref, ids, mask, packed, hf.config.image_token_id)


def test_the_budget_shrinks_large_grids(pair):
    """The shrunk case really exercises the interpolation (fewer tokens than without a budget)."""
    model, hf = pair
    sizes = torch.tensor(BATCHES[0])
    px = batch_for(hf, BATCHES[0])[1]
    with torch.no_grad():
        ours = [len(e) for e in model.embed_images(px, sizes)]
        unbounded = [len(f) for f in hf.model.get_image_features(pixel_values=px, image_sizes=sizes,
                                                                  vision_aspect_ratio="anyres_max_1000").pooler_output]
    assert (ours != unbounded) == (model.vlm_cfg.anyres_max_patches == 1)


def test_generate_matches(pair):
    model, hf = pair
    ids, px, sizes, mask, _, _ = batch_for(hf, BATCHES[0], seed=1)
    ref = hf.generate(input_ids=ids, pixel_values=px, image_sizes=sizes, attention_mask=mask, max_new_tokens=5, do_sample=False)
    ours = model.generate(input_ids=ids, pixel_values=px, image_sizes=sizes, attention_mask=mask, max_new_tokens=5)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("field,value,match", [
    ("vision_aspect_ratio", "anyres", "anyres_max_N"),
    ("vision_feature_select_strategy", "default", "features per view"),
])
def test_unsupported_options_raise(field, value, match):
    config = tiny_onevision_config()
    setattr(config, field, value)
    with pytest.raises(UnsupportedArchitectureError, match=match):
        HookedVLM.from_pretrained(tiny_llava(config))
