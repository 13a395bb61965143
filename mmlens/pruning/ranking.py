"""Image-token importance scores from a layer's head-mean attention (docs/methods.md#truncation, #pruning).

Every scorer takes the head-mean pattern ``[batch, query_pos, key_pos]`` of the layer before
the prune point and the current sequence state, and returns ``[batch, pos]`` scores (only image
positions are compared).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmlens.models.decoder import SeqState


def _last_row(state: SeqState) -> Tensor:
    idx = torch.arange(state.valid.shape[1], device=state.valid.device)
    return torch.where(state.valid, idx, -1).max(-1).values


def last_row(attn: Tensor, state: SeqState) -> Tensor:
    """Attention the last query row pays to each key (FastV's released code; truncation)."""
    return attn[torch.arange(attn.shape[0]), _last_row(state)]


def all_rows(attn: Tensor, state: SeqState) -> Tensor:
    """Attention each key receives, averaged over all real query rows (FastV's paper text)."""
    rows = state.valid.float()
    return torch.einsum("bqk,bq->bk", attn, rows) / rows.sum(-1, keepdim=True)


def instruction_rows(attn: Tensor, state: SeqState) -> Tensor:
    """φ_sh(v) = Σ_{i∈instruction} A(i, v) (HiMAP, shallow stage)."""
    return torch.einsum("bqk,bq->bk", attn, state.instruction.float())


def image_column(attn: Tensor, state: SeqState) -> Tensor:
    """φ_dp(v) = Σ_{i∈V} A(i, v) over the remaining image rows (HiMAP default: paper prose and code)."""
    return torch.einsum("bqk,bq->bk", attn, (state.image & state.visible).float())


def image_row(attn: Tensor, state: SeqState) -> Tensor:
    """φ_dp(v) = Σ_{i∈V} A(v, i): the row sum the paper's printed formula reads."""
    return torch.einsum("bqk,bk->bq", attn, (state.image & state.visible).float())


def image_column_normalised(attn: Tensor, state: SeqState) -> Tensor:
    """The column sum divided by the number of image rows that can see ``v`` (causal mask)."""
    img = (state.image & state.visible).float()
    seen_by = torch.flip(torch.cumsum(torch.flip(img, [-1]), -1), [-1])  # image rows at or after v
    return image_column(attn, state) / seen_by.clamp(min=1)


SCORERS = {
    "last_row": last_row,
    "all_rows": all_rows,
    "instruction": instruction_rows,
    "column": image_column,
    "row": image_row,
    "column_normalised": image_column_normalised,
}
