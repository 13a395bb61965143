"""Path patching: a sender head's corrupt output, seen only by chosen receivers' q/k/v inputs.

Pass 1 runs the clean input with the sender's output (at the sender positions) taken from the
corrupt run and every other component frozen to its clean value, and records the receivers'
queries, keys or values; pass 2 runs the clean input with just those receiver inputs replaced,
everything downstream free. With everything else frozen, the residual stream the receivers read
is the clean one plus the sender's change, ``(z' − z) W_O`` at the sender positions, so pass 1
needs no forward: the receivers' inputs are recomputed from that residual directly. Pass 2 starts
at the first receiver layer and the first changed position (see :mod:`mmlens.patching.runs`), one
batch row per sender. Tested against an explicit two-pass computation.

References: "Interpretability in the Wild" §3.1 (path patching); "Localizing Model Behavior with
Path Patching" (Goldowsky-Dill et al., 2023).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from mmlens.data.sample import Sample
from mmlens.errors import MMLensError
from mmlens.inputs import MMInputs
from mmlens.patching.activation import Positions, cache_pair, named_masks
from mmlens.patching.metrics import Metric, normalise
from mmlens.patching.result import PatchingResult
from mmlens.patching.runs import decode_from, overwrite
from mmlens.patching.sites import SITES

QKV = ("q", "k", "v")


def _mask(inputs: MMInputs, positions: Positions, n_pos: int) -> Tensor:
    if isinstance(positions, str) and positions == "all":
        return torch.ones(n_pos, dtype=torch.bool)
    return torch.stack(list(named_masks(inputs, positions, n_pos, SITES["resid_pre"]).values())).any(0)


def path_patch(
    model: Any,
    clean: MMInputs | Sample,
    corrupt: MMInputs | Sample,
    receivers: Sequence[tuple[int, int]],
    receiver_input: str = "qkv",
    *,
    sender_positions: Positions = "all",
    receiver_positions: Positions = "all",
    metric: str | Metric | None = None,
    answers: tuple[int | str, int | str] | None = None,
    at: str | int = "last",
    edited: Bool[Tensor, "batch pos"] | None = None,
    batch_size: int = 16,
) -> PatchingResult:
    """Effect of every sender head on the metric through the receivers' inputs only.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        clean: The input everything is frozen to (batch 1) or a sample.
        corrupt: The input the senders' outputs come from, lined up with ``clean``.
        receivers: ``(layer, head)`` pairs. With grouped-query attention a k/v receiver is the
            key/value head ``head // (n_heads // n_kv_heads)`` (shared by its query heads).
        receiver_input: Which receiver inputs see the senders: any of ``"q"``, ``"k"``, ``"v"``.
        sender_positions: Positions whose sender output is patched (``"all"``, groups, masks).
        receiver_positions: Positions whose receiver inputs are patched (queries for ``q``,
            keys and values for ``k``/``v``).
        metric: As in :func:`~mmlens.patching.activation_patch`.
        answers: ``(clean, corrupt)`` answer tokens for the default metrics.
        at: Metric position.
        edited: Text positions allowed to differ (an edited word).
        batch_size: Senders per forward.

    Returns:
        A :class:`PatchingResult` ``[layer, head]`` over sender heads (NaN for senders at or
        above the top receiver layer, which reach no receiver); ``direction`` is ``"noise"``
        (corrupt senders in the clean run), so 1 means no effect.

    Raises:
        MMLensError: no receivers, a receiver out of range or an unknown ``receiver_input``.
    """
    cfg = model.cfg
    if not receivers or not set(receiver_input) <= set(QKV) or not receiver_input:
        raise MMLensError(f"give at least one (layer, head) receiver and receiver_input from 'q', 'k', 'v' (got {receiver_input!r}).")
    for layer, head in receivers:
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise MMLensError(f"receiver ({layer}, {head}) is outside the decoder's {cfg.n_layers} layers x {cfg.n_heads} heads.")
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(cfg.n_layers)]
    pair = cache_pair(model, clean, corrupt, z_names, metric, answers, at, edited)
    base, source = pair.clean, pair.corrupt
    n_pos = base.inputs.input_ids.shape[1]
    send = _mask(base.inputs, sender_positions, n_pos)
    recv = _mask(base.inputs, receiver_positions, n_pos)
    top = max(layer for layer, _ in receivers)
    raw = torch.full((cfg.n_layers, cfg.n_heads), float("nan"))
    senders = [(layer, h) for layer in range(top) for h in range(cfg.n_heads)]
    for i in range(0, len(senders), batch_size):
        chunk = senders[i : i + batch_size]
        raw[tuple(zip(*chunk))] = _run(model, pair, chunk, receivers, receiver_input, send, recv)
    clean_value, corrupt_value = pair.value(pair.clean), pair.value(pair.corrupt)
    return PatchingResult(
        raw=raw, values=normalise(raw, clean_value, corrupt_value), method="path", hook="z", axis="head",
        layers=tuple(range(cfg.n_layers)), labels=tuple(f"h{h}" for h in range(cfg.n_heads)), positions=(),
        clean_metric=clean_value, corrupt_metric=corrupt_value, metric=pair.metric_name, direction="noise",
        inputs=base.inputs, image=pair.image,
    )


def _sender_delta(model, pair, layer: int, head: int, send: Tensor) -> Tensor:
    """``[pos, d_model]``: the change the sender writes into the residual stream."""
    name = f"blocks.{layer}.attn.hook_z"
    dz = (pair.corrupt.acts[name] - pair.clean.acts[name])[0, :, head] * send[:, None]  # [pos, d_head]
    d_head = model.cfg.d_head
    w = model.blocks[layer].attn.o_proj.weight[:, head * d_head : (head + 1) * d_head]  # [d_model, d_head]
    return dz @ w.T


def _run(model, pair, senders, receivers, receiver_input: str, send: Tensor, recv: Tensor) -> Tensor:
    """Metric of pass 2 for each sender of one batch."""
    cfg = model.cfg
    m = len(senders)
    with torch.no_grad():
        deltas = torch.stack([_sender_delta(model, pair, layer, h, send) for layer, h in senders])  # [m, pos, d]
    changed = deltas.abs().amax((0, 2)) > 0
    hit = (changed & recv).nonzero()
    out = torch.full((m,), float(pair.value(pair.clean)))
    if not len(hit):
        return out
    p0 = int(hit[0])
    start = min(layer for layer, _ in receivers)
    groups = cfg.n_heads // cfg.n_kv_heads
    hooks = []
    by_layer: dict[int, list[int]] = {}
    for layer, head in receivers:
        by_layer.setdefault(layer, []).append(head)
    for layer, heads in sorted(by_layer.items()):
        # Sender rows above this receiver layer do not reach it: they keep the clean value.
        reach = torch.tensor([s_layer < layer for s_layer, _ in senders])
        block = model.blocks[layer]
        with torch.no_grad():
            x = block.ln1(pair.clean.resid[layer][:, p0:] + deltas[:, p0:])  # [m, pos', d_model]
            for kind in receiver_input:
                proj = getattr(block.attn, f"{kind}_proj")
                n = cfg.n_heads if kind == "q" else cfg.n_kv_heads
                new = proj(x).view(m, -1, n, cfg.d_head)
                idx = sorted({h if kind == "q" else h // groups for h in heads})
                edit = torch.zeros(m, new.shape[1], n, 1, dtype=torch.bool)
                edit[:, :, idx] = (reach[:, None] & recv[p0:][None])[:, :, None, None]
                hooks.append((f"blocks.{layer}.attn.hook_{kind}", overwrite(new, edit)))
    with torch.no_grad():
        logits = decode_from(model, pair.clean, start, p0, m, pair.at, hooks)
    return pair.metric(logits).float().cpu()
