"""``convention="released_code"``: each behaviour against the authors' formula re-implemented here
on the Hugging Face model, and ``convention="paper"`` against today's defaults."""

from __future__ import annotations

import pytest
import torch
import transformers

from mmlens import HookedVLM
from mmlens.analysis import attention_share, disruption, grad_cam, knockout_sweep, logit_lens, saliency
from mmlens.conventions import CONVENTIONS, OPTIONS, resolve
from mmlens.data.shapes import make_sample
from mmlens.errors import MMLensError
from mmlens.inputs import sample_inputs
from mmlens.interventions import window
from mmlens.studies import saliency_study

PAPER_DEFAULTS = {
    # The defaults before conventions existed: convention="paper" must keep every one of them.
    ("knockout", "fill"): "-inf",
    ("logit_lens", "final_norm"): "all",
    ("attention_share", "head_reduce"): "mean",
    ("saliency", "variant"): "paper",
    ("saliency", "aggregate"): "source",
    ("saliency", "vision_flows"): "mean",
    ("saliency", "target"): "prediction",
    ("disruption", "mode"): "post_softmax",
    ("disruption", "scope"): "single",
    ("grad_cam", "variant"): "standard",
    ("grad_cam", "target_rows"): "answer",
    ("fastv", "rank_by"): "all_rows",
    ("fastv", "hide_self"): False,
    ("himap", "phi_dp"): "column",
    ("himap", "hide_self"): False,
    ("truncate", "hide_self"): False,
    ("generate", "rerank_every_step"): False,
}


@pytest.fixture(scope="module")
def setup(checkpoint_factory):
    path = checkpoint_factory(n_kv_heads=2)
    model = HookedVLM.from_pretrained(path)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
    return model, hf, sample_inputs(model, make_sample(7, "ChooseAttr"))


def _hf_forward(hf, inputs, **kwargs):
    return hf(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values, **kwargs)


# --- the table and its resolution ------------------------------------------------------------


def test_paper_column_is_todays_defaults():
    table = {(m, o): pair[0] for m, opts in OPTIONS.items() for o, pair in opts.items()}
    assert table == PAPER_DEFAULTS


def test_explicit_options_win_and_bad_names_are_named():
    assert resolve("knockout", "released_code") == {"fill": "finfo_min"}
    assert resolve("knockout", "released_code", fill="-inf") == {"fill": "-inf"}
    assert resolve("saliency", "paper", variant="released_code")["variant"] == "released_code"
    with pytest.raises(MMLensError, match="convention must be one of"):
        resolve("knockout", "authors")
    with pytest.raises(MMLensError, match="no conventions for 'lens'"):
        resolve("lens")
    assert CONVENTIONS == ("paper", "released_code")


# --- the window: exactly k layers ------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6, 9])
def test_window_is_the_released_codes_k_layers(k):
    n = 12
    for layer in range(n):
        # The information-flow code: range(l - k//2, l - (-k//2)), clipped to the model.
        expected = [j for j in range(layer - k // 2, layer - (-k // 2)) if 0 <= j < n]
        assert list(window(layer, k, n)) == expected
    assert len(window(6, k, n)) == k  # an interior window has exactly k layers
    if k % 2 == 0:  # the extra layer is below the centre
        assert list(window(6, k, n))[0] == 6 - k // 2 and list(window(6, k, n))[-1] == 6 + k // 2 - 1


def test_window_edges_for_even_and_odd_k():
    assert list(window(0, 4, 32)) == [0, 1] and list(window(31, 4, 32)) == [29, 30, 31]
    assert list(window(0, 5, 32)) == [0, 1, 2] and list(window(31, 5, 32)) == [29, 30, 31]
    assert list(window(1, 2, 3)) == [0, 1] and list(window(0, 2, 3)) == [0]
    with pytest.raises(MMLensError, match="k >= 1"):
        window(3, 0, 8)


# --- convention="paper" is today's behaviour -------------------------------------------------


def test_paper_convention_equals_the_old_explicit_defaults(setup):
    model, _, inputs = setup
    a = logit_lens(model, inputs, words=["red"], convention="paper")
    torch.testing.assert_close(a.probs, logit_lens(model, inputs, words=["red"], final_norm="all").probs, rtol=0, atol=0)
    a = attention_share(model, inputs, convention="paper")
    assert a.head_reduce == "mean"
    torch.testing.assert_close(a.share, attention_share(model, inputs, head_reduce="mean").share, rtol=0, atol=0)
    a = saliency(model, inputs, convention="paper")
    b = saliency(model, inputs, variant="paper", vision_flows="mean")
    assert (a.variant, a.vision_flows) == ("paper", "mean")
    torch.testing.assert_close(a.metrics["source"]["S_vv"], b.metrics["source"]["S_vv"], rtol=0, atol=0)
    a = grad_cam(model, inputs, answer="Red", layers=[0], convention="paper")
    b = grad_cam(model, inputs, answer="Red", layers=[0], variant="standard", target_rows="answer")
    torch.testing.assert_close(a.raw, b.raw, rtol=0, atol=0)
    a = disruption(model, inputs, layers=[1], convention="paper").frame
    b = disruption(model, inputs, layers=[1], scope="single", mode="post_softmax").frame
    assert a.equals(b)


# --- convention="released_code" against the authors' formulas --------------------------------


def test_knockout_fill_is_finfo_min(setup):
    model, _, inputs = setup
    # system -> system blocks every key the first row may read: with -inf it spreads over the
    # causally masked keys (the model masks those with finfo.min), with the released code's
    # finfo(dtype).min over every key, its own included, so the two fills differ.
    flows = {"system->system": ("system", "system")}
    paper = knockout_sweep(model, inputs, flows, window_size=1, layers=[0]).frame
    code = knockout_sweep(model, inputs, flows, window_size=1, layers=[0], convention="released_code").frame
    s = inputs.groups["system"][0]
    blocked = s[:, None] & s[None, :]

    def fill(value):
        return lambda scores, hook: scores.masked_fill(blocked, value)

    with torch.no_grad():
        clean = torch.softmax(model(inputs)[0, -1], -1)
        token = int(clean.argmax())
        p = {
            name: float(torch.softmax(model.run_with_hooks(inputs, fwd_hooks=[("blocks.0.attn.hook_attn_scores", fill(v))])[0, -1], -1)[token])
            for name, v in (("-inf", float("-inf")), ("finfo_min", torch.finfo(torch.float32).min))
        }
    assert abs(p["-inf"] - p["finfo_min"]) > 1e-4
    assert code["p_knockout"].item() == pytest.approx(p["finfo_min"], abs=1e-6)
    assert paper["p_knockout"].item() == pytest.approx(p["-inf"], abs=1e-6)


def test_lens_applies_the_final_norm_to_the_last_boundary_only(setup):
    model, hf, inputs = setup
    lens = logit_lens(model, inputs, words=["red"], convention="released_code")
    with torch.no_grad():
        hs = _hf_forward(hf, inputs, output_hidden_states=True).hidden_states  # last entry already normed
        expected = torch.softmax(hf.lm_head(torch.stack([h[0, -1] for h in hs])), -1)[:, list(lens.tokens)]
    torch.testing.assert_close(lens.probs[0], expected, atol=1e-5, rtol=0)


def test_shares_take_the_max_over_heads_and_renormalise(setup):
    model, hf, inputs = setup
    shares = attention_share(model, inputs, convention="released_code")
    with torch.no_grad():
        attns = _hf_forward(hf, inputs, output_attentions=True).attentions
    g = inputs.groups
    for layer, a in enumerate(attns):
        top = a[0].max(0).values  # the deleted notebooks: attns[i].max(1).values, row / row.sum()
        row = (top / top.sum(-1, keepdim=True))[-1]
        expected = torch.stack([row[g[name][0]].sum() for name in ("system", "image", "user")])
        torch.testing.assert_close(shares.share[0, layer], expected, atol=1e-5, rtol=0)


def test_saliency_released_code_metrics_and_gold_target(setup):
    model, hf, _ = setup
    sample = make_sample(7, "ChooseAttr")
    inputs = sample_inputs(model, sample)
    result = saliency_study(model, [sample], progress=False, convention="released_code")
    tok = model.processor.tokenizer
    gold = tok(sample.answer, add_special_tokens=False)["input_ids"][0]
    out = _hf_forward(hf, inputs, output_attentions=True)
    for a in out.attentions:
        a.retain_grad()
    torch.nn.functional.cross_entropy(out.logits[0, -1:], torch.tensor([gold])).backward()
    hf.zero_grad()
    assert int(result.target[0]) == gold and (result.variant, result.vision_flows) == ("released_code", "sum")
    g = inputs.groups
    s, v, ins = g["system"][0], g["image"][0], g["user"][0]
    for layer, a in enumerate(out.attentions):
        I = (a.detach() ** 2 * a.grad.abs()).mean(1)[0]  # mean_h A^2 |dL/dA|
        got = {m: float(result.metrics["receiving"][m][0, layer]) for m in ("S_sys", "S_img", "S_ins", "S_vv", "S_vt")}
        assert got["S_sys"] == pytest.approx(float(I[s].sum() / s.sum()), rel=1e-4)
        assert got["S_img"] == pytest.approx(float(I[v].sum() / v.sum()), rel=1e-4)
        assert got["S_ins"] == pytest.approx(float(I[ins].sum() / ins.sum()), rel=1e-4)
        assert got["S_vv"] == pytest.approx(float(I[v][:, v].sum()), rel=1e-4)  # raw sums, not / |V|
        assert got["S_vt"] == pytest.approx(float(I[ins][:, v].sum()), rel=1e-4)


@pytest.mark.parametrize("layer", [0, 1])
def test_grad_cam_released_code_rows_tokens_and_map(setup, layer):
    model, hf, inputs = setup
    tok = model.processor.tokenizer
    answer = "Red"
    target = tok(answer, add_special_tokens=False)["input_ids"] + [hf.config.text_config.eos_token_id]
    # The released code: rows counted over the prompt with its image as ONE token, prompt-only forward.
    n_text = inputs.input_ids.shape[1] - int(inputs.groups["image"].sum()) + 1
    captured = []
    handle = hf.model.language_model.layers[layer].post_attention_layernorm.register_forward_hook(
        lambda m, i, o: captured.append(o)
    )
    try:
        logits = _hf_forward(hf, inputs).logits
    finally:
        handle.remove()
    z = logits[0, n_text : n_text + len(target)][torch.arange(len(target)), torch.tensor(target)].sum()
    (grad,) = torch.autograd.grad(z, captured)
    img = inputs.groups["image"][0]
    A, G = captured[0].detach()[0, img], grad[0, img]
    heat = (A * torch.relu(G).mean(0)).mean(-1)  # ReLU(grad), pooled per channel, channel mean
    heat = torch.clamp(heat, min=0)
    heat = heat / heat.max()
    heat = torch.where(heat < 0.5, 0.0, heat)
    ours = grad_cam(model, inputs, answer=answer, layers=[layer], convention="released_code")
    grid = model.vlm_cfg.vision.grid
    torch.testing.assert_close(ours.heat[0, 0], heat.view(grid, grid), atol=1e-5, rtol=1e-4)
    paper = grad_cam(model, inputs, answer=answer, layers=[layer], variant="released_code")
    assert not torch.allclose(paper.raw, ours.raw)  # the rows matter


def test_grad_cam_released_rows_past_the_prompt_are_refused(setup):
    model, _, inputs = setup
    with pytest.raises(MMLensError, match="past the prompt"):
        grad_cam(model, inputs, answer=" ".join(["Red"] * 20), layers=[0], target_rows="released_code")


def test_disruption_released_code_blocks_from_the_layer_onward_before_the_softmax(setup):
    model, _, inputs = setup
    result = disruption(model, inputs, "image<-image", layers=[1], top_k=3, convention="released_code").frame
    img = inputs.groups["image"][0]
    blocked = img[:, None] & img[None, :]

    def minus_inf(scores, hook):
        return scores.masked_fill(blocked, float("-inf"))

    n = model.cfg.n_layers
    with torch.no_grad():
        clean = model(inputs)[0, -1]
        out = model.run_with_hooks(inputs, fwd_hooks=[(f"blocks.{j}.attn.hook_attn_scores", minus_inf) for j in range(1, n)])[0, -1]
    a, b = set(clean.topk(3).indices.tolist()), set(out.topk(3).indices.tolist())
    assert result["jaccard"].item() == pytest.approx(len(a & b) / len(a | b))
    assert result["same_label"].item() == bool(out.argmax() == clean.argmax())


# --- the command line --------------------------------------------------------------------------


def test_flow_cli_records_the_convention_in_manifest_and_summary(tmp_path, monkeypatch, capsys):
    import json

    from mmlens.cli import main

    monkeypatch.setenv("MMLENS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "flow"
    args = ["flow", "--model", "tiny-random", "--n", "1", "--window", "1", "--convention", "released_code"]
    assert main(args + ["--final-norm", "all", "--out", str(out)]) == 0
    study = json.loads((out / "manifest.json").read_text())
    assert "released_code" in json.dumps(study) and '"final_norm": "all"' in json.dumps(study)
    assert "convention = released_code" in (out / "summary.md").read_text()
    capsys.readouterr()
    assert main(["saliency", "--model", "tiny-random", "--n", "1", "--convention", "released_code", "--out", str(tmp_path / "s")]) == 0
    assert "receiving aggregation, convention released_code" in capsys.readouterr().out
