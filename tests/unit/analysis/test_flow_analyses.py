"""Knockout sweep, logit lens and attention shares against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from mmlens import HookedVLM
from mmlens.analysis import PAPER_FLOWS, KnockoutResult, attention_share, knockout_sweep, logit_lens
from mmlens.data.shapes import make_sample
from mmlens.errors import MMLensError
from mmlens.interventions import knockout, window
from mmlens.inputs import sample_inputs


@pytest.fixture(scope="module")
def setup(checkpoint_factory):
    path = checkpoint_factory(n_kv_heads=2, n_layers=4)
    model = HookedVLM.from_pretrained(path)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(path).eval()
    return model, hf


def test_sweep_reuse_path_equals_naive_full_forward(setup):
    model, _ = setup
    samples = [make_sample(s, t) for s, t in [(1, "ChooseAttr"), (2, "ChooseRel")]]
    runs = [knockout_sweep(model, sample_inputs(model, s), window_size=3).tag(sample=s.id) for s in samples]
    result = KnockoutResult.concat(runs).to_dataframe()
    assert set(result["flow"]) == set(PAPER_FLOWS) and len(result) == 2 * len(PAPER_FLOWS) * model.cfg.n_layers
    for sample in samples:
        inputs = sample_inputs(model, sample)
        with torch.no_grad():
            clean = torch.softmax(model(inputs)[0, -1], -1)
            token = int(clean.argmax())
            for flow, (src, dst) in PAPER_FLOWS.items():
                for layer in range(model.cfg.n_layers):
                    hooks = knockout(inputs.groups, src, dst, window(layer, 3, model.cfg.n_layers))
                    p2 = torch.softmax(model.run_with_hooks(inputs, fwd_hooks=hooks)[0, -1], -1)[token]
                    row = result[(result["sample"] == sample.id) & (result["flow"] == flow) & (result["layer"] == layer)]
                    assert row["p_knockout"].item() == pytest.approx(float(p2), abs=1e-5)
                    expected = (float(p2) - float(clean[token])) / float(clean[token]) * 100
                    assert row["relative_change"].item() == pytest.approx(expected, abs=1e-2)
    summary = KnockoutResult.concat(runs).summary()
    assert ((summary["ci_low"] <= summary["mean"]) & (summary["mean"] <= summary["ci_high"])).all()
    means = result.groupby(["flow", "layer"])["relative_change"].mean()
    np.testing.assert_allclose(summary.set_index(["flow", "layer"])["mean"], means.loc[summary.set_index(["flow", "layer"]).index])
    assert (summary["n"] == 2).all()


def test_sweep_takes_one_prompt(setup):
    model, _ = setup
    batch = model.prepare([make_sample(1, "Exist").load_image()] * 2, ["Is there a star?"] * 2)
    with pytest.raises(MMLensError, match="batch-1"):
        knockout_sweep(model, batch)


def test_logit_lens_matches_hidden_states_norm_unembedding(setup):
    model, hf = setup
    inputs = sample_inputs(model, make_sample(4, "QueryAttr"))
    lens = logit_lens(model, inputs, words=["red", "blue"])
    lens_raw = logit_lens(model, inputs, words=["red", "blue"], final_norm="last_only")
    with torch.no_grad():
        out = hf(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values, output_hidden_states=True)
    lm = hf.model.language_model
    tok = model.processor.tokenizer
    ids = [tok.convert_tokens_to_ids(w) for w in ["red", "Red", "blue", "Blue"]]
    hs = out.hidden_states  # [0..L-1] are block inputs; the last entry is already normed
    normed = torch.stack([lm.norm(h[0, -1]) for h in hs[:-1]] + [hs[-1][0, -1]])
    raw = torch.stack([h[0, -1] for h in hs[:-1]] + [hs[-1][0, -1]])
    for result, stack in [(lens, normed), (lens_raw, raw)]:
        expected = torch.softmax(hf.lm_head(stack), -1)[:, ids]
        torch.testing.assert_close(result.probs[0], expected, atol=1e-5, rtol=0)
    assert lens.labels[:2] == (("red", "lower"), ("red", "capitalised"))
    df = lens.to_dataframe()
    assert len(df) == (model.cfg.n_layers + 1) * 4


@pytest.mark.parametrize("head_reduce", ["mean", "max"])
def test_attention_shares_match_the_full_pattern(setup, head_reduce):
    model, _ = setup
    inputs = sample_inputs(model, make_sample(5, "Exist"))
    shares = attention_share(model, inputs, head_reduce=head_reduce)
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_pattern"))
    g = inputs.groups
    for layer in range(model.cfg.n_layers):
        row = cache["pattern", layer][0, :, -1]  # [head, key_pos]
        reduced = row.mean(0) if head_reduce == "mean" else row.max(0).values / row.max(0).values.sum()
        expected = torch.stack([reduced[g[name][0]].sum() for name in ("system", "image", "user")])
        torch.testing.assert_close(shares.share[0, layer], expected, atol=1e-5, rtol=0)
        per_head = torch.stack([row[:, g[name][0]].sum(-1) for name in ("system", "image", "user")], -1)
        torch.testing.assert_close(shares.head_share[0, layer], per_head, atol=1e-5, rtol=0)
    torch.testing.assert_close(shares.share.sum(-1), torch.ones(1, model.cfg.n_layers), atol=1e-5, rtol=0)
    assert set(shares.to_dataframe()["group"]) == {"system", "image", "user"}
    # per_layer: the mean over rows, here of a batch of the same input twice.
    two = type(shares).concat([shares, shares]).per_layer().set_index(["layer", "group"])["share"]
    for layer in range(model.cfg.n_layers):
        for i, name in enumerate(shares.groups):
            assert two[(layer, name)] == pytest.approx(float(shares.share[0, layer, i]), abs=1e-6)


def test_lens_results_of_the_same_words_combine(setup):
    model, _ = setup
    a, b = (logit_lens(model, sample_inputs(model, make_sample(i, "QueryAttr")), words=["red"]) for i in (4, 5))
    both = type(a).concat([a, b])
    torch.testing.assert_close(both.probs, torch.cat([a.probs, b.probs]))
    assert set(both.to_dataframe()["row"]) == {0, 1}
    with pytest.raises(MMLensError, match="same tokens"):
        type(a).concat([a, logit_lens(model, sample_inputs(model, make_sample(4, "QueryAttr")), words=["blue"])])
