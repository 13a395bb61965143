"""attribution_patch: the linear estimate against finite differences, integrated gradients
(steps > 1) against a plain-autograd Riemann sum on the Hugging Face model and against activation
patching of whole layers and groups (completeness), and the ranking against activation patching
on the shipped shapes-llava."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from mmlens import HookedVLM
from mmlens.data.shapes import make_sample
from mmlens.errors import MMLensError
from mmlens.patching import activation_patch, attribution_patch, recolour
from mmlens.patching.metrics import logit_diff


def test_estimate_is_the_directional_derivative(tiny, pair):
    """m(a + ε(a' − a)) − m(a) ≈ ε · estimate, for a small ε, at a few sites (plain hooks, no engine)."""
    model, _ = tiny
    clean, corrupt, edited = pair
    with torch.no_grad():
        a, b = int(model(clean)[0, -1].argmax()), int(model(corrupt)[0, -1].argmax())
    metric = logit_diff(a, b)
    est = attribution_patch(model, clean, corrupt, hook=["resid_pre", "z"], metric=metric, edited=edited)
    _, cc = model.run_with_cache(clean)
    _, xc = model.run_with_cache(corrupt)
    with torch.no_grad():
        base = float(metric(model(corrupt)[:, -1]))
    eps = 1e-2
    for site, layer, col, name in [("resid_pre", 1, 5, "hook_resid_pre"), ("resid_pre", 2, 20, "hook_resid_pre"),
                                   ("z", 1, 2, "attn.hook_z")]:
        hook = f"blocks.{layer}.{name}"

        def nudge(x, hook, col=col, hook_name=hook):
            x = x.clone()
            d = cc[hook_name] - xc[hook_name]
            if site == "z":
                x[:, :, col] += eps * d[:, :, col]
            else:
                x[:, col] += eps * d[:, col]
            return x

        with torch.no_grad():
            moved = float(metric(model.run_with_hooks(corrupt, fwd_hooks=[(hook, nudge)])[:, -1]))
        linear = float(est[site].raw[layer, col]) - base
        assert (moved - base) / eps == pytest.approx(linear, rel=0.05, abs=1e-3)
        assert abs(linear) > 1e-3


def _answers(model, clean, corrupt):
    with torch.no_grad():
        return int(model(clean)[0, -1].argmax()), int(model(corrupt)[0, -1].argmax())


def _hf_ig(hf, clean, corrupt, layer, metric, steps):
    """Integrated gradients at ``layers[layer]``'s input, written with plain autograd on the Hugging
    Face model: the mean over ``j/steps`` of the gradient at ``a + (j/steps)(a' − a)``, dotted with
    ``a' − a``, per position (``a``: the corrupt run, ``a'``: the clean run)."""
    lm = hf.model.language_model

    def run(inputs, fn=None):
        handle = lm.layers[layer].register_forward_pre_hook(fn, with_kwargs=True) if fn else None
        try:
            return hf(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values,
                      attention_mask=inputs.attention_mask, output_hidden_states=True)
        finally:
            if handle is not None:
                handle.remove()

    with torch.no_grad():
        a = run(corrupt).hidden_states[layer]
        b = run(clean).hidden_states[layer]
    total = torch.zeros_like(a)
    for j in range(steps):
        point = (a + j / steps * (b - a)).requires_grad_(True)

        def put(module, args, kwargs, point=point):
            return ((point, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": point})

        value = metric(run(corrupt, put).logits[:, -1])[0]
        total += torch.autograd.grad(value, point)[0]
    return ((b - a) * total / steps)[0].sum(-1)


@pytest.mark.parametrize("steps", [1, 3])
def test_integrated_gradients_equal_an_explicit_riemann_sum_on_hugging_face(tiny, pair, steps):
    """steps=k against k plain-autograd gradients of the Hugging Face model on the straight path."""
    model, hf = tiny
    clean, corrupt, edited = pair
    metric = logit_diff(*_answers(model, clean, corrupt))
    est = attribution_patch(model, clean, corrupt, metric=metric, edited=edited, layers=[1, 2], steps=steps,
                            batch_size=2)
    base = est.corrupt_metric
    for row, layer in enumerate([1, 2]):
        ref = _hf_ig(hf, clean, corrupt, layer, metric, steps)
        torch.testing.assert_close(est.raw[row] - base, ref, atol=2e-3, rtol=2e-3)
        assert ref.abs().max() > 1e-2


def test_steps_change_the_estimate(tiny, pair):
    model, _ = tiny
    clean, corrupt, edited = pair
    one = attribution_patch(model, clean, corrupt, edited=edited, layers=[1])
    four = attribution_patch(model, clean, corrupt, edited=edited, layers=[1], steps=4)
    assert (one.raw - four.raw).abs().max() > 1e-2
    # The estimate is named in the result and its table, so estimates never mix unlabelled.
    assert (one.method, four.method) == ("attribution", "attribution (integrated, 4 steps)")
    assert set(four.to_dataframe()["method"]) == {"attribution (integrated, 4 steps)"}


def test_completeness_each_layer_adds_up_to_patching_all_of_it(tiny, pair):
    """The integrated-gradients columns of one layer sum to the metric with every position (every
    head) patched, minus the base metric; the left Riemann sum's error shrinks like 1/steps."""
    model, _ = tiny
    clean, corrupt, edited = pair
    gap = {}
    for steps in (2, 8, 32):
        est = attribution_patch(model, clean, corrupt, hook=["resid_pre", "z"], edited=edited, steps=steps)
        total = est["resid_pre"].raw.sum(1) - (est["resid_pre"].raw.shape[1] - 1) * est["resid_pre"].corrupt_metric
        heads = est["z"].raw.sum(1) - (model.cfg.n_heads - 1) * est["z"].corrupt_metric
        # resid_pre patched everywhere is the clean run; z patched everywhere is attn_out patched everywhere.
        attn = activation_patch(model, clean, corrupt, hook="attn_out", positions="all", edited=edited).raw[:, 0]
        gap[steps] = max(float((total - est["resid_pre"].clean_metric).abs().max()), float((heads - attn).abs().max()))
    span = abs(est["z"].clean_metric - est["z"].corrupt_metric)
    assert gap[8] < gap[2] / 3 and gap[32] < gap[8] / 3, gap  # error ~ 1/steps
    assert gap[32] < 0.1 * span, (gap, span)


def test_completeness_for_a_group_and_the_vision_tower(tiny, pair):
    """A group's column (the path moves only its positions) and a vision-tower layer's columns
    approach activation patching of the same positions together."""
    model, _ = tiny
    clean, corrupt, edited = pair
    group = activation_patch(model, clean, corrupt, positions=["image"], edited=edited, layers=[0, 1])
    ig = attribution_patch(model, clean, corrupt, positions=["image"], edited=edited, layers=[0, 1], steps=32)
    span = abs(group.clean_metric - group.corrupt_metric)
    assert float((ig.raw - group.raw).abs().max()) < 0.1 * span
    assert float((group.raw - group.corrupt_metric).abs().max()) > 0.3 * span  # the group matters
    vision = activation_patch(model, clean, corrupt, hook="vision_resid_pre", positions="all", layers=[1],
                              edited=edited).raw[0, 0]
    err = {}
    for steps in (32, 128):
        est = attribution_patch(model, clean, corrupt, hook="vision_resid_pre", layers=[1], edited=edited, steps=steps,
                                batch_size=64)
        err[steps] = abs(float(est.raw.sum() - (est.raw.shape[1] - 1) * est.corrupt_metric - vision))
    assert err[128] < err[32] / 2.5 and err[128] < 0.05 * abs(float(vision) - est.corrupt_metric), err


def _hf_block_estimate(hf, clean, corrupt, layer, positions, metric):
    """Per position: patch ``layers[layer]``'s input at that position alone (plain Hugging Face
    hooks), take the change of the block's output, dot it with the corrupt run's gradient at the
    next block's input."""
    lm = hf.model.language_model
    store = {}

    def grab_in(module, args, kwargs):
        store["in"] = (args[0] if args else kwargs["hidden_states"]).detach()

    def leaf(module, args, kwargs):
        store["leaf"] = (args[0] if args else kwargs["hidden_states"]).detach().requires_grad_(True)
        return ((store["leaf"], *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": store["leaf"]})

    def run(inputs, module, fn):
        handle = module.register_forward_pre_hook(fn, with_kwargs=True)
        try:
            return hf(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values,
                      attention_mask=inputs.attention_mask, output_hidden_states=True)
        finally:
            handle.remove()

    with torch.no_grad():
        run(clean, lm.layers[layer], grab_in)
        source = store["in"]
        base_next = hf(input_ids=corrupt.input_ids, pixel_values=corrupt.pixel_values,
                       attention_mask=corrupt.attention_mask, output_hidden_states=True).hidden_states[layer + 1]
    value = metric(run(corrupt, lm.layers[layer + 1], leaf).logits[:, -1])[0]
    grad = torch.autograd.grad(value, store["leaf"])[0]
    out = []
    for p in positions:
        def patch(module, args, kwargs, p=p):
            x = (args[0] if args else kwargs["hidden_states"]).clone()
            x[:, p] = source[:, p]
            return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

        with torch.no_grad():
            patched = run(corrupt, lm.layers[layer], patch).hidden_states[layer + 1]
        out.append(float(((patched - base_next) * grad).sum()))
    return torch.tensor(out)


def test_exact_block_against_hugging_face_and_activation_patching(tiny, pair):
    """Layer 1: the block's exact change dotted with the next block's gradient, computed on the
    Hugging Face model; the last layer: activation patching itself."""
    model, hf = tiny
    clean, corrupt, edited = pair
    metric = logit_diff(*_answers(model, clean, corrupt))
    est = attribution_patch(model, clean, corrupt, hook=["resid_pre", "z"], metric=metric, edited=edited,
                            exact_block=True, batch_size=5)
    assert est["resid_pre"].method == "attribution (exact block)"
    positions = [0, 4, 10, 20, 22, 27]
    ref = _hf_block_estimate(hf, clean, corrupt, 1, positions, metric)
    torch.testing.assert_close(est["resid_pre"].raw[1, positions] - est["resid_pre"].corrupt_metric, ref,
                               atol=2e-4, rtol=1e-3)
    assert ref.abs().max() > 1e-2
    last = model.cfg.n_layers - 1
    for hook in ("resid_pre", "z"):
        exact = activation_patch(model, clean, corrupt, hook=hook, metric=metric, edited=edited, layers=[last])
        torch.testing.assert_close(est[hook].raw[last], exact.raw[0], atol=1e-5, rtol=1e-5)
    linear = attribution_patch(model, clean, corrupt, metric=metric, edited=edited, layers=[1])
    assert (linear.raw[0, positions] - est["resid_pre"].raw[1, positions]).abs().max() > 1e-3


def test_exact_block_refuses_steps_and_the_vision_tower(tiny, pair):
    model, _ = tiny
    clean, corrupt, edited = pair
    for kwargs in ({"steps": 2}, {"hook": "vision_resid_pre"}):
        with pytest.raises(MMLensError, match="exact_block"):
            attribution_patch(model, clean, corrupt, edited=edited, exact_block=True, **kwargs)


@pytest.mark.parametrize("bad", [0, -1, True])
def test_steps_and_batch_size_must_be_positive_integers(tiny, pair, bad):
    model, _ = tiny
    clean, corrupt, edited = pair
    for arg in ("steps", "batch_size"):
        with pytest.raises(MMLensError, match=arg):
            attribution_patch(model, clean, corrupt, edited=edited, **{arg: bad})


def _spearman_on_image_positions(model, seeds, **options):
    out = []
    for seed in seeds:
        sample = make_sample(seed, "QueryAttr")
        corrupt, _ = recolour(sample)
        exact = activation_patch(model, sample, corrupt)
        approx = attribution_patch(model, sample, corrupt, **options)
        image = exact.inputs.groups["image"][0]
        out.append(spearmanr(exact.raw[:, image].flatten(), approx.raw[:, image].flatten())[0])
    return np.array(out)


@pytest.mark.slow
def test_ranking_agrees_with_activation_patching_on_shapes_llava():
    """Measured, not assumed: on 3 recoloured QueryAttr samples (seeds 0-2) the per-sample Spearman
    correlation over (layer, image position) is 0.71, 0.74, 0.95 (mean 0.80)."""
    model = HookedVLM.from_pretrained("shapes-llava")
    rho = _spearman_on_image_positions(model, range(3))
    assert rho.min() > 0.6 and rho.mean() > 0.75, rho


@pytest.mark.slow
def test_ranking_on_ten_samples_meets_the_issue_target():
    """The issue's target is Spearman >= 0.8 with the default (steps=1). Measured on seeds 100-129
    (30 samples): mean 0.79, min 0.27; confirmed on seeds 0-9: mean 0.76, median 0.75, min 0.34
    (seed 4). Not met by the one-backward estimate; integrated gradients (any steps > 1) rank
    worse, exact_block=True meets it (the tests below), so this test records the shortfall."""
    model = HookedVLM.from_pretrained("shapes-llava")
    rho = _spearman_on_image_positions(model, range(10))
    assert rho.mean() > 0.7, rho
    if rho.mean() < 0.8:
        pytest.xfail(f"attribution vs activation patching Spearman mean {rho.mean():.2f} < 0.8 target")


@pytest.mark.slow
def test_integrated_gradients_rank_single_positions_worse_than_the_base_gradient():
    """Mean Spearman against single-position activation patching for steps = 1, 2, 4, 8, 16:
    0.79, 0.53, 0.47, 0.43, 0.42 on seeds 100-129 (chosen there); 0.76, 0.43, 0.39, 0.36, 0.35 on
    seeds 0-9 (confirmed here). Integrated gradients share out the effect of patching every
    position at once; a lone patched position acts in the otherwise unpatched run, where the base
    gradient is taken."""
    model = HookedVLM.from_pretrained("shapes-llava")
    base, integrated = (_spearman_on_image_positions(model, range(10), steps=steps) for steps in (1, 4))
    assert integrated.mean() < base.mean() - 0.2, (base, integrated)


@pytest.mark.slow
def test_exact_block_meets_the_issue_target():
    """exact_block=True (each patch exact through its own block, linear after it): mean Spearman
    0.88 on seeds 100-129 (30 samples, measured there), confirmed on seeds 0-9: mean 0.85, median
    0.89, min 0.45 (seed 4)."""
    model = HookedVLM.from_pretrained("shapes-llava")
    rho = _spearman_on_image_positions(model, range(10), exact_block=True)
    assert rho.mean() >= 0.8, rho
