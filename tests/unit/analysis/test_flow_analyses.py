"""Knockout sweep, logit lens and attention shares against independent computations."""

from __future__ import annotations

import pytest
import torch
import transformers

from mmlens import HookedVLM
from mmlens.analysis import PAPER_FLOWS, attention_share, knockout_sweep, logit_lens
from mmlens.data.shapes import make_sample
from mmlens.interventions import knockout, window
from mmlens.samples import sample_inputs


@pytest.fixture(scope="module")
def setup(checkpoint_factory):
    path = checkpoint_factory(n_kv_heads=2, n_layers=4)
    model = HookedVLM.from_pretrained(path)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(path).eval()
    return model, hf


def test_sweep_reuse_path_equals_naive_full_forward(setup):
    model, _ = setup
    samples = [make_sample(s, t) for s, t in [(1, "ChooseAttr"), (2, "ChooseRel")]]
    result = knockout_sweep(model, samples, window_size=3, progress=False).df
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
    summary = knockout_sweep(model, samples, flows=["image->last"], window_size=3, progress=False).summary()
    assert ((summary["ci_low"] <= summary["mean"]) & (summary["mean"] <= summary["ci_high"])).all()


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
        torch.testing.assert_close(shares.per_layer[0, layer], expected, atol=1e-5, rtol=0)
        per_head = torch.stack([row[:, g[name][0]].sum(-1) for name in ("system", "image", "user")], -1)
        torch.testing.assert_close(shares.per_head[0, layer], per_head, atol=1e-5, rtol=0)
    torch.testing.assert_close(shares.per_layer.sum(-1), torch.ones(1, model.cfg.n_layers), atol=1e-5, rtol=0)
    assert set(shares.to_dataframe()["group"]) == {"system", "image", "user"}
