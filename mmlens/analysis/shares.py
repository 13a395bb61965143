"""Attention share of token groups at a query position, per layer and head (docs/methods.md#attention-shares)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from mmlens.conventions import resolve
from mmlens.errors import MMLensError
from mmlens.inputs import MMInputs
from mmlens.inputs.tokens import require_nonempty
from mmlens.result import Result
from mmlens.viz.flow import plot_shares


@dataclass(frozen=True)
class ShareResult(Result):
    """λ_group per layer: the attention mass the query row puts on each group's keys.

    Attributes:
        share: ``[batch, layer, group]`` after ``head_reduce``.
        head_share: ``[batch, layer, head, group]``, before it.
        groups: Group names.
        head_reduce: ``"mean"`` or ``"max"``.
    """

    COLUMNS: ClassVar[dict[str, str]] = {
        "row": "batch row (input index after concat)",
        "layer": "decoder layer",
        "group": "key group",
        "share": "attention mass of the query on the group's keys, after head_reduce",
    }

    share: Float[Tensor, "batch layer group"]
    head_share: Float[Tensor, "batch layer head_index group"]
    groups: tuple[str, ...]
    head_reduce: str

    def to_dataframe(self, per_head: bool = False) -> pd.DataFrame:
        """One row per batch row, layer and group (``per_head``: and head, an extra ``head`` column)."""
        if per_head:
            b, L, H, G = self.head_share.shape
            idx = pd.MultiIndex.from_product([range(b), range(L), range(H), self.groups], names=["row", "layer", "head", "group"])
            return pd.DataFrame({"share": self.head_share.flatten().tolist()}, index=idx).reset_index()
        b, L, G = self.share.shape
        idx = pd.MultiIndex.from_product([range(b), range(L), self.groups], names=["row", "layer", "group"])
        return pd.DataFrame({"share": self.share.flatten().tolist()}, index=idx).reset_index()

    def per_layer(self) -> pd.DataFrame:
        """Mean share over rows, one row per layer and group (columns layer, group, share)."""
        return self.to_dataframe().groupby(["layer", "group"], sort=False)["share"].mean().reset_index()

    def plot(self) -> Figure:
        """Stacked share of each group per layer ("From Redundancy to Relevance" Fig. 2)."""
        return plot_shares(self.to_dataframe())

    @classmethod
    def concat(cls, results: Sequence[ShareResult]) -> ShareResult:
        """Stack the rows of results over the same groups and head reduction.

        Raises:
            MMLensError: no results, or results with different groups or head reductions.
        """
        first = results[0] if results else None
        if first is None or any((r.groups, r.head_reduce) != (first.groups, first.head_reduce) for r in results):
            raise MMLensError("ShareResult.concat needs results with the same groups and head_reduce.")
        return cls(torch.cat([r.share for r in results]), torch.cat([r.head_share for r in results]), first.groups, first.head_reduce)


def attention_share(
    model,
    inputs: MMInputs,
    query: str = "last",
    groups: Sequence[str] = ("system", "image", "user"),
    head_reduce: str | None = None,
    *,
    convention: str = "paper",
    allow_empty: bool = False,
) -> ShareResult:
    """Head-reduced post-softmax attention of ``query`` summed over each group's keys, per layer.

    Streaming: each layer's pattern is reduced to the query row inside its hook and dropped, so
    no more than one layer's attention pattern is alive at a time.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        inputs: Prepared inputs.
        query: Query group; its rows are averaged when it has several positions.
        groups: Key groups (system/image/user partition the prompt, so their shares sum to 1).
        head_reduce: ``"mean"`` over heads, or ``"max"`` over heads then renormalise the row
            (the authors' deleted notebooks). None: from ``convention``.
        convention: ``"paper"`` (``head_reduce="mean"``) or ``"released_code"`` (``"max"``); see
            docs/conventions.md.
        allow_empty: Accept key groups that select nothing in a row (their share is NaN there)
            instead of raising :class:`~mmlens.errors.EmptyGroupError`.

    References: "From Redundancy to Relevance" §3.3 ("From Redundancy to Relevance (v1)" §3.2).
    """
    head_reduce = resolve("attention_share", convention, head_reduce=head_reduce)["head_reduce"]
    if head_reduce not in ("mean", "max"):
        raise MMLensError(f"head_reduce must be 'mean' or 'max', not {head_reduce!r}.")
    q = inputs.groups.require(query).float()
    require_nonempty({name: inputs.groups[name] for name in groups}, allow_empty)
    g = torch.stack([inputs.groups[name].float() for name in groups], dim=-1)  # [batch, key_pos, group]
    rows: list[Tensor] = [None] * model.cfg.n_layers  # type: ignore[list-item]

    def reduce(pattern: Tensor, hook) -> None:
        row = torch.einsum("bhqk,bq->bhk", pattern.float(), q) / q.sum(-1)[:, None, None]
        rows[hook.layer()] = row

    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        model.run_with_hooks(inputs, fwd_hooks=[(n, reduce) for n in names])
    row = torch.stack(rows, dim=1)  # [batch, layer, head, key_pos]
    per_head = torch.einsum("blhk,bkg->blhg", row, g)
    if head_reduce == "mean":
        per_layer = per_head.mean(2)
    else:
        top = row.max(2).values
        per_layer = torch.einsum("blk,bkg->blg", top / top.sum(-1, keepdim=True), g)
    # A group with no key in a row has no share to report there: NaN, never 0.0.
    none = (g.sum(1) == 0)[:, None]  # [batch, 1, group]
    per_layer, per_head = per_layer.masked_fill(none, float("nan")), per_head.masked_fill(none[:, :, None], float("nan"))
    return ShareResult(per_layer, per_head, tuple(groups), head_reduce)
