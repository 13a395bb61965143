"""``convention="released_code"`` for pruning and generation, against the authors' procedure
written out here with plain hooks: last-row ranking, a pruned key hidden from its own row, and
re-ranking the whole sequence at every generated token without a cache."""

from __future__ import annotations

import pytest
import torch

from mmlens import HookedVLM
from mmlens.data.shapes import make_sample
from mmlens.inputs import sample_inputs
from mmlens.pruning import FastV, HiMAP, Truncate, with_convention
from mmlens.studies import evaluate
from tests.conftest import make_batch

K, RATIO = 2, 0.5


@pytest.fixture(scope="module")
def model(checkpoint_factory):
    return HookedVLM.from_pretrained(checkpoint_factory(n_kv_heads=2, n_layers=4, image_size=48))  # 36 image tokens


@pytest.fixture(scope="module")
def one(model):
    ids, px, _ = make_batch(model.vlm_cfg, batch=1, n_text=10, seed=5)
    return ids, px


def _image(model, ids):
    return ids == model.vlm_cfg.image_token_index


def _authors_kept(model, ids, px):
    """FastV's released ranking: head-mean attention of layer K-1, last row, top round(n(1-R))."""
    with torch.no_grad():
        _, cache = model.run_with_cache(input_ids=ids, pixel_values=px, names_filter=f"blocks.{K - 1}.attn.hook_pattern")
    row = cache["pattern", K - 1][0].mean(0)[-1]
    image = _image(model, ids)[0]
    n_keep = int(round(int(image.sum()) * (1 - RATIO)))
    keep = row.masked_fill(~image, float("-inf")).topk(n_keep).indices
    hidden = image.clone()
    hidden[keep] = False
    return hidden


def _hide_keys(hidden, n_layers):
    """Hooks hiding the ``hidden`` keys from every row, their own included, from layer K on."""

    def hide(scores, hook):
        return scores.masked_fill(hidden[: scores.shape[-1]], float("-inf"))

    return [(f"blocks.{layer}.attn.hook_attn_scores", hide) for layer in range(K, n_layers)]


def test_with_convention_fills_only_unset_fields():
    assert with_convention(FastV(K, RATIO), "released_code") == FastV(K, RATIO, rank_by="last_row", hide_self=True)
    assert with_convention(FastV(K, RATIO, rank_by="all_rows"), "released_code").rank_by == "all_rows"
    assert with_convention(FastV(K, RATIO), "paper") == FastV(K, RATIO, rank_by="all_rows", hide_self=False)
    assert with_convention(HiMAP(), "released_code") == HiMAP(phi_dp="column", hide_self=True)
    assert with_convention(Truncate(3, 0), "released_code") == Truncate(3, 0, hide_self=True)
    assert with_convention(None, "released_code") is None


def test_paper_defaults_are_unchanged(model, one):
    ids, px = one
    with torch.no_grad():
        for policy, explicit in [
            (FastV(K, RATIO, mode="mask"), FastV(K, RATIO, rank_by="all_rows", mode="mask", hide_self=False)),
            (HiMAP(1, 0.5, 3, 0.5), HiMAP(1, 0.5, 3, 0.5, phi_dp="column", hide_self=False)),
        ]:
            torch.testing.assert_close(model(input_ids=ids, pixel_values=px, prune=policy),
                                       model(input_ids=ids, pixel_values=px, prune=explicit), rtol=0, atol=0)
        a = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=3, prune=FastV(K, RATIO))
        b = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=3, prune=FastV(K, RATIO), rerank_every_step=False)
    assert torch.equal(a, b)


def test_mask_mode_hides_a_pruned_key_from_its_own_row(model, one):
    ids, px = one
    hidden = _authors_kept(model, ids, px)
    L = model.cfg.n_layers
    with torch.no_grad():
        code = model(input_ids=ids, pixel_values=px, prune=FastV(K, RATIO, rank_by="last_row", mode="mask", hide_self=True))
        paper = model(input_ids=ids, pixel_values=px, prune=FastV(K, RATIO, rank_by="last_row", mode="mask"))
        expected = model.run_with_hooks(input_ids=ids, pixel_values=px, fwd_hooks=_hide_keys(hidden, L))
    torch.testing.assert_close(code[0], expected[0], atol=1e-5, rtol=0)
    # Only the pruned positions' own outputs differ between the two.
    torch.testing.assert_close(paper[0, ~hidden], code[0, ~hidden], atol=1e-5, rtol=0)
    assert (paper[0, hidden] - code[0, hidden]).abs().amax() > 1e-4


def _authors_generate(model, ids, px, steps):
    """The released FastV loop: no cache, the whole sequence at every step, ranked by its last row."""
    for _ in range(steps):
        hidden = _authors_kept(model, ids, px)
        with torch.no_grad():
            logits = model.run_with_hooks(input_ids=ids, pixel_values=px, fwd_hooks=_hide_keys(hidden, model.cfg.n_layers))
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


def test_rerank_every_step_is_the_authors_no_cache_loop(model):
    ids, px, _ = make_batch(model.vlm_cfg, batch=1, n_text=10, seed=10)  # a prompt where the two modes part
    steps = 4
    expected = _authors_generate(model, ids, px, steps)
    policy = FastV(K, RATIO, rank_by="last_row")
    got = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=steps, prune=policy, rerank_every_step=True)
    assert got.shape[1] > ids.shape[1] and torch.equal(got, expected[:, : got.shape[1]])  # shorter only at an EOS
    once = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=steps, prune=policy)
    assert not torch.equal(once, got)  # pruned once at prefill, FastV picks other tokens here


def test_rerank_refuses_a_generated_image_token(model):
    from mmlens.errors import MMLensError

    ids, px, _ = make_batch(model.vlm_cfg, batch=1, n_text=10, seed=7)  # this prompt makes the model emit id 4
    with pytest.raises(MMLensError, match="generated the image token"):
        model.generate(input_ids=ids, pixel_values=px, max_new_tokens=6, prune=FastV(K, RATIO, rank_by="last_row"),
                       rerank_every_step=True)


def test_evaluate_under_released_code_uses_every_option(model):
    sample = make_sample(2, "ChooseAttr")
    inputs = sample_inputs(model, sample)
    code = evaluate(model, [sample], FastV(K, RATIO), convention="released_code", max_new_tokens=3)
    out = model.generate(inputs, max_new_tokens=3, prune=FastV(K, RATIO, rank_by="last_row", hide_self=True),
                         rerank_every_step=True)
    answer = model.processor.tokenizer.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=True).strip()
    assert code.frame["prediction"].item() == answer
    assert "last_row" in code.frame["policy"].item()


def test_rerank_counts_generated_tokens_as_instruction_rows(model):
    ids, px, _ = make_batch(model.vlm_cfg, batch=1, n_text=10, seed=10)
    plan = HiMAP(1, 0.5, 3, 0.5).plan(model.cfg.n_layers)  # a plan keeps what its last forward kept
    out = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=3, prune=plan, rerank_every_step=True)
    seq = out[:, :-1]  # the last forward ran on the prompt and the first two generated tokens
    with torch.no_grad():
        _, cache = model.run_with_cache(input_ids=seq, pixel_values=px, names_filter="blocks.0.attn.hook_pattern")
    attn = cache["pattern", 0][0].mean(0)
    image = _image(model, seq)[0]
    after = torch.arange(seq.shape[1]) > int(image.nonzero().max())  # instruction rows, generated ones included
    phi_sh = attn[after].sum(0).masked_fill(~image, float("-inf"))
    expected = set(phi_sh.topk(int(image.sum()) // 2).indices.tolist())
    assert {int(i) for i in plan.kept[1][0] if i >= 0 and image[i]} == expected
