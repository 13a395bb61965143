"""Token pruning: identities, mask = drop, cached decoding, batching, rankings, FLOPs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from mmlens import HookedVLM
from mmlens.components.rotary import apply_rotary
from mmlens.pruning import FastV, HiMAP, Truncate, flops
from mmlens.pruning.policies import Plan, Stage
from mmlens.zoo.geometries import llava15_config
from tests.conftest import make_batch


@pytest.fixture(scope="module")
def model(checkpoint_factory):
    return HookedVLM.from_pretrained(checkpoint_factory(n_kv_heads=2, n_layers=4, image_size=48))  # 36 image tokens


@pytest.fixture(scope="module")
def batch(model):
    return make_batch(model.vlm_cfg, batch=2, n_text=10, pad=(0, 3), seed=3)


def run(model, batch, **kw):
    ids, px, mask = batch
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=px, attention_mask=mask, **kw)


@pytest.mark.parametrize("policy", [FastV(2, 0.01), Truncate(2, keep=36, mode="drop"), HiMAP(1, 0.01, 3, 0.01)])
def test_pruning_nothing_is_the_unpruned_model(model, batch, policy):
    torch.testing.assert_close(run(model, batch, prune=policy), run(model, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [lambda m: FastV(2, 0.5, mode=m), lambda m: HiMAP(1, 0.5, 3, 0.5, mode=m),
                                  lambda m: Truncate(2, keep=5, mode=m)])
def test_mask_and_drop_modes_agree_at_kept_positions(model, batch, make):
    plan = make("drop").plan(model.cfg.n_layers)
    dropped = run(model, batch, prune=plan)
    kept = plan.kept[max(plan.kept)]
    masked = run(model, batch, prune=make("mask"))
    gathered = torch.gather(masked, 1, kept[..., None].expand(-1, -1, masked.shape[-1]))
    valid = torch.gather(batch[2], 1, kept).bool()
    torch.testing.assert_close(dropped[valid], gathered[valid], atol=1e-5, rtol=0)
    assert dropped.shape[1] < masked.shape[1]


def test_batch_equals_each_sample_alone(model, batch):
    ids, px, mask = batch
    policy = HiMAP(1, 0.5, 3, 0.75)
    together = run(model, batch, prune=policy)
    for r, pad in enumerate((0, 3)):
        alone = run(model, (ids[r : r + 1, pad:], px[r : r + 1], mask[r : r + 1, pad:]), prune=policy)
        torch.testing.assert_close(together[r, -1], alone[0, -1], atol=1e-5, rtol=0)


def test_rankings_follow_the_previous_layers_head_mean_attention(model, batch):
    ids, px, mask = batch
    with torch.no_grad():
        _, cache = model.run_with_cache(input_ids=ids, pixel_values=px, attention_mask=mask)
    image = ids == model.vlm_cfg.image_token_index
    attn = cache["pattern", 1].mean(1)  # layer K-1 = 1 for K = 2
    for policy, score in [
        (FastV(2, 0.5, rank_by="last_row"), attn[:, -1]),
        (FastV(2, 0.5, rank_by="all_rows"), (attn * mask[:, :, None]).sum(1) / mask.sum(-1, keepdim=True)),
        (HiMAP(2, 0.5, 3, 0.5), (attn * ((torch.arange(ids.shape[1]) >= 3 + 36 + torch.tensor([[0], [3]])) & mask.bool())[:, :, None]).sum(1)),
    ]:
        plan = policy.plan(model.cfg.n_layers)
        run(model, batch, prune=plan)
        kept = plan.kept[2]
        for r in range(2):
            expected = set(score[r].masked_fill(~image[r], -1e9).topk(18).indices.tolist())
            got = {int(i) for i in kept[r] if image[r, i]}
            assert got == expected, policy


def test_kept_tokens_keep_their_original_rotary_positions(model, batch):
    ids, px, mask = batch
    store = {}
    hooks = [("blocks.3.attn.hook_k", lambda x, hook: store.setdefault("k", x)),
             ("blocks.3.attn.hook_rot_k", lambda x, hook: store.setdefault("rot", x))]
    plan = FastV(2, 0.5).plan(model.cfg.n_layers)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(input_ids=ids, pixel_values=px, attention_mask=mask, prune=plan)
    kept = plan.kept[2]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cos, sin = model.rotary(torch.gather(positions, 1, kept), store["k"].dtype)
    torch.testing.assert_close(store["rot"], apply_rotary(store["k"], cos, sin))
    assert store["k"].shape[1] == ids.shape[1] - 18


@dataclass(frozen=True)
class FixedKeep:
    """A test policy that keeps a fixed set of image positions at a layer (drop mode)."""

    layer: int
    scores: torch.Tensor  # [batch, prompt_len]

    def plan(self, n_layers):
        return Plan([Stage(self.layer, lambda n: n // 2, "fixed")], "drop", n_layers)


def test_cached_decoding_equals_recomputing_with_the_same_kept_set(model, batch, monkeypatch):
    from mmlens.pruning import ranking

    ids, px, mask = batch
    pad = lambda attn, state: torch.nn.functional.pad(scores, (0, state.valid.shape[1] - scores.shape[1]))  # noqa: E731
    monkeypatch.setitem(ranking.SCORERS, "fixed", pad)
    scores = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0))
    policy = FixedKeep(2, scores)
    fast = model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=5, prune=policy, eos_token_id=-1)
    seq, m = ids, mask
    for _ in range(5):
        with torch.no_grad():
            logits = model(input_ids=seq, pixel_values=px, attention_mask=m, prune=policy)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
        m = torch.cat([m, torch.ones_like(m[:, :1])], 1)
    assert torch.equal(fast, seq)


def test_flops_estimate_reproduces_seed_003_table_1():
    cfg = llava15_config("7b")
    for policy, tflops in [(None, 2.98), (FastV(2, 0.5), 1.56), (HiMAP(2, 0.5, 8, 0.75), 0.73)]:
        assert flops(cfg, 0, 576, policy) / 1e12 == pytest.approx(tflops, rel=0.01)
    assert flops(llava15_config("13b"), 0, 576, HiMAP(3, 0.5, 8, 0.75)) / 1e12 == pytest.approx(1.36, rel=0.01)


def test_exact_flops_count_every_matmul(model):
    cfg = model.cfg
    d, m, h, kv, dh, V = cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_vocab
    s = 10 + 36
    layer = 2 * s * d * h * dh * 2 + 2 * s * d * kv * dh * 2 + 2 * h * s * s * dh * 2 + 2 * s * d * m * 3
    assert flops(model.vlm_cfg, 10, 36, method="exact") == cfg.n_layers * layer + 2 * d * V * s
    pruned = flops(model.vlm_cfg, 10, 36, FastV(2, 0.5), method="exact")
    assert pruned < flops(model.vlm_cfg, 10, 36, method="exact")
    assert flops(model.vlm_cfg, 10, 36, FastV(2, 0.5, mode="mask"), method="exact") == flops(model.vlm_cfg, 10, 36, method="exact")


def test_truncating_every_image_token_equals_an_onward_knockout_of_the_image(model, batch):
    from mmlens.interventions import knockout, onward

    ids, px, mask = batch
    image = ids == model.vlm_cfg.image_token_index
    hooks = knockout({"image": image, "rest": ~image}, "image", "rest", onward(2, model.cfg.n_layers))
    with torch.no_grad():
        expected = model.run_with_hooks(input_ids=ids, pixel_values=px, attention_mask=mask, fwd_hooks=hooks)
    truncated = run(model, batch, prune=Truncate(2, keep=0, mode="mask"))
    torch.testing.assert_close(truncated[~image & mask.bool()], expected[~image & mask.bool()], atol=1e-5, rtol=0)


def test_cliff_layer_follows_its_definition(checkpoint_factory):
    from mmlens.data.shapes import shapes_dataset
    from mmlens.studies import cliff_layer, evaluate

    model = HookedVLM.from_pretrained(checkpoint_factory(n_kv_heads=2))
    samples = shapes_dataset(4, seed=0)
    result = cliff_layer(model, samples, tolerance=0.0, progress=False)
    assert result.baseline == evaluate(model, samples).accuracy
    acc = result.to_dataframe()["accuracy"].tolist()
    ok = [abs(a - result.baseline) <= 0.0 for a in acc]
    expected = next((i for i in range(len(acc)) if all(ok[i:])), None)
    assert result.cliff == expected
    assert acc[-1] == evaluate(model, samples, Truncate(model.cfg.n_layers - 1, 0)).accuracy
