"""path_patch against an explicit two-pass computation with full hooked forwards."""

from __future__ import annotations

import pytest
import torch

from mmlens.patching import path_patch
from mmlens.patching.metrics import logit_diff


def _two_pass(model, clean, corrupt, sender, receivers, kinds, send, recv):
    """Pass 1: clean run, the sender's z from the corrupt run at ``send``, every other head and MLP
    frozen to the clean run; record the receivers' q/k/v. Pass 2: clean run with only those
    receiver inputs (at ``recv``) replaced. Returns pass 2's last-position logits."""
    cfg = model.cfg
    _, cc = model.run_with_cache(clean)
    _, xc = model.run_with_cache(corrupt)
    hooks = []
    for layer in range(cfg.n_layers):
        def freeze_z(x, hook, layer=layer):
            z = cc[f"blocks.{layer}.attn.hook_z"].clone()
            if layer == sender[0]:
                z[:, send, sender[1]] = xc[f"blocks.{layer}.attn.hook_z"][:, send, sender[1]]
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", freeze_z))
        hooks.append((f"blocks.{layer}.hook_mlp_out", lambda x, hook, layer=layer: cc[f"blocks.{layer}.hook_mlp_out"]))
    seen = {}
    for layer, _ in receivers:
        for k in kinds:
            hooks.append((f"blocks.{layer}.attn.hook_{k}", lambda x, hook: seen.__setitem__(hook.name, x.clone())))
    model.run_with_hooks(clean, fwd_hooks=hooks)
    groups = cfg.n_heads // cfg.n_kv_heads
    second = []
    for layer, head in receivers:
        for k in kinds:
            name, idx = f"blocks.{layer}.attn.hook_{k}", head if k == "q" else head // groups

            def put(x, hook, name=name, idx=idx):
                x = x.clone()
                x[:, recv, idx] = seen[name][:, recv, idx]
                return x

            second.append((name, put))
    return model.run_with_hooks(clean, fwd_hooks=second)[0, -1]


@pytest.mark.parametrize("kinds", ["qkv", "q", "v"])
def test_path_patch_equals_explicit_two_pass(tiny, pair, kinds):
    model, _ = tiny
    clean, corrupt, edited = pair
    receivers = [(2, 1), (2, 3)]
    with torch.no_grad():
        a, b = int(model(clean)[0, -1].argmax()), int(model(corrupt)[0, -1].argmax())
    metric = logit_diff(a, b)
    n = clean.input_ids.shape[1]
    send = clean.groups["image"][0] | edited[0] | clean.groups["last"][0]
    recv = torch.arange(n) >= 10
    result = path_patch(model, clean, corrupt, receivers, kinds, sender_positions={"s": send},
                        receiver_positions={"r": recv}, metric=metric, edited=edited, batch_size=3)
    assert result.raw.shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert torch.isnan(result.raw[2:]).all() and not torch.isnan(result.raw[:2]).any()
    with torch.no_grad():
        for sender in [(0, 0), (0, 3), (1, 2)]:
            expected = metric(_two_pass(model, clean, corrupt, sender, receivers, kinds, send, recv)[None])[0]
            assert float(result.raw[sender]) == pytest.approx(float(expected), abs=1e-4)
    assert (result.raw[:2] - result.clean_metric).abs().max() > 1e-3  # some sender matters


def test_senders_outside_the_receiver_positions_change_nothing(tiny, pair):
    model, _ = tiny
    clean, corrupt, edited = pair
    n = clean.input_ids.shape[1]
    late = torch.arange(n) >= n - 2
    result = path_patch(model, clean, corrupt, [(2, 0)], sender_positions={"s": ~late},
                        receiver_positions={"r": late}, edited=edited)
    torch.testing.assert_close(result.values[:2], torch.ones(2, model.cfg.n_heads))
