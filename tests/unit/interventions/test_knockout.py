"""Attention knockout against an independent plain-PyTorch implementation."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from transformer_lens.hook_points import HookPoint
from mmlens import EmptyGroupError, HookedVLM, LayerOutOfRangeError
from mmlens.data.shapes import make_sample
from mmlens.interventions import block_attention, knockout, onward, paper_window_size, window
from mmlens.inputs import sample_inputs


@pytest.fixture(scope="module")
def setup(checkpoint_factory):
    path = checkpoint_factory(n_kv_heads=2)
    model = HookedVLM.from_pretrained(path)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(path).eval()
    inputs = sample_inputs(model, make_sample(3, "ChooseAttr"))
    return model, hf, inputs


def reference_logits(hf, inputs, extra_masks: dict[int, torch.Tensor]) -> torch.Tensor:
    """Plain PyTorch forward of the HF weights with an additive [q, k] mask added at some layers."""
    lm = hf.model.language_model
    ids = inputs.input_ids
    with torch.no_grad():
        emb = lm.embed_tokens(ids)
        feats = torch.cat(list(hf.model.get_image_features(pixel_values=inputs.pixel_values).pooler_output))
        x = emb.masked_scatter((ids == hf.config.image_token_id)[..., None], feats)
        n = ids.shape[1]
        cos, sin = lm.rotary_emb(x, torch.arange(n)[None])
        causal = torch.full((n, n), float("-inf")).triu(1)
        for i, layer in enumerate(lm.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = a.q_proj(h).view(1, n, -1, a.head_dim).transpose(1, 2)
            k = a.k_proj(h).view(1, n, -1, a.head_dim).transpose(1, 2)
            v = a.v_proj(h).view(1, n, -1, a.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            scores = q @ k.transpose(-1, -2) * a.scaling + causal + extra_masks.get(i, 0.0)
            z = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, n, -1)
            x = x + a.o_proj(z)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return hf.lm_head(lm.norm(x))


@pytest.mark.parametrize("src,dst,layers", [("image", "last", [0, 1]), ("question", "last", [2]), ("related", "question", [1, 2]), ("last", "last", [0, 1, 2])])
def test_knockout_matches_an_additive_mask_in_plain_pytorch(setup, src, dst, layers):
    model, hf, inputs = setup
    g = inputs.groups
    additive = torch.where(g[dst][0][:, None] & g[src][0][None, :], float("-inf"), 0.0)
    ref = reference_logits(hf, inputs, {layer: additive for layer in layers})
    with torch.no_grad():
        ours = model.run_with_hooks(inputs, fwd_hooks=knockout(g, src, dst, layers, n_layers=model.cfg.n_layers))
        clean = model(inputs)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    assert (ours[0, -1] - clean[0, -1]).abs().max() > 1e-4


def test_blocking_an_empty_group_is_the_identity(setup):
    model, _, inputs = setup
    empty = inputs.groups["image"] & False
    with pytest.raises(EmptyGroupError, match="src mask"):
        knockout(inputs.groups, empty, "last", range(3))
    hooks = knockout(inputs.groups, empty, "last", range(3), allow_empty=True)
    with torch.no_grad():
        # Same (explicit) attention path with a do-nothing hook at the same points.
        clean = model.run_with_hooks(inputs, fwd_hooks=[(name, lambda x, hook: x) for name, _ in hooks])
        out = model.run_with_hooks(inputs, fwd_hooks=hooks)
    torch.testing.assert_close(out, clean, atol=0, rtol=0)


def test_pre_softmax_blocking_all_but_one_key_gives_it_probability_one(setup):
    model, _, inputs = setup
    g = inputs.groups
    keep = g["image"] & (torch.cumsum(g["image"].int(), -1) == 1)  # the first image position
    hooks = knockout(g, ~keep, "last", [1])
    store = {}
    with torch.no_grad():
        model.run_with_hooks(inputs, fwd_hooks=hooks + [("blocks.1.attn.hook_pattern", lambda x, hook: store.setdefault("p", x))])
    row = store["p"][0, :, -1]
    assert torch.allclose(row[:, keep[0]], torch.ones(row.shape[0], 1))


def test_post_softmax_zeroes_without_renormalising(setup):
    model, _, inputs = setup
    g = inputs.groups
    store = {}
    hooks = knockout(g, "image", "last", [1], mode="post_softmax")
    with torch.no_grad():
        model.run_with_hooks(inputs, fwd_hooks=hooks + [("blocks.1.attn.hook_pattern", lambda x, hook: store.setdefault("p", x.clone()))])
    row = store["p"][0, :, -1]
    assert (row[:, g["image"][0]] == 0).all()
    assert (row.sum(-1) < 1 - 1e-3).all()


def test_heads_subset_and_finfo_fill():
    scores = torch.zeros(1, 3, 4, 4)
    src = torch.tensor([[True, False, False, False]])
    dst = torch.tensor([[False, False, False, True]])
    out = block_attention(src, dst, heads=[1], fill="finfo_min")(scores.clone(), hook=HookPoint())
    assert out[0, 1, 3, 0] == torch.finfo(torch.float32).min
    assert out[0, 0].abs().sum() == 0 and out[0, 2].abs().sum() == 0 and out[0, 1, :3].abs().sum() == 0


def test_windows_and_scopes():
    assert list(window(0, 9, 32)) == list(range(0, 5))
    assert list(window(10, 9, 32)) == list(range(6, 15))
    assert list(window(31, 9, 32)) == list(range(27, 32))
    assert list(window(3, 7, 6)) == list(range(0, 6))
    assert list(onward(4, 6)) == [4, 5]
    with pytest.raises(LayerOutOfRangeError, match="0..31"):
        window(32, 9, 32)
    with pytest.raises(LayerOutOfRangeError):
        knockout({"a": torch.ones(1, 2, dtype=torch.bool)}, "a", "a", [5], n_layers=3)


def test_paper_window_scales_with_depth():
    assert [paper_window_size(n) for n in (1, 4, 28, 32, 40, 80)] == [1, 1, 9, 9, 11, 23]
    assert list(window(0, paper_window_size(4), 4)) == [0]  # one layer per window on a 4-layer model
