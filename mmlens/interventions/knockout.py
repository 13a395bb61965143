"""Attention knockout: stop a group of queries from reading a group of keys (docs/methods.md#attention-knockout).

Hook factories return TransformerLens hook functions; builders return ``list[(hook_name, fn)]``,
so experiments compose by list concatenation and nothing edits the model permanently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mmlens.errors import ForeignGroupError, InvalidInputError, MMLensError, check_layer
from mmlens.hooks import FwdHooks, HookFn, HookPoint
from mmlens.inputs import MMInputs, TokenGroups
from mmlens.inputs.tokens import require_nonempty

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
    *,
    groups: TokenGroups | None = None,
) -> HookFn:
    """Stop ``dst`` queries from reading ``src`` keys.

    ``pre_softmax`` adds −∞ (or ``finfo(dtype).min``, the reference code's choice) to the scores
    so the softmax renormalises over the remaining keys; ``post_softmax`` zeroes pattern entries
    without renormalising ("Unraveling the Shift" §3.2).

    Attach at: ``blocks.{l}.attn.hook_attn_scores`` (pre_softmax) or ``blocks.{l}.attn.hook_pattern``
    (post_softmax) — :func:`knockout` picks the right one.

    Args:
        src: Key positions to hide, ``[batch, pos]``.
        dst: Query positions that lose access, ``[batch, pos]``.
        heads: Heads to block (all when None).
        mode: ``"pre_softmax"`` or ``"post_softmax"``.
        fill: ``"-inf"`` or ``"finfo_min"`` (pre-softmax only).
        groups: The token groups the masks come from: the hook then refuses to run on a prompt
            they were not built for (:class:`~mmlens.errors.ForeignGroupError`).

    Raises:
        InvalidInputError: ``heads`` empty, not integers, or repeated (out of range: when it runs).
        ForeignGroupError: ``src`` and ``dst`` of different shapes.

    References: "Cross-modal Information Flow" §3.2; "Unraveling the Shift" §3.2.
    """
    if mode not in MODES or fill not in FILLS:
        raise MMLensError(f"mode must be one of {MODES} and fill one of {FILLS}; got {mode!r}, {fill!r}.")
    heads = check_heads(heads)
    if src.shape != dst.shape:
        raise ForeignGroupError(
            f"src {tuple(src.shape)} and dst {tuple(dst.shape)} masks differ in shape: take both from the "
            "groups of the same inputs."
        )

    def hook(x: Float[Tensor, "batch head_index query_pos key_pos"], hook: HookPoint) -> Tensor:
        if groups is not None:
            groups.check_running()
        pairs = pair_mask(src.to(x.device), dst.to(x.device), x.shape[-2], x.shape[-1])[:, None]
        if heads is not None:
            if max(heads) >= x.shape[1] or min(heads) < -x.shape[1]:
                raise InvalidInputError(
                    f"heads={list(heads)} at {hook.name}, which has {x.shape[1]} heads: use 0..{x.shape[1] - 1}."
                )
            sel = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
            sel[list(heads)] = True
            pairs = pairs & sel[None, :, None, None]
        if mode == "post_softmax":
            return x.masked_fill(pairs, 0.0)
        value = float("-inf") if fill == "-inf" else torch.finfo(x.dtype).min
        return x.masked_fill(pairs, value)

    return hook


def check_heads(heads: Sequence[int] | None) -> tuple[int, ...] | None:
    """``heads`` as a tuple after checking it names at least one head, each once.

    Raises:
        InvalidInputError: an empty list (it would block nothing: pass None for all heads),
            non-integers, or repeats.
    """
    if heads is None:
        return None
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
        raise InvalidInputError(f"heads must be a list of head indices or None, not {heads!r}.")
    heads = tuple(heads)
    if not heads:
        raise InvalidInputError("heads=[] selects no head, so nothing would be blocked: pass None for all heads.")
    if not all(isinstance(h, int) and not isinstance(h, bool) for h in heads):
        raise InvalidInputError(f"heads must be integers, got {list(heads)}.")
    if len(set(heads)) != len(heads):
        raise InvalidInputError(f"heads {list(heads)} repeats a head: list each once.")
    return heads


def _label(group: str | Tensor, role: str) -> str:
    return group if isinstance(group, str) else f"the {role} mask"


def window(layer: int, k: int, n_layers: int) -> range:
    """The window of ``k`` layers centred on ``layer``, truncated (not shifted) at the edges.

    Layers ``[layer - k//2, layer + k - k//2 - 1]`` clipped to ``[0, n_layers)``: ``k//2`` on each
    side for odd ``k``; for even ``k`` the extra layer is below ``layer``, as in the released
    code of "Cross-modal Information Flow" (``range(l - k//2, l - (-k//2))``).

    Example:
        >>> list(window(10, 9, 32)), list(window(10, 4, 32)), list(window(0, 4, 32))
        ([6, 7, 8, 9, 10, 11, 12, 13, 14], [8, 9, 10, 11], [0, 1])

    Raises:
        LayerOutOfRangeError: ``layer`` outside the model.
        MMLensError: ``k < 1``.
    """
    layer = check_layer(layer, n_layers)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"a knockout window needs k >= 1 layers (an integer), got k={k!r}.")
    return range(max(0, layer - k // 2), min(n_layers, layer + k - k // 2))


def paper_window_size(n_layers: int) -> int:
    """Window size: the k = 9 of 32 layers of "Cross-modal Information Flow" §5, scaled to ``n_layers``.

    Odd, at least 1.

    9 for the 32-layer LLaVA-1.5-7B, 11 for 40 layers, 1 for a 4-layer model: a fixed k = 9
    would cover every layer of a shallow model and flatten each curve.

    Example:
        >>> [paper_window_size(n) for n in (4, 28, 32, 40)]
        [1, 9, 9, 11]
    """
    k = max(1, round(9 * n_layers / 32))
    return k + 1 if k % 2 == 0 else k


def onward(layer: int, n_layers: int) -> range:
    """Layers ``layer .. n_layers-1`` (the effective scope of "Unraveling the Shift"'s released code)."""
    layer = check_layer(layer, n_layers)
    return range(layer, n_layers)


def knockout(
    groups: Mapping[str, Bool[Tensor, "batch pos"]] | MMInputs,
    src: str | Tensor,
    dst: str | Tensor,
    layers: int | Iterable[int],
    heads: Sequence[int] | None = None,
    mode: str = "pre_softmax",
    fill: str = "-inf",
    *,
    n_layers: int | None = None,
    allow_empty: bool = False,
) -> FwdHooks:
    """Hooks that block ``src`` → ``dst`` attention at ``layers``.

    Args:
        groups: Token groups of the inputs (or the inputs themselves).
        src: Key group (name or mask), e.g. ``"image"``.
        dst: Query group (name or mask), e.g. ``"last"``; ``"last"``→``"last"`` blocks only the diagonal.
        layers: One layer or several (``window(l, 9, L)``, ``onward(l, L)``).
        heads: Heads to block, all when None.
        mode, fill: See :func:`block_attention`.
        n_layers: The decoder's depth, to check ``layers`` (recommended).
        allow_empty: Accept a ``src`` or ``dst`` group that selects nothing in some row (the
            knockout is then the identity there); by default that raises, since the result would
            read as "no effect".

    Raises:
        EmptyGroupError: ``src`` or ``dst`` selects nothing in a row (unless ``allow_empty``).
        ForeignGroupError: (when the hooks run) the groups belong to another prompt.
        InvalidInputError: no layers, or a bad ``heads`` list.

    Example:
        >>> hooks = knockout(inputs.groups, "image", "last", window(12, 9, 32), n_layers=32)  # doctest: +SKIP
        >>> model.run_with_hooks(inputs, fwd_hooks=hooks + other_hooks)  # doctest: +SKIP
    """
    if isinstance(groups, MMInputs):
        groups = groups.groups
    src_mask = groups[src] if isinstance(src, str) else src
    dst_mask = groups[dst] if isinstance(dst, str) else dst
    require_nonempty({_label(src, "src"): src_mask, _label(dst, "dst"): dst_mask}, allow_empty)
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise InvalidInputError("layers is empty, so the knockout would block nothing: give at least one layer.")
    if n_layers is not None:
        layers = [check_layer(layer, n_layers) for layer in layers]
    point = "hook_attn_scores" if mode == "pre_softmax" else "hook_pattern"
    owner = groups if isinstance(groups, TokenGroups) else None
    fn = block_attention(src_mask, dst_mask, heads, mode, fill, groups=owner)
    return [(f"blocks.{layer}.attn.{point}", fn) for layer in layers]
