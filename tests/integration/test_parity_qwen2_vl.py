"""Qwen2-VL and Qwen2.5-VL parity with Hugging Face: the packed vision tower (2-D rotary, attention
within each image; Qwen2.5's windows and full-attention layers), the patch merger, M-RoPE positions,
and left-padded batches of two images of different sizes from the family's own processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers.vision_utils import get_vision_window_index

from mmlens import HookedVLM, UnsupportedArchitectureError
from mmlens.components.mrope import mrope_positions
from mmlens.models.hook_shapes import SHAPES, template
from mmlens.zoo.tiny_qwen_vl import save_tiny_qwen_vl, tiny_qwen2_5_vl_config, tiny_qwen2_vl_config, tiny_qwen_vl
from tests.integration.anyres_batch import assert_decoder_parity

CONFIGS = {"qwen2-vl": tiny_qwen2_vl_config, "qwen2.5-vl": tiny_qwen2_5_vl_config}
# (width, height): 36 and 25 image tokens; 8 and 30 (several attention windows each in Qwen2.5-VL).
BATCHES = [[(70, 30), (40, 40)], [(30, 60), (100, 45)]]
QUESTIONS = ["Is the circle red?", "Which shape is left of the square?"]


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    path = save_tiny_qwen_vl(tmp_path_factory.mktemp("qwen_vl"), CONFIGS[request.param]())
    hf = transformers.AutoModelForImageTextToText.from_pretrained(path).eval()
    return HookedVLM.from_pretrained(str(path)), hf


def processor_batch(processor, sizes, seed=0):
    """The family's own processor output for random images of ``sizes`` with the chat template."""
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                                           add_generation_prompt=True) for q in QUESTIONS[: len(sizes)]]
    return dict(processor(images=images, text=texts, return_tensors="pt", padding=True))


def hf_patch_order(hf, grid):
    """Hugging Face's Qwen2.5-VL tower runs the patches window by window: the processor-order index
    of each of its rows (the identity for Qwen2-VL)."""
    vc = hf.config.vision_config
    n = int(grid.prod(-1).sum())
    if not hasattr(vc, "window_size"):
        return torch.arange(n)
    window_index, _ = get_vision_window_index(grid, vc.spatial_merge_size, vc.window_size, vc.patch_size)
    unit = vc.spatial_merge_size**2
    return (window_index[:, None] * unit + torch.arange(unit)).flatten()


@pytest.mark.parametrize("sizes", BATCHES, ids=str)
def test_logits_and_activations_match_hugging_face(pair, sizes):
    model, hf = pair
    enc = processor_batch(model.processor, sizes)
    ids, mask, px, grid = enc["input_ids"], enc["attention_mask"], enc["pixel_values"], enc["image_grid_thw"]
    image = ids == hf.config.image_token_id
    assert image.sum(-1)[0] != image.sum(-1)[1] and not bool(mask.all())  # different token counts, left padding
    with torch.no_grad():
        ref = hf(**enc, output_hidden_states=True)
        logits, cache = model.run_with_cache(**enc)
        fused = model(**enc)
        tower = hf.model.visual(px, grid_thw=grid, output_hidden_states=True)
    order = hf_patch_order(hf, grid)
    for layer in range(model.vlm_cfg.vision.n_layers):
        ours = cache[f"vision_encoder.blocks.{layer}.hook_resid_post"][0]
        torch.testing.assert_close(ours[order], tower.hidden_states[layer + 1], atol=1e-4, rtol=0)
    torch.testing.assert_close(cache["vision_encoder.hook_features"][0][order], tower.last_hidden_state, atol=1e-4, rtol=0)
    torch.testing.assert_close(cache["hook_image_embed"][0], tower.pooler_output, atol=1e-4, rtol=0)
    assert_decoder_parity(logits, cache, ref, ids, mask, tower.pooler_output, hf.config.image_token_id)
    # No attention hook attached: the fused path gives the same logits.
    torch.testing.assert_close(fused, logits, atol=1e-5, rtol=0)


def test_mrope_positions_equal_get_rope_index(pair):
    model, hf = pair
    enc = processor_batch(model.processor, BATCHES[1])
    ref, _ = hf.model.get_rope_index(enc["input_ids"], enc["mm_token_type_ids"], enc["image_grid_thw"],
                                     attention_mask=enc["attention_mask"])
    ours = mrope_positions(enc["input_ids"], enc["attention_mask"], enc["image_grid_thw"], hf.config.image_token_id, 2)
    assert torch.equal(ours, ref)
    assert not torch.equal(ours[1], ours[2])  # height and width rows differ on the image tokens


def test_generate_matches(pair):
    model, hf = pair
    enc = processor_batch(model.processor, BATCHES[1], seed=1)
    ref = hf.generate(**enc, max_new_tokens=5, do_sample=False)
    ours = model.generate(**enc, max_new_tokens=5)
    assert torch.equal(ours, ref)


def test_packed_tower_hooks_fire_with_documented_shapes_and_matter(pair):
    """The hooks of the packed tower and the merger are documented, fire, and an edit there changes the logits."""
    model, _ = pair
    enc = processor_batch(model.processor, BATCHES[0])
    assert all(template(n) in SHAPES for n in model.hook_dict)
    with torch.no_grad():
        clean, everything = model.run_with_cache(**enc)
    assert set(everything.keys()) == set(model.hook_dict)  # no dead hook
    n_patches, d = enc["pixel_values"].shape[0], model.vlm_cfg.vision.d_model
    assert everything["vision_projector.hook_merged"].shape == (1, n_patches // 4, 4 * d)
    assert everything["vision_encoder.blocks.0.attn.hook_pattern"].shape[-2:] == (n_patches, n_patches)
    names = ["vision_projector.hook_merged", "vision_encoder.blocks.0.attn.hook_rot_q", "vision_projector.ln.hook_normalized"]
    with torch.no_grad():
        for name in names:
            edited = model.run_with_hooks(**enc, fwd_hooks=[(name, lambda x, hook: x.flip(-1))])
            assert (edited - clean).abs().max() > 1e-3, name


def test_attention_stays_within_each_image(pair):
    """Packed images never attend to each other: the vision pattern is block-diagonal per image."""
    model, _ = pair
    enc = processor_batch(model.processor, BATCHES[0])
    counts = enc["image_grid_thw"].prod(-1).tolist()
    with torch.no_grad():
        _, cache = model.run_with_cache(**enc, names_filter=lambda n: n.endswith("attn.hook_pattern") and "vision" in n)
    pattern = cache["vision_encoder.blocks.1.attn.hook_pattern"][0]
    first = counts[0]
    assert float(pattern[:, :first, first:].abs().max()) == 0.0 and float(pattern[:, first:, :first].abs().max()) == 0.0


def test_videos_are_refused(pair):
    model, _ = pair
    enc = processor_batch(model.processor, BATCHES[0])
    with pytest.raises(UnsupportedArchitectureError, match="videos"):
        model(**enc, pixel_values_videos=enc["pixel_values"], video_grid_thw=enc["image_grid_thw"])


@pytest.mark.parametrize("where,field,value,match", [
    ("text_config", "rope_parameters", {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 2, 2]}, "mrope_section"),
    ("vision_config", "in_channels", 1, "RGB"),
])
def test_unsupported_options_raise(where, field, value, match):
    config = tiny_qwen2_vl_config()
    setattr(getattr(config, where), field, value)
    with pytest.raises(UnsupportedArchitectureError, match=match):
        HookedVLM.from_pretrained(tiny_qwen_vl(config))
