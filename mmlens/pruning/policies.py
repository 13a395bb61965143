"""Token-pruning policies as forward options: ``model(inputs, prune=HiMAP())``.

A policy is a value; ``policy.plan(n_layers)`` makes the per-forward plan the decoder consults
before every block. Pass the plan instead of the policy to keep it and read what each stage
kept: ``plan = FastV(2, 0.5).plan(n_layers); model(inputs, prune=plan); plan.kept``. Pruning happens once, at prefill; generation continues with a KV cache
whose length differs by layer. Kept tokens keep their original rotary positions; each sample of
a batch is ranked on its own, and keeps its own count (a ratio of its own image tokens), so
prompts with different image-token counts (LLaVA-NeXT, LLaVA-OneVision) batch together.

Anyres newline slots are image positions and are ranked like any other (docs/methods.md#token-groups:
the image group holds base view, tiles and newline slots); ``keep_newlines=True`` keeps them
all, never ranked, and the ratio then applies to the other image positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from mmlens.conventions import resolve
from mmlens.errors import MMLensError
from mmlens.models.decoder import SeqState
from mmlens.pruning.checks import check_fastv, check_himap, check_truncate
from mmlens.pruning.ranking import SCORERS

MODES = ("drop", "mask")


@dataclass(frozen=True)
class Stage:
    """Prune image tokens before block ``layer`` using block ``layer - 1``'s attention.

    Attributes:
        layer: First block that runs without the pruned tokens.
        keep: Image tokens to keep, as a function of how many remain.
        score: Name of the scorer in :data:`~mmlens.pruning.ranking.SCORERS`.
    """

    layer: int
    keep: Callable[[int], int]
    score: str


def ratio_keep(ratio: float) -> Callable[[int], int]:
    """Keep ``round(n * (1 - ratio))`` of ``n`` tokens (576 → 288 at 50%, 288 → 72 at 75%)."""
    if not 0 <= ratio <= 1:
        raise MMLensError(f"a pruning ratio must lie in [0, 1], not {ratio}.")
    return lambda n: int(round(n * (1 - ratio)))


class Plan:
    """One forward's pruning: collects attention where needed and reshapes the sequence.

    In ``drop`` mode, rows that keep different numbers of tokens are left-padded to the longest
    (padding is neither valid nor visible; its ``kept`` index is -1). In ``mask`` mode a hidden
    token still reads its own key unless ``hide_self`` (the released code's mask, which hides the
    key from every row); only the hidden positions' own outputs differ.
    """

    def __init__(self, stages: list[Stage], mode: str, n_layers: int, keep_newlines: bool = False, hide_self: bool = False):
        if mode not in MODES:
            raise MMLensError(f"mode must be one of {MODES}, not {mode!r}.")
        for s in stages:
            if not 0 <= s.layer < n_layers or (s.layer == 0 and s.score):
                raise MMLensError(f"cannot prune before layer {s.layer} of {n_layers}: ranking uses layer {s.layer - 1}.")
        self.stages = {s.layer: s for s in stages}
        self.mode = mode
        self.keep_newlines = keep_newlines
        self.hide_self = hide_self
        self.attn: dict[int, Tensor] = {}
        self.kept: dict[int, Tensor] = {}
        """Prune layer → ``[batch, pos]`` original index of each position from that layer on
        (``-1`` where a token is hidden in mask mode, and at drop mode's padding)."""

    def wants_pattern(self, layer: int) -> bool:
        stage = self.stages.get(layer + 1)
        return stage is not None and bool(stage.score)

    def observe(self, layer: int, pattern: Tensor) -> None:
        self.attn[layer + 1] = pattern.float().mean(1)

    def before_block(self, layer: int, state: SeqState) -> SeqState:
        stage = self.stages.get(layer)
        if stage is None:
            return state
        candidates = state.image & state.visible
        if self.keep_newlines:
            candidates = candidates & ~state.newline
        n_keep = torch.tensor([stage.keep(int(n)) for n in candidates.sum(-1)], device=candidates.device)
        if stage.score:
            scores = SCORERS[stage.score](self.attn.pop(layer), state)
        else:
            scores = torch.zeros(candidates.shape, device=candidates.device)
        scores = scores.masked_fill(~candidates, float("-inf"))
        # Rank of every position within its row (0 = highest score); keep each row's top n_keep.
        order = scores.argsort(dim=-1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
        keep = ~candidates | (rank < n_keep[:, None])
        if self.mode == "mask":
            # Pruned tokens stay in the sequence but no other position reads them any more.
            state.visible = state.visible & keep
            # Hidden now or at an earlier stage.
            self.kept[layer] = state.kept.masked_fill(state.image & ~state.visible, -1)
            return state
        state = _keep_positions(state, keep)
        self.kept[layer] = state.kept
        return state


def _keep_positions(state: SeqState, keep: Tensor) -> SeqState:
    """The sequence without the positions ``keep`` [batch, pos] rejects, rows left-padded to the
    longest (padding repeats position 0 and is marked invalid everywhere)."""
    lengths = keep.sum(-1)
    n = int(lengths.max())
    pad = n - lengths
    # Column of each kept position in the output; rejected ones go to a spare last column.
    target = torch.where(keep, pad[:, None] + keep.long().cumsum(-1) - 1, n)
    source = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    index = torch.zeros(keep.shape[0], n + 1, dtype=torch.long, device=keep.device).scatter_(1, target, source)[:, :n]
    state = state.gather(index)
    if bool((pad > 0).any()):
        real = torch.arange(n, device=keep.device)[None] >= pad[:, None]
        state.valid, state.visible = state.valid & real, state.visible & real
        state.image, state.instruction, state.newline = state.image & real, state.instruction & real, state.newline & real
        state.kept = state.kept.masked_fill(~real, -1)
    return state


@dataclass(frozen=True)
class Truncate:
    """Keep the ``keep`` image tokens the last row attends to most (layer K-1), from layer K on.

    ``keep=0`` removes all image information from layer K on (the cliff-layer sweep), newline
    slots included unless ``keep_newlines``.

    References: "From Redundancy to Relevance (v1)" §3.3; "From Redundancy to Relevance" §3.4; docs/methods.md#truncation.
    """

    layer: int
    keep: int
    mode: str = "mask"
    keep_newlines: bool = False
    hide_self: bool | None = None

    def __post_init__(self) -> None:
        check_truncate(self)

    def plan(self, n_layers: int) -> Plan:
        score = "last_row" if self.keep > 0 else ""
        stages = [Stage(self.layer, lambda n: min(self.keep, n), score)]
        return Plan(stages, self.mode, n_layers, self.keep_newlines, bool(self.hide_self))


@dataclass(frozen=True)
class FastV:
    """Drop the ``ratio`` least-attended image tokens after layer K-1.

    ``rank_by="all_rows"`` averages the attention each token receives over all query rows (the
    paper); ``"last_row"`` uses the last query row only (the released code); None: ``"all_rows"``
    (:func:`with_convention` fills it). ``keep_newlines`` keeps anyres newline slots out of the
    ranking (see the module docstring). ``hide_self``: in mask mode, hide a pruned token's key
    from its own row too (the released code).

    References: "Unraveling the Shift" §5.2 (FastV baseline); docs/methods.md#pruning.
    """

    layer: int = 2
    ratio: float = 0.5
    rank_by: str | None = None
    mode: str = "drop"
    keep_newlines: bool = False
    hide_self: bool | None = None

    def __post_init__(self) -> None:
        check_fastv(self)

    def plan(self, n_layers: int) -> Plan:
        rank_by = self.rank_by or "all_rows"
        if rank_by not in ("all_rows", "last_row"):
            raise MMLensError(f"rank_by must be 'all_rows' or 'last_row', not {rank_by!r}.")
        stages = [Stage(self.layer, ratio_keep(self.ratio), rank_by)]
        return Plan(stages, self.mode, n_layers, self.keep_newlines, bool(self.hide_self))


@dataclass(frozen=True)
class HiMAP:
    """Two-stage pruning: by instruction attention at K1, then by intra-image attention at K2.

    ``phi_dp``: ``"column"`` (Σ_i∈V A(i, v), paper prose and code; default), ``"row"`` (the
    printed formula's A(v, i)) or ``"column_normalised"`` (divided by how many image rows can
    see v); None: ``"column"``. Defaults are "Unraveling the Shift" Table 3 for LLaVA-1.5-7B.
    ``keep_newlines`` keeps anyres newline slots out of both rankings (see the module docstring).
    ``hide_self``: in mask mode, hide a pruned token's key from its own row too.

    References: "Unraveling the Shift" §4.1, eq. 8–9; docs/methods.md#pruning.
    """

    k1: int = 2
    r1: float = 0.5
    k2: int = 8
    r2: float = 0.75
    phi_dp: str | None = None
    mode: str = "drop"
    keep_newlines: bool = False
    hide_self: bool | None = None

    def __post_init__(self) -> None:
        check_himap(self)

    def plan(self, n_layers: int) -> Plan:
        phi_dp = self.phi_dp or "column"
        if phi_dp not in ("column", "row", "column_normalised"):
            raise MMLensError(f"phi_dp must be 'column', 'row' or 'column_normalised', not {phi_dp!r}.")
        if not 0 < self.k1 < self.k2:
            raise MMLensError(f"HiMAP needs 0 < k1 < k2, got k1={self.k1}, k2={self.k2}.")
        stages = [Stage(self.k1, ratio_keep(self.r1), "instruction"), Stage(self.k2, ratio_keep(self.r2), phi_dp)]
        return Plan(stages, self.mode, n_layers, self.keep_newlines, bool(self.hide_self))


def with_convention(policy: Any, convention: str = "paper") -> Any:
    """``policy`` with every option it leaves unset (None) taken from ``convention``.

    ``"paper"`` gives mmlens' defaults; ``"released_code"`` the authors' code (FastV ranked by the
    last row, a pruned key hidden from its own row in mask mode; docs/conventions.md). Options
    set explicitly are kept. None and plans (``policy.plan(n)``) are returned as they are.

    Example:
        >>> with_convention(FastV(2, 0.5), "released_code")
        FastV(layer=2, ratio=0.5, rank_by='last_row', mode='drop', keep_newlines=False, hide_self=True)
    """
    method = {FastV: "fastv", HiMAP: "himap", Truncate: "truncate"}.get(type(policy))
    if method is None:
        return policy
    given = {f.name: getattr(policy, f.name) for f in fields(policy)}
    values = resolve(method, convention, **given)
    return replace(policy, **{name: values[name] for name, value in given.items() if value is None})
