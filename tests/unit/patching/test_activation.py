"""activation_patch against a naive loop of Hugging Face forwards with plain PyTorch hooks."""

from __future__ import annotations

import pytest
import torch

from mmlens.patching import DegenerateMetricError, MisalignedInputsError, activation_patch
from mmlens.patching.metrics import logit_diff


def _hf_logits(hf, inputs, hooks=()):
    """Last-position logits of a Hugging Face forward with ``(module, kind, fn)`` hooks attached."""
    handles = []
    try:
        for module, kind, fn in hooks:
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(fn))
        with torch.no_grad():
            out = hf(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values, attention_mask=inputs.attention_mask)
        return out.logits[0, -1]
    finally:
        for h in handles:
            h.remove()


def _first(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _with_first(args, kwargs, x):
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": x}


def _out(o):
    return o[0] if isinstance(o, tuple) else o


def _hf_sites(hf):
    """Site → (modules per layer, hook kind, read, write) on the Hugging Face model."""
    lm, vt = hf.model.language_model, hf.model.vision_tower
    pre = ("pre", _first, _with_first)
    post = ("post", lambda o: _out(o), lambda o, x: (x, *o[1:]) if isinstance(o, tuple) else x)
    return {
        "resid_pre": (list(lm.layers), *pre),
        "resid_post": (list(lm.layers), *post),
        "attn_out": ([layer.self_attn for layer in lm.layers], *post),
        "mlp_out": ([layer.mlp for layer in lm.layers], *post),
        "vision_resid_pre": (list(vt.encoder.layers), *pre),
    }


def _naive(hf, site, n_layers, clean, corrupt, metric, positions):
    """One Hugging Face forward per (layer, position): the clean activation written into the corrupt run."""
    modules, kind, read, write = _hf_sites(hf)[site]
    out = torch.empty(n_layers, len(positions))
    for layer in range(n_layers):
        module, store = modules[layer], {}
        if kind == "pre":
            grab = (module, kind, lambda m, a, k: store.update(x=_first(a, k).clone()))
        else:
            grab = (module, kind, lambda m, a, o: store.update(x=_out(o).clone()))
        _hf_logits(hf, clean, [grab])
        for j, p in enumerate(positions):
            if kind == "pre":
                def fn(m, a, k, p=p):
                    x = _first(a, k).clone()
                    x[:, p] = store["x"][:, p]
                    return _with_first(a, k, x)
            else:
                def fn(m, a, o, p=p):
                    x = _out(o).clone()
                    x[:, p] = store["x"][:, p]
                    return write(o, x)
            out[layer, j] = metric(_hf_logits(hf, corrupt, [(module, kind, fn)])[None])[0]
    return out


@pytest.mark.parametrize("site", ["resid_pre", "resid_post", "attn_out", "mlp_out", "vision_resid_pre"])
def test_equals_naive_hugging_face_loop(tiny, pair, site):
    model, hf = tiny
    clean, corrupt, edited = pair
    result = activation_patch(model, clean, corrupt, hook=site, edited=edited)
    a, b = int(_hf_logits(hf, clean).argmax()), int(_hf_logits(hf, corrupt).argmax())
    metric = logit_diff(a, b)
    n_layers = len(result.layers)
    positions = list(range(result.raw.shape[1]))
    expected = _naive(hf, site, n_layers, clean, corrupt, metric, positions)
    torch.testing.assert_close(result.raw, expected, atol=1e-4, rtol=1e-4)
    clean_m, corrupt_m = float(metric(_hf_logits(hf, clean)[None])), float(metric(_hf_logits(hf, corrupt)[None]))
    torch.testing.assert_close(result.values, (expected - corrupt_m) / (clean_m - corrupt_m), atol=1e-4, rtol=1e-4)
    assert (result.raw - result.corrupt_metric).abs().max() > 1e-2  # the patches do something


def test_heads_and_image_embed_equal_naive_hugging_face_loop(tiny, pair):
    model, hf = tiny
    clean, corrupt, edited = pair
    lm, cfg = hf.model.language_model, model.cfg
    metric = logit_diff(int(_hf_logits(hf, clean).argmax()), int(_hf_logits(hf, corrupt).argmax()))
    z = activation_patch(model, clean, corrupt, hook="z", edited=edited, metric=metric)
    for layer in range(cfg.n_layers):
        o_proj, store = lm.layers[layer].self_attn.o_proj, {}
        _hf_logits(hf, clean, [(o_proj, "pre", lambda m, a, k: store.update(z=a[0].clone()))])
        for h in range(cfg.n_heads):
            sl = slice(h * cfg.d_head, (h + 1) * cfg.d_head)

            def fn(m, a, k, sl=sl):
                x = a[0].clone()
                x[..., sl] = store["z"][..., sl]
                return (x,), k

            got = metric(_hf_logits(hf, corrupt, [(o_proj, "pre", fn)])[None])[0]
            assert float(z.raw[layer, h]) == pytest.approx(float(got), abs=1e-4)
    emb = activation_patch(model, clean, corrupt, hook="image_embed", edited=edited, metric=metric)
    projector, store = hf.model.multi_modal_projector, {}
    _hf_logits(hf, clean, [(projector, "post", lambda m, a, o: store.update(x=o.clone()))])
    for j in range(emb.raw.shape[1]):
        def fn(m, a, o, j=j):
            o = o.clone()
            o[:, j] = store["x"][:, j]
            return o

        got = metric(_hf_logits(hf, corrupt, [(projector, "post", fn)])[None])[0]
        assert float(emb.raw[0, j]) == pytest.approx(float(got), abs=1e-4)
    assert emb.positions == tuple(clean.groups["image"][0].nonzero().flatten().tolist())


def test_pattern_and_resid_mid_equal_hooked_loop(tiny, pair):
    """Sites Hugging Face has no module boundary for, against full hooked forwards per patch."""
    model, _ = tiny
    clean, corrupt, edited = pair
    for site, hook in [("pattern", "attn.hook_pattern"), ("resid_mid", "hook_resid_mid")]:
        result = activation_patch(model, clean, corrupt, hook=site, edited=edited, metric="prob", answers=(5, 6))
        _, cache = model.run_with_cache(clean)
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.{hook}"
            for col in (range(model.cfg.n_heads) if site == "pattern" else [0, 5, 20, clean.input_ids.shape[1] - 1]):
                def fn(x, hook, col=col, name=name):
                    x = x.clone()
                    x[:, col] = cache[name][:, col]
                    return x

                with torch.no_grad():
                    p = torch.softmax(model.run_with_hooks(corrupt, fwd_hooks=[(name, fn)])[0, -1], -1)[5]
                assert float(result.raw[layer, col]) == pytest.approx(float(p), abs=1e-5)


def test_identities_and_directions(tiny, pair):
    model, _ = tiny
    clean, corrupt, edited = pair
    n = clean.input_ids.shape[1]
    every = activation_patch(model, clean, corrupt, positions={"all": torch.ones(n, dtype=torch.bool),
                                                                 "none": torch.zeros(n, dtype=torch.bool)}, edited=edited)
    torch.testing.assert_close(every.values[:, 0], torch.ones(model.cfg.n_layers), atol=1e-5, rtol=0)
    torch.testing.assert_close(every.values[:, 1], torch.zeros(model.cfg.n_layers), atol=1e-6, rtol=0)
    noised = activation_patch(model, clean, corrupt, positions="all", direction="noise", edited=edited)
    torch.testing.assert_close(noised.values[:, 0], torch.zeros(model.cfg.n_layers), atol=1e-5, rtol=0)
    groups = activation_patch(model, clean, corrupt, positions=["system", "image", "user"], edited=edited)
    assert groups.axis == "group" and groups.labels == ("system", "image", "user")
    torch.testing.assert_close(groups.values[:, 0], torch.zeros(model.cfg.n_layers))  # identical in both runs


def test_batch_size_does_not_change_results(tiny, pair):
    model, _ = tiny
    clean, corrupt, edited = pair
    one = activation_patch(model, clean, corrupt, hook="attn_out", edited=edited, batch_size=1)
    many = activation_patch(model, clean, corrupt, hook="attn_out", edited=edited, batch_size=64)
    torch.testing.assert_close(one.raw, many.raw, atol=1e-5, rtol=0)


def test_refuses_misaligned_and_degenerate_inputs(tiny, pair):
    model, _ = tiny
    clean, corrupt, edited = pair
    with pytest.raises(MisalignedInputsError, match="outside the edited word"):
        activation_patch(model, clean, corrupt)  # the edited token is not declared
    with pytest.raises(DegenerateMetricError, match="both predict"):
        activation_patch(model, clean, clean)
    short = type(clean)(clean.input_ids[:, 1:], clean.attention_mask[:, 1:], clean.pixel_values,
                        clean.groups, clean.image_grid, clean.prompts)
    with pytest.raises(MisalignedInputsError, match="tokens"):
        activation_patch(model, clean, short)
