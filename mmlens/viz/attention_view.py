"""circuitsvis attention views with image tokens labelled by their patch."""

from __future__ import annotations

import torch

from mmlens.geometry_anyres import BASE, NEWLINE, AnyresGeometry
from mmlens.inputs import MMInputs


def token_labels(model, inputs: MMInputs, row: int = 0) -> list[str]:
    """Readable labels: text tokens as themselves, image tokens by the patch feeding them.

    Single-view images: ``img(r,c)``. Anyres images (LLaVA-NeXT, LLaVA-OneVision): ``base(r,c)``
    for the base view, ``t{tile}(r,c)`` for a patch of tile ``tile`` (row-major over the tile
    grid), ``tiles(r,c)`` for a cell of a shrunk OneVision grid (it mixes several tiles'
    patches), ``nl`` for a newline slot.
    """
    toks = model.processor.tokenizer.convert_ids_to_tokens(inputs.input_ids[row].tolist())
    grid = inputs.image_grid
    anyres = isinstance(grid.views[row], AnyresGeometry)
    labels = []
    for i, tok in enumerate(toks):
        if grid.image_index[row, i] < 0:
            labels.append(tok)
            continue
        kind, tile, r, c = (int(t[row, i]) for t in (grid.kind, grid.tile, grid.row, grid.col))
        if not anyres:
            labels.append(f"img({r},{c})")
        elif kind == NEWLINE:
            labels.append("nl")
        elif kind == BASE:
            labels.append(f"base({r},{c})")
        else:
            labels.append(f"t{tile}({r},{c})" if tile >= 0 else f"tiles({r},{c})")
    return labels


def attention_view(model, inputs: MMInputs, layer: int, row: int = 0):
    """A circuitsvis ``attention_patterns`` view of one decoder layer (renders in Jupyter)."""
    import circuitsvis as cv

    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=f"blocks.{layer}.attn.hook_pattern")
    mask = inputs.attention_mask[row].bool()
    pattern = cache["pattern", layer][row][:, mask][:, :, mask]
    labels = [t for t, m in zip(token_labels(model, inputs, row), mask.tolist()) if m]
    return cv.attention.attention_patterns(tokens=labels, attention=pattern)
