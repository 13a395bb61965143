"""InternVL parity with Hugging Face: InternViT (layer scale; LayerNorm or RMSNorm; QK-norm),
pixel shuffle + MLP projector, Qwen2 and Llama decoders, and batches of two images with
different tile counts prepared by InternVL's own processor (left padding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from mmlens import HookedVLM, UnsupportedArchitectureError
from mmlens.models.decoder import positions_from_mask
from mmlens.models.hook_shapes import SHAPES, template
from mmlens.zoo.tiny import save_tiny_checkpoint, tiny_internvl_config, tiny_llava
from tests.integration.anyres_batch import assert_decoder_parity

CASES = {
    "qwen2-layernorm-last-layer": dict(),
    "llama-rmsnorm-qknorm-layer-2": dict(decoder="llama", norm_type="rms_norm", use_qk_norm=True,
                                         attention_bias=False, vision_feature_layer=-2, n_kv_heads=4),
}
# (width, height): 2 tiles + thumbnail and a single view; 3 tiles + thumbnail and 2 + thumbnail.
BATCHES = [[(70, 30), (40, 40)], [(100, 30), (30, 64)]]
QUESTIONS = ["Is the circle red?", "Which shape is left of the square?"]


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("internvl"), tiny_internvl_config(**CASES[request.param]))
    hf = transformers.InternVLForConditionalGeneration.from_pretrained(path).eval()
    return HookedVLM.from_pretrained(str(path)), hf


def processor_batch(processor, sizes, seed=0):
    """InternVL's own processor output for random images of ``sizes`` and the chat template."""
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                                           add_generation_prompt=True) for q in QUESTIONS[: len(sizes)]]
    return dict(processor(images=images, text=texts, return_tensors="pt", padding=True))


@pytest.mark.parametrize("sizes", BATCHES, ids=str)
def test_logits_and_activations_match_hugging_face(pair, sizes):
    model, hf = pair
    enc = processor_batch(model.processor, sizes)
    ids, mask, px = enc["input_ids"], enc["attention_mask"], enc["pixel_values"]
    image = ids == hf.config.image_token_id
    assert image.sum(-1)[0] != image.sum(-1)[1] and not bool(mask.all())  # different tile counts, left padding
    with torch.no_grad():
        ref = hf(**enc, position_ids=positions_from_mask(mask), output_hidden_states=True)
        logits, cache = model.run_with_cache(**enc)
        fused = model(**enc)
        hidden = hf.model.vision_tower(pixel_values=px, output_hidden_states=True).hidden_states
        projected = hf.model.get_image_features(pixel_values=px).pooler_output
    for layer in range(model.vlm_cfg.vision.n_layers):
        torch.testing.assert_close(cache[f"vision_encoder.blocks.{layer}.hook_resid_post"], hidden[layer + 1], atol=1e-4, rtol=0)
    feature_layer = hf.config.vision_feature_layer
    torch.testing.assert_close(cache["vision_encoder.hook_features"], hidden[feature_layer][:, 1:], atol=1e-4, rtol=0)
    torch.testing.assert_close(cache["hook_image_embed"], projected, atol=1e-4, rtol=0)
    assert_decoder_parity(logits, cache, ref, ids, mask, projected.flatten(0, 1), hf.config.image_token_id)
    # No attention hook attached: the fused path gives the same logits.
    torch.testing.assert_close(fused, logits, atol=1e-5, rtol=0)


def test_the_tower_is_truncated_at_the_feature_layer(pair):
    model, hf = pair
    needed = hf.config.vision_config.num_hidden_layers + 1 + hf.config.vision_feature_layer
    assert model.vlm_cfg.vision.n_layers == needed


def test_generate_matches(pair):
    model, hf = pair
    enc = processor_batch(model.processor, BATCHES[1], seed=1)
    ref = hf.generate(**enc, max_new_tokens=5, do_sample=False)
    ours = model.generate(**enc, max_new_tokens=5)
    assert torch.equal(ours, ref)


def test_internvl_hooks_fire_with_documented_shapes_and_matter(pair):
    """The hooks InternVL adds (QK-norm, pixel shuffle, projector norm) are documented, fire, and
    an edit there changes the logits."""
    model, _ = pair
    enc = processor_batch(model.processor, BATCHES[0])
    assert all(template(n) in SHAPES for n in model.hook_dict)
    with torch.no_grad():
        _, everything = model.run_with_cache(**enc)
    assert set(everything.keys()) == set(model.hook_dict)  # no dead hook
    names = ["vision_projector.hook_shuffled", "vision_projector.ln.hook_normalized"]
    if model.vlm_cfg.vision.qk_norm:
        names += ["vision_encoder.blocks.0.attn.q_norm.hook_normalized", "vision_encoder.blocks.0.attn.k_norm.hook_normalized"]
    n_views, d = enc["pixel_values"].shape[0], model.vlm_cfg.vision.d_model
    with torch.no_grad():
        clean = model(**enc)
        _, cache = model.run_with_cache(**enc, names_filter=names)
        tokens = model.vlm_cfg.image_seq_length
        assert cache["vision_projector.hook_shuffled"].shape == (n_views, tokens, 4 * d)
        for name in names:
            # Reversing the channels (scaling alone would be undone by the norms).
            edited = model.run_with_hooks(**enc, fwd_hooks=[(name, lambda x, hook: x.flip(-1))])
            assert (edited - clean).abs().max() > 1e-3, name


@pytest.mark.parametrize("field,value,match", [
    ("vision_feature_select_strategy", "full", "only 'default'"),
    ("downsample_ratio", 0.3, "downsample_ratio"),
    ("vision_feature_layer", [-1, -2], "one layer"),
])
def test_unsupported_options_raise(field, value, match):
    config = tiny_internvl_config()
    setattr(config, field, value)
    with pytest.raises(UnsupportedArchitectureError, match=match):
        HookedVLM.from_pretrained(tiny_llava(config))


@pytest.mark.parametrize("field,value", [("use_mean_pooling", False), ("use_absolute_position_embeddings", False)])
def test_unimplemented_tower_options_raise(field, value):
    config = tiny_internvl_config()
    setattr(config.vision_config, field, value)
    with pytest.raises(UnsupportedArchitectureError, match=field):
        HookedVLM.from_pretrained(tiny_llava(config))
