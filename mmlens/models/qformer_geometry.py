"""Attention-derived geometry of InstructBLIP's image tokens.

A Q-Former query token has no pixel box: it reads every patch through cross-attention. So that
box-based groups (``related`` / ``other``), ``patches_in_box`` and heat maps on the image still
work, each query is mapped to patches by the Q-Former's own cross-attention (mean over heads and
over the cross-attention layers, CLS column dropped, rows renormalised): :func:`query_patch_map`
gives the soft map; :func:`with_query_geometry` gives each query the row, column and pixel box of
its most-attended patch. This is a summary of attention, not a receptive field: a query also
mixes every other patch, and the map depends on the instruction (it is recomputed per prompt).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mmlens.errors import MMLensError
from mmlens.inputs import ImageGrid, MMInputs


@torch.no_grad()
def query_patch_map(model: Any, inputs: MMInputs) -> Float[Tensor, "n_img n_query n_patch"]:
    """How much each query token reads each patch: cross-attention averaged over heads and layers.

    Args:
        model: A :class:`~mmlens.models.HookedVLM` with a Q-Former (InstructBLIP).
        inputs: Its prepared inputs (pixels and the Q-Former's instruction).

    Returns:
        Rows summing to 1 over the patch grid (row-major, CLS excluded).

    Raises:
        MMLensError: a model without a Q-Former.
    """
    if getattr(model, "qformer", None) is None:
        raise MMLensError("query_patch_map needs a model with a Q-Former (InstructBLIP); LLaVA-style image tokens are patches.")
    names = [f"qformer.blocks.{i}.cross_attn.hook_pattern" for i, b in enumerate(model.qformer.blocks) if b.has_cross_attention]
    _, cache = model.run_with_cache(
        pixel_values=inputs.pixel_values, qformer_input_ids=inputs.qformer_input_ids,
        qformer_attention_mask=inputs.qformer_attention_mask, vision_stage="image_embed", names_filter=names,
    )
    pattern = torch.stack([cache[n] for n in names]).mean(dim=(0, 2))  # [n_img, n_query, v_pos]
    patches = pattern[..., 1:]  # CLS first
    return patches / patches.sum(-1, keepdim=True)


def with_query_geometry(model: Any, inputs: MMInputs) -> MMInputs:
    """``inputs`` whose image positions carry the patch (and pixel box) each query attends most.

    Query ``k`` of image ``r`` fills the ``k``-th image position of batch row ``r``; it gets
    ``row``/``col``/``boxes`` of ``argmax`` of :func:`query_patch_map`, so ``patches_in_box``
    marks a query as related when that patch overlaps the box.
    """
    weights = query_patch_map(model, inputs)
    grid = inputs.image_grid
    row, col, boxes = grid.row.clone(), grid.col.clone(), grid.boxes.clone()
    side = model.vlm_cfg.vision.grid
    top = weights.argmax(-1).cpu()  # [n_img, n_query]
    for r, view in enumerate(grid.views):
        positions = (grid.image_index[r] >= 0).nonzero().flatten()
        if view is None or len(positions) == 0:
            continue
        for pos, patch in zip(positions.tolist(), top[grid.image_index[r, positions[0]]].tolist()):
            rr, cc = divmod(patch, side)
            row[r, pos], col[r, pos] = rr, cc
            boxes[r, pos] = float("nan") if view.is_padding(rr, cc) else torch.tensor(view.patch_box(rr, cc), dtype=torch.float64)
    return replace(inputs, image_grid=ImageGrid(grid.image_index, row, col, boxes, grid.views, grid.kind, grid.tile))
