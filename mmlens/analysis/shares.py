"""Attention share of token groups at a query position, per layer and head (methods.md §4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from mmlens.errors import MMLensError
from mmlens.inputs import MMInputs


@dataclass(frozen=True)
class ShareResult:
    """λ_group per layer: the attention mass the query row puts on each group's keys.

    Attributes:
        per_layer: ``[batch, layer, group]`` after ``head_reduce``.
        per_head: ``[batch, layer, head, group]``.
        groups: Group names.
        head_reduce: ``"mean"`` or ``"max"``.
    """

    per_layer: Float[Tensor, "batch layer group"]
    per_head: Float[Tensor, "batch layer head_index group"]
    groups: tuple[str, ...]
    head_reduce: str

    def to_dataframe(self, per_head: bool = False) -> pd.DataFrame:
        if per_head:
            b, L, H, G = self.per_head.shape
            idx = pd.MultiIndex.from_product([range(b), range(L), range(H), self.groups], names=["row", "layer", "head", "group"])
            return pd.DataFrame({"share": self.per_head.flatten().tolist()}, index=idx).reset_index()
        b, L, G = self.per_layer.shape
        idx = pd.MultiIndex.from_product([range(b), range(L), self.groups], names=["row", "layer", "group"])
        return pd.DataFrame({"share": self.per_layer.flatten().tolist()}, index=idx).reset_index()


def attention_share(
    model,
    inputs: MMInputs,
    query: str = "last",
    groups: Sequence[str] = ("system", "image", "user"),
    head_reduce: str = "mean",
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
            (the authors' deleted notebooks).

    References: seeds 000/001 §3.2.
    """
    if head_reduce not in ("mean", "max"):
        raise MMLensError(f"head_reduce must be 'mean' or 'max', not {head_reduce!r}.")
    q = inputs.groups.require(query).float()
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
    return ShareResult(per_layer, per_head, tuple(groups), head_reduce)
