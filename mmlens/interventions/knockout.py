"""Attention knockout: stop a group of queries from reading a group of keys (methods.md §2).

Hook factories return TransformerLens hook functions; builders return ``list[(hook_name, fn)]``,
so experiments compose by list concatenation and nothing edits the model permanently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mmlens.errors import MMLensError, check_layer
from mmlens.hooks import FwdHooks, HookFn, HookPoint

MODES = ("pre_softmax", "post_softmax")
FILLS = ("-inf", "finfo_min")


def pair_mask(
    src: Bool[Tensor, "batch pos"], dst: Bool[Tensor, "batch pos"], q_len: int, k_len: int
) -> Bool[Tensor, "batch query_pos key_pos"]:
    """Which (query, key) pairs to block, for attention over ``k_len`` keys of which the last
    ``q_len`` are the queries (a prefill has ``q_len == k_len``; a partial rerun fewer).
    Positions beyond the groups' length (generated tokens) are in neither group."""
    pad = k_len - src.shape[1]
    if pad < 0:
        raise MMLensError(f"token groups cover {src.shape[1]} positions but attention has only {k_len} keys.")
    src = torch.nn.functional.pad(src, (0, pad))
    dst = torch.nn.functional.pad(dst, (0, pad))[:, k_len - q_len :]
    return dst[:, :, None] & src[:, None, :]


def block_attention(
    src: Bool[Tensor, "batch pos"],
    dst: Bool[Tensor, "batch pos"],
    heads: Sequence[int] | None = None,
    mode: str = "pre_softmax",
    fill: str = "-inf",
) -> HookFn:
    """Stop ``dst`` queries from reading ``src`` keys.

    ``pre_softmax`` adds −∞ (or ``finfo(dtype).min``, the reference code's choice) to the scores
    so the softmax renormalises over the remaining keys; ``post_softmax`` zeroes pattern entries
    without renormalising (seed 003's text).

    Attach at: ``blocks.{l}.attn.hook_attn_scores`` (pre_softmax) or ``blocks.{l}.attn.hook_pattern``
    (post_softmax) — :func:`knockout` picks the right one.

    Args:
        src: Key positions to hide, ``[batch, pos]``.
        dst: Query positions that lose access, ``[batch, pos]``.
        heads: Heads to block (all when None).
        mode: ``"pre_softmax"`` or ``"post_softmax"``.
        fill: ``"-inf"`` or ``"finfo_min"`` (pre-softmax only).

    References: seed 002 §3.2; seed 003 §3.2.
    """
    if mode not in MODES or fill not in FILLS:
        raise MMLensError(f"mode must be one of {MODES} and fill one of {FILLS}; got {mode!r}, {fill!r}.")

    def hook(x: Float[Tensor, "batch head_index query_pos key_pos"], hook: HookPoint) -> Tensor:
        pairs = pair_mask(src.to(x.device), dst.to(x.device), x.shape[-2], x.shape[-1])[:, None]
        if heads is not None:
            sel = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
            sel[list(heads)] = True
            pairs = pairs & sel[None, :, None, None]
        if mode == "post_softmax":
            return x.masked_fill(pairs, 0.0)
        value = float("-inf") if fill == "-inf" else torch.finfo(x.dtype).min
        return x.masked_fill(pairs, value)

    return hook


def window(layer: int, k: int, n_layers: int) -> range:
    """The truncated centred window of ``k`` layers around ``layer`` (not shifted at the edges)."""
    layer = check_layer(layer, n_layers)
    return range(max(0, layer - k // 2), min(n_layers, layer + k // 2 + 1))


def paper_window_size(n_layers: int) -> int:
    """Seed 002's k = 9 of 32 layers scaled to a model of ``n_layers`` (odd, at least 1).

    9 for the 32-layer LLaVA-1.5-7B, 11 for 40 layers, 1 for a 4-layer model: a fixed k = 9
    would cover every layer of a shallow model and flatten each curve.

    Example:
        >>> [paper_window_size(n) for n in (4, 28, 32, 40)]
        [1, 9, 9, 11]
    """
    k = max(1, round(9 * n_layers / 32))
    return k + 1 if k % 2 == 0 else k


def onward(layer: int, n_layers: int) -> range:
    """Layers ``layer .. n_layers-1`` (seed 003's released-code scope)."""
    layer = check_layer(layer, n_layers)
    return range(layer, n_layers)


def knockout(
    groups: Mapping[str, Bool[Tensor, "batch pos"]],
    src: str | Tensor,
    dst: str | Tensor,
    layers: int | Iterable[int],
    heads: Sequence[int] | None = None,
    mode: str = "pre_softmax",
    fill: str = "-inf",
    *,
    n_layers: int | None = None,
) -> FwdHooks:
    """Hooks that block ``src`` → ``dst`` attention at ``layers``.

    Args:
        groups: Token groups of the inputs.
        src: Key group (name or mask), e.g. ``"image"``.
        dst: Query group (name or mask), e.g. ``"last"``; ``"last"``→``"last"`` blocks only the diagonal.
        layers: One layer or several (``window(l, 9, L)``, ``onward(l, L)``).
        heads: Heads to block, all when None.
        mode, fill: See :func:`block_attention`.
        n_layers: The decoder's depth, to check ``layers`` (recommended).

    Example:
        >>> hooks = knockout(inputs.groups, "image", "last", window(12, 9, 32), n_layers=32)  # doctest: +SKIP
        >>> model.run_with_hooks(inputs, fwd_hooks=hooks + other_hooks)  # doctest: +SKIP
    """
    src_mask = groups[src] if isinstance(src, str) else src
    dst_mask = groups[dst] if isinstance(dst, str) else dst
    layers = [layers] if isinstance(layers, int) else list(layers)
    if n_layers is not None:
        layers = [check_layer(layer, n_layers) for layer in layers]
    point = "hook_attn_scores" if mode == "pre_softmax" else "hook_pattern"
    fn = block_attention(src_mask, dst_mask, heads, mode, fill)
    return [(f"blocks.{layer}.attn.{point}", fn) for layer in layers]
