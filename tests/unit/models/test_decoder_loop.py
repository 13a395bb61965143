"""The decoder loop: resuming from a cached residual, prefix caches, pruning plans as values."""

from __future__ import annotations

import pytest
import torch

from mmlens import HookedVLM, MMLensError
from mmlens.models.decoder import KVCache, build_mask
from mmlens.pruning import FastV
from tests.conftest import make_batch


@pytest.fixture(scope="module")
def model(checkpoint_factory):
    return HookedVLM.from_pretrained(checkpoint_factory(n_kv_heads=2, n_layers=4))


@pytest.fixture(scope="module")
def batch(model):
    return make_batch(model.vlm_cfg, batch=2, n_text=8, pad=(0, 2), seed=5)


def test_decode_blocks_resumes_from_a_cached_residual(model, batch):
    ids, px, mask = batch
    with torch.no_grad():
        logits, cache = model.run_with_cache(input_ids=ids, pixel_values=px, attention_mask=mask)
        resumed = model.decode_blocks(cache["resid_pre", 2], mask, start_layer=2)
    valid = mask.bool()
    torch.testing.assert_close(resumed[valid], logits[valid], atol=1e-5, rtol=0)


def test_a_prefix_cache_continues_the_sequence(model, batch):
    """Prefix keys/values (``KVCache.prefix``) + the suffix's residual = the full forward."""
    ids, px, mask = batch
    split = ids.shape[1] - 3
    with torch.no_grad():
        full, cache = model.run_with_cache(input_ids=ids, pixel_values=px, attention_mask=mask)
        kv = [(cache[f"blocks.{l}.attn.hook_rot_k"][:, :split], cache[f"blocks.{l}.attn.hook_v"][:, :split])
              for l in range(model.cfg.n_layers)]
        prefix = KVCache.prefix(kv, mask[:, :split].bool())
        prefix.next_pos = mask[:, :split].sum(-1)
        suffix = model.decode_blocks(cache["hook_merged_embed"][:, split:], mask[:, split:], cache=prefix)
    torch.testing.assert_close(suffix, full[:, split:], atol=1e-5, rtol=0)
    assert prefix.kv[0][0].shape[1] == ids.shape[1]  # the cache now holds the suffix too


def test_the_caller_keeps_the_plan_and_the_model_keeps_nothing(model, batch):
    ids, px, mask = batch
    plan = FastV(2, 0.5).plan(model.cfg.n_layers)
    with torch.no_grad():
        by_plan = model(input_ids=ids, pixel_values=px, attention_mask=mask, prune=plan)
        by_policy = model(input_ids=ids, pixel_values=px, attention_mask=mask, prune=FastV(2, 0.5))
    torch.testing.assert_close(by_plan, by_policy, atol=0, rtol=0)
    image = ids == model.vlm_cfg.image_token_index
    kept = plan.kept[2]
    assert kept.shape[1] == by_plan.shape[1] == ids.shape[1] - image[0].sum() // 2
    assert not hasattr(model, "last_prune")


def test_the_plans_pattern_hook_is_removed_when_the_forward_raises(model, batch):
    ids, px, mask = batch
    plan = FastV(2, 0.5).plan(model.cfg.n_layers)

    def fail(layer, pattern):
        raise RuntimeError("observer failed")

    plan.observe = fail
    with pytest.raises(RuntimeError, match="observer failed"), torch.no_grad():
        model(input_ids=ids, pixel_values=px, attention_mask=mask, prune=plan)
    assert not [name for name, hp in model.hook_dict.items() if hp.has_hooks()]


def test_prune_takes_a_policy_or_a_plan_only(model, batch):
    ids, px, mask = batch
    with pytest.raises(MMLensError, match="prune takes a pruning policy"):
        model(input_ids=ids, pixel_values=px, attention_mask=mask, prune="fastv")


def test_forward_and_generate_read_inputs_the_same_way(model, batch):
    ids, px, mask = batch
    with torch.no_grad():
        positional = model(ids, px, mask)
        keywords = model(input_ids=ids, pixel_values=px, attention_mask=mask)
    torch.testing.assert_close(positional, keywords, atol=0, rtol=0)
    with pytest.raises(MMLensError, match="no input_ids"):
        model(pixel_values=px)
    with pytest.raises(MMLensError, match="no input_ids"):
        model.generate(pixel_values=px)


def test_the_mask_is_causal_padded_and_windowed():
    key_valid = torch.tensor([[False, True, True, True, True]])
    mask = build_mask(key_valid, 5, sliding_window=2).allowed[0, 0]
    expected = torch.tensor([
        [1, 0, 0, 0, 0],  # a padding query sees itself only (keeps its row finite)
        [0, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0],  # window 2: itself and one key back
        [0, 0, 0, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)
