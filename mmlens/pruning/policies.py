"""Token-pruning policies as forward options: ``model(inputs, prune=HiMAP())``.

A policy is a value; ``policy.plan(n_layers)`` makes the per-forward plan the decoder consults
before every block. Pruning happens once, at prefill; generation continues with a KV cache
whose length differs by layer. Kept tokens keep their original rotary positions; each sample of
a batch is ranked on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mmlens.errors import MMLensError
from mmlens.models.decoder import SeqState
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
    """One forward's pruning: collects attention where needed and reshapes the sequence."""

    def __init__(self, stages: list[Stage], mode: str, n_layers: int):
        if mode not in MODES:
            raise MMLensError(f"mode must be one of {MODES}, not {mode!r}.")
        for s in stages:
            if not 0 <= s.layer < n_layers or (s.layer == 0 and s.score):
                raise MMLensError(f"cannot prune before layer {s.layer} of {n_layers}: ranking uses layer {s.layer - 1}.")
        self.stages = {s.layer: s for s in stages}
        self.mode = mode
        self.attn: dict[int, Tensor] = {}
        self.kept: dict[int, Tensor] = {}
        """Prune layer → ``[batch, pos]`` original index of each position from that layer on
        (mask mode: ``-1`` where a token is hidden)."""

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
        n_now = int(candidates[0].sum())
        n_keep = stage.keep(n_now)
        if bool((candidates.sum(-1) != n_now).any()):
            raise MMLensError("every prompt of a pruned batch must hold the same number of image tokens.")
        if stage.score:
            scores = SCORERS[stage.score](self.attn.pop(layer), state)
        else:
            scores = torch.zeros(candidates.shape, device=candidates.device)
        scores = scores.masked_fill(~candidates, float("-inf"))
        top = scores.topk(n_keep, dim=-1).indices if n_keep else scores[:, :0].long()
        keep_img = torch.zeros_like(candidates).scatter(1, top, True) & candidates
        keep = ~candidates | keep_img
        if self.mode == "mask":
            # Pruned tokens stay in the sequence but no other position reads them any more.
            state.visible = state.visible & keep
            self.kept[layer] = state.kept.masked_fill(~keep, -1)
            return state
        index = keep.nonzero()[:, 1].view(keep.shape[0], -1)
        state = state.gather(index)
        self.kept[layer] = state.kept
        return state


@dataclass(frozen=True)
class Truncate:
    """Keep the ``keep`` image tokens the last row attends to most (layer K-1), from layer K on.

    ``keep=0`` removes all image information from layer K on (the cliff-layer sweep).

    References: seeds 000 §3.3, 001 §3.4.
    """

    layer: int
    keep: int
    mode: str = "mask"

    def plan(self, n_layers: int) -> Plan:
        score = "last_row" if self.keep > 0 else ""
        return Plan([Stage(self.layer, lambda n: min(self.keep, n), score)], self.mode, n_layers)


@dataclass(frozen=True)
class FastV:
    """Drop the ``ratio`` least-attended image tokens after layer K-1.

    ``rank_by="all_rows"`` averages the attention each token receives over all query rows (the
    paper); ``"last_row"`` uses the last query row only (the released code).

    References: seed 003 §4 (FastV baseline).
    """

    layer: int = 2
    ratio: float = 0.5
    rank_by: str = "all_rows"
    mode: str = "drop"

    def plan(self, n_layers: int) -> Plan:
        if self.rank_by not in ("all_rows", "last_row"):
            raise MMLensError(f"rank_by must be 'all_rows' or 'last_row', not {self.rank_by!r}.")
        return Plan([Stage(self.layer, ratio_keep(self.ratio), self.rank_by)], self.mode, n_layers)


@dataclass(frozen=True)
class HiMAP:
    """Two-stage pruning: by instruction attention at K1, then by intra-image attention at K2.

    ``phi_dp``: ``"column"`` (Σ_i∈V A(i, v), paper prose and code; default), ``"row"`` (the
    printed formula's A(v, i)) or ``"column_normalised"`` (divided by how many image rows can
    see v). Defaults are seed 003 Table 3 for LLaVA-1.5-7B.

    References: seed 003 §4, eq. 8–9.
    """

    k1: int = 2
    r1: float = 0.5
    k2: int = 8
    r2: float = 0.75
    phi_dp: str = "column"
    mode: str = "drop"

    def plan(self, n_layers: int) -> Plan:
        if self.phi_dp not in ("column", "row", "column_normalised"):
            raise MMLensError(f"phi_dp must be 'column', 'row' or 'column_normalised', not {self.phi_dp!r}.")
        if not 0 < self.k1 < self.k2:
            raise MMLensError(f"HiMAP needs 0 < k1 < k2, got k1={self.k1}, k2={self.k2}.")
        stages = [Stage(self.k1, ratio_keep(self.r1), "instruction"), Stage(self.k2, ratio_keep(self.r2), self.phi_dp)]
        return Plan(stages, self.mode, n_layers)
