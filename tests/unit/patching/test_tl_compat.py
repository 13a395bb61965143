"""TransformerLens' own ``get_act_patch_*`` run on a HookedVLM and agree with ``activation_patch``."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tl_patching

from mmlens.patching import activation_patch
from mmlens.patching.metrics import logit_diff

A, B = 5, 9  # a fixed answer pair: the metric is logit[A] - logit[B] at the last position


def _tl_metric(logits):
    return logits[0, -1, A] - logits[0, -1, B]


def _some_positions(inputs) -> list[int]:
    """Every text position and three image positions (TransformerLens runs one full forward each)."""
    image = inputs.groups["image"][0].nonzero().flatten().tolist()
    text = (~inputs.groups["image"][0]).nonzero().flatten().tolist()
    return sorted([*text, image[0], image[len(image) // 2], image[-1]])


@pytest.mark.parametrize(
    "tl_fn, hook",
    [
        (tl_patching.get_act_patch_resid_pre, "resid_pre"),
        (tl_patching.get_act_patch_resid_mid, "resid_mid"),
        (tl_patching.get_act_patch_attn_out, "attn_out"),
        (tl_patching.get_act_patch_mlp_out, "mlp_out"),
    ],
)
def test_transformer_lens_position_patching_equals_activation_patch(tiny, pair, tl_fn, hook):
    model, _ = tiny
    clean, corrupt, edited = pair
    _, cache = model.run_with_cache(clean)
    positions = _some_positions(clean)
    index_df = pd.DataFrame([(layer, p) for layer in range(model.cfg.n_layers) for p in positions], columns=["layer", "pos"])
    theirs = tl_fn(model, corrupt, cache, _tl_metric, index_axis_names=None, index_df=index_df)
    ours = activation_patch(model, clean, corrupt, hook=hook, metric=logit_diff(A, B), edited=edited)
    ours_raw = ours.raw[:, positions].flatten()
    assert (ours_raw - ours_raw.mean()).abs().max() > 1e-3  # the grid is not constant: the comparison can fail
    torch.testing.assert_close(theirs.cpu(), ours_raw, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "tl_fn, hook",
    [(tl_patching.get_act_patch_attn_head_out_all_pos, "z"), (tl_patching.get_act_patch_attn_head_pattern_all_pos, "pattern")],
)
def test_transformer_lens_head_patching_equals_activation_patch(tiny, pair, tl_fn, hook):
    model, _ = tiny
    clean, corrupt, edited = pair
    _, cache = model.run_with_cache(clean)
    theirs = tl_fn(model, corrupt, cache, _tl_metric)
    ours = activation_patch(model, clean, corrupt, hook=hook, metric=logit_diff(A, B), edited=edited)
    assert theirs.shape == ours.raw.shape
    assert (ours.raw - ours.raw.mean()).abs().max() > 1e-3  # the grid is not constant: the comparison can fail
    torch.testing.assert_close(theirs.cpu(), ours.raw, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_transformer_lens_block_every_stacks_three_sites(tiny, pair):
    model, _ = tiny
    clean, corrupt, edited = pair
    _, cache = model.run_with_cache(clean)
    every = tl_patching.get_act_patch_block_every(model, corrupt, cache, _tl_metric)
    mlp = activation_patch(model, clean, corrupt, hook="mlp_out", metric=logit_diff(A, B), edited=edited)
    torch.testing.assert_close(every[2].cpu(), mlp.raw, atol=1e-5, rtol=1e-5)


def test_model_exposes_what_transformer_lens_reads(tiny, pair):
    model, _ = tiny
    clean, _, _ = pair
    assert model.cfg.device == "cpu" and model.cfg.n_heads == model.vlm_cfg.decoder.n_heads
    assert model.cfg.n_key_value_heads == model.vlm_cfg.decoder.n_key_value_heads
    assert clean.shape == clean.input_ids.shape
    assert model.to_tokens(clean) is clean
