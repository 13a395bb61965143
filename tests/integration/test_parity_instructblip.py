"""InstructBLIP parity with Hugging Face: BLIP tower, Q-Former (self- and cross-attention layers,
an instruction with padding), projection and Llama decoder, on a left-padded batch of two."""

from __future__ import annotations

import pytest
import torch
import transformers

from mmlens import HookedVLM, UnsupportedArchitectureError
from mmlens.models.decoder import positions_from_mask
from mmlens.models.hook_shapes import SHAPES, template
from mmlens.zoo.tiny_blip import save_tiny_instructblip, tiny_instructblip, tiny_instructblip_config
from tests.conftest import make_batch

CASES = {
    "llama-mha": dict(),
    "llama-gqa-no-qkv-bias-every-layer-cross": dict(n_kv_heads=2, qkv_bias=False, cross_attention_frequency=1),
}


@pytest.fixture(scope="module", params=list(CASES))
def blip_pair(request, tmp_path_factory):
    path = save_tiny_instructblip(tmp_path_factory.mktemp("instructblip"), tiny_instructblip_config(**CASES[request.param]))
    hf = transformers.InstructBlipForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
    return HookedVLM.from_pretrained(str(path)), hf


def blip_batch(model, seed=0):
    """Left-padded prompts (row 1 by 3), and instructions for the Q-Former (row 1 right-padded by 2)."""
    ids, px, mask = make_batch(model.vlm_cfg, batch=2, pad=(0, 3), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    qids = torch.randint(1, model.vlm_cfg.qformer.d_vocab, (2, 7), generator=g)
    qmask = torch.ones_like(qids)
    qids[1, 5:], qmask[1, 5:] = 0, 0
    return dict(input_ids=ids, attention_mask=mask, pixel_values=px, qformer_input_ids=qids, qformer_attention_mask=qmask)


def test_logits_and_every_tower_match_hugging_face(blip_pair):
    model, hf = blip_pair
    enc = blip_batch(model)
    mask = enc["attention_mask"]
    with torch.no_grad():
        ref = hf(**enc)
        towers = hf.get_image_features(enc["pixel_values"], enc["qformer_input_ids"], enc["qformer_attention_mask"],
                                       output_hidden_states=True, output_attentions=True)
        ref_pos = hf(**enc, position_ids=positions_from_mask(mask), output_hidden_states=True)
        logits, cache = model.run_with_cache(**enc)
        fused = model(**enc)
    valid = mask.bool()
    torch.testing.assert_close(logits[valid], ref_pos.logits[valid], atol=1e-4, rtol=0)
    torch.testing.assert_close(logits[0], ref.logits[0], atol=1e-4, rtol=0)  # unpadded row: no position_ids needed
    torch.testing.assert_close(fused, logits, atol=1e-5, rtol=0)
    # Vision tower: every block, then the post-layernorm output (CLS kept) the Q-Former reads.
    vision = towers.vision_outputs
    for layer in range(model.vlm_cfg.vision.n_layers):
        torch.testing.assert_close(cache[f"vision_encoder.blocks.{layer}.hook_resid_post"], vision.hidden_states[layer + 1],
                                   atol=1e-4, rtol=0)
        torch.testing.assert_close(cache[f"vision_encoder.blocks.{layer}.attn.hook_pattern"], vision.attentions[layer], atol=1e-5, rtol=0)
    torch.testing.assert_close(cache["vision_encoder.hook_features"], vision.last_hidden_state, atol=1e-4, rtol=0)
    # Q-Former: every layer's output, self-attention pattern and (where present) cross-attention pattern.
    qformer = towers.qformer_outputs
    # Hugging Face's "attentions" also record the cross-attention modules (".crossattention.attention").
    n_seq = qformer.hidden_states[0].shape[1]
    self_patterns = [a for a in qformer.attentions if a.shape[-1] == n_seq]
    n_cross = 0
    for layer, block in enumerate(model.qformer.blocks):
        torch.testing.assert_close(cache[f"qformer.blocks.{layer}.hook_resid_post"], qformer.hidden_states[layer + 1], atol=1e-4, rtol=0)
        torch.testing.assert_close(cache[f"qformer.blocks.{layer}.attn.hook_pattern"], self_patterns[layer], atol=1e-5, rtol=0)
        if block.has_cross_attention:
            torch.testing.assert_close(cache[f"qformer.blocks.{layer}.cross_attn.hook_pattern"], qformer.cross_attentions[n_cross], atol=1e-5, rtol=0)
            n_cross += 1
    assert n_cross == len(qformer.cross_attentions) > 0
    torch.testing.assert_close(cache["qformer.hook_embed"], qformer.hidden_states[0], atol=1e-4, rtol=0)
    # Projection: what is written into the image slots.
    image = enc["input_ids"] == model.vlm_cfg.image_token_index
    projected = towers.pooler_output
    torch.testing.assert_close(cache["hook_image_embed"], projected, atol=1e-4, rtol=0)
    torch.testing.assert_close(cache["hook_merged_embed"][image], projected.flatten(0, 1), atol=1e-4, rtol=0)
    # Decoder residual stream.
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(cache["resid_pre", layer][valid], ref_pos.language_model_outputs.hidden_states[layer][valid], atol=1e-4, rtol=0)


def test_the_instruction_changes_the_image_tokens(blip_pair):
    """The Q-Former reads the instruction: another instruction gives other image embeddings (and
    without one the queries run alone), so a test that ignored it would fail."""
    model, _ = blip_pair
    enc = blip_batch(model)
    with torch.no_grad():
        _, a = model.run_with_cache(**enc, names_filter="hook_image_embed")
        _, b = model.run_with_cache(**(enc | {"qformer_input_ids": enc["qformer_input_ids"].flip(-1)}), names_filter="hook_image_embed")
        _, c = model.run_with_cache(**(enc | {"qformer_input_ids": None, "qformer_attention_mask": None}), names_filter="hook_image_embed")
    assert (a["hook_image_embed"] - b["hook_image_embed"]).abs().max() > 1e-3
    assert (a["hook_image_embed"] - c["hook_image_embed"]).abs().max() > 1e-3


def test_generate_matches(blip_pair):
    model, hf = blip_pair
    enc = blip_batch(model, seed=3)
    ref = hf.generate(**enc, max_new_tokens=5, do_sample=False)
    ours = model.generate(**enc, max_new_tokens=5)
    # Hugging Face's decoder-only generate returns the prompt followed by the new tokens.
    assert torch.equal(ours, ref)


def test_qformer_hooks_are_documented_fire_and_matter(blip_pair):
    """Every new hook point has a documented shape, fires, and an edit there changes the logits."""
    model, _ = blip_pair
    enc = blip_batch(model)
    assert all(template(n) in SHAPES for n in model.hook_dict)
    new = [n for n in model.hook_dict if n.startswith("qformer.") or n.startswith("vision_encoder.ln_post")]
    # The last layer's instruction feed-forward is computed (as Hugging Face does) but only the
    # queries leave the Q-Former: those two hooks are documented as not reaching the output.
    last = f"qformer.blocks.{model.vlm_cfg.qformer.n_layers - 1}."
    dead = {last + n for n in ("mlp.hook_pre", "mlp.hook_post", "ln2.hook_scale", "ln2.hook_normalized")}
    with torch.no_grad():
        clean, cache = model.run_with_cache(**enc)
    assert set(new) <= set(cache.keys())
    for name in new:
        if name.endswith("hook_scale"):
            edit = lambda x, hook: x * 2  # noqa: E731
        else:
            edit = lambda x, hook: x.flip(-1)  # noqa: E731 (reversing channels survives the norms)
        with torch.no_grad():
            edited = model.run_with_hooks(**enc, fwd_hooks=[(name, edit)])
        changed = bool((edited - clean).abs().max() > 1e-4)
        assert changed != (name in dead), name


def test_flan_t5_variants_are_refused():
    base = tiny_instructblip_config()
    t5 = transformers.T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    config = transformers.InstructBlipConfig(vision_config=base.vision_config.to_dict(),
                                             qformer_config=base.qformer_config.to_dict(),
                                             text_config=t5.to_dict(), num_query_tokens=6, image_token_index=4)
    with pytest.raises(UnsupportedArchitectureError, match="encoder-decoder"):
        HookedVLM.from_pretrained(tiny_instructblip(config))
