"""Vision-only and early-stopped runs against the full run's cache."""

from __future__ import annotations

import pytest
import torch

from mmlens import HookedVLM, MMLensError
from tests.conftest import make_batch


@pytest.fixture(scope="module")
def model(checkpoint_factory):
    return HookedVLM.from_pretrained(checkpoint_factory(n_kv_heads=2, n_layers=4))


@pytest.fixture(scope="module")
def full(model):
    ids, px, mask = make_batch(model.vlm_cfg, batch=2, n_text=6, pad=(0, 1), seed=3)
    with torch.no_grad():
        logits, cache = model.run_with_cache(input_ids=ids, pixel_values=px, attention_mask=mask)
    return (ids, px, mask), cache


def _fired(model, names):
    """Hooks counting calls at ``names``, and the counts."""
    counts = dict.fromkeys(names, 0)

    def count(x, hook):
        counts[hook.name] += 1

    return [(n, count) for n in names], counts


DOWNSTREAM = ["vision_projector.hook_pre", "hook_image_embed", "hook_embed", "hook_merged_embed",
              "blocks.0.hook_resid_pre", "ln_final.hook_normalized"]  # fmt: skip


def test_a_vision_tower_filter_runs_only_the_tower(model, full):
    (_, px, _), cache = full
    downstream = [n for n in DOWNSTREAM if n in model.hook_dict]
    assert "hook_embed" in downstream and "blocks.0.hook_resid_pre" in downstream
    hooks, counts = _fired(model, downstream)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        out, vcache = model.run_with_cache(pixel_values=px, names_filter=lambda n: n.startswith("vision_encoder."))
    assert counts == dict.fromkeys(downstream, 0)  # neither the projector nor the decoder ran
    tower = [n for n in cache.keys() if n.startswith("vision_encoder.")]
    assert sorted(vcache.keys()) == sorted(tower)
    for name in tower:
        torch.testing.assert_close(vcache[name], cache[name], atol=0, rtol=0, msg=name)
    torch.testing.assert_close(out, cache["vision_encoder.hook_features"], atol=0, rtol=0)


def test_a_projector_filter_adds_the_projector_but_no_decoder(model, full):
    (ids, px, mask), cache = full
    decoder = ["hook_embed", "hook_merged_embed", "blocks.0.hook_resid_pre"]
    hooks, counts = _fired(model, decoder)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        out, vcache = model.run_with_cache(pixel_values=px, names_filter=["hook_image_embed"])
    assert counts == dict.fromkeys(decoder, 0)
    # The full run cached the tower's patterns (explicit attention), this one runs fused SDPA.
    torch.testing.assert_close(out, cache["hook_image_embed"], atol=1e-5, rtol=0)
    assert list(vcache.keys()) == ["hook_image_embed"]
    assert model.vision_stage_for(["hook_image_embed", "blocks.0.hook_resid_pre"]) is None  # mixed: full run


def test_vision_stage_needs_pixels_and_a_known_stage(model):
    with pytest.raises(MMLensError, match="pixel_values"):
        model(vision_stage="features")
    with pytest.raises(MMLensError, match="vision_stage"):
        model(pixel_values=torch.zeros(1, 3, 8, 8), vision_stage="decoder")


@pytest.mark.parametrize("k", [0, 1, 3, 4, -1])
def test_stop_at_layer_returns_the_residual_entering_block_k(model, full, k):
    (ids, px, mask), cache = full
    n = model.cfg.n_layers
    stop = k % n if k < 0 else k
    with torch.no_grad():
        out, early = model.run_with_cache(input_ids=ids, pixel_values=px, attention_mask=mask, stop_at_layer=k)
    expected = cache["hook_merged_embed"] if stop == 0 else cache[f"blocks.{stop - 1}.hook_resid_post"]
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    assert f"blocks.{stop}.hook_resid_pre" not in early and "ln_final.hook_normalized" not in early
    if stop:
        torch.testing.assert_close(early[f"blocks.{stop - 1}.hook_resid_post"], expected, atol=0, rtol=0)


def test_stop_at_layer_out_of_range_is_explained(model, full):
    (ids, px, mask), _ = full
    with pytest.raises(MMLensError, match="stop_at_layer=5"):
        model(input_ids=ids, pixel_values=px, attention_mask=mask, stop_at_layer=5)
