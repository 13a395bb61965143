"""circuitsvis attention views with image tokens labelled by their patch."""

from __future__ import annotations

import torch

from mmlens.inputs import MMInputs


def token_labels(model, inputs: MMInputs, row: int = 0) -> list[str]:
    """Readable labels: text tokens as themselves, image tokens as ``img(r,c)``."""
    toks = model.processor.tokenizer.convert_ids_to_tokens(inputs.input_ids[row].tolist())
    grid = inputs.image_grid
    return [f"img({int(grid.row[row, i])},{int(grid.col[row, i])})" if grid.image_index[row, i] >= 0 else t for i, t in enumerate(toks)]


def attention_view(model, inputs: MMInputs, layer: int, row: int = 0):
    """A circuitsvis ``attention_patterns`` view of one decoder layer (renders in Jupyter)."""
    import circuitsvis as cv

    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=f"blocks.{layer}.attn.hook_pattern")
    mask = inputs.attention_mask[row].bool()
    pattern = cache["pattern", layer][row][:, mask][:, :, mask]
    labels = [t for t, m in zip(token_labels(model, inputs, row), mask.tolist()) if m]
    return cv.attention.attention_patterns(tokens=labels, attention=pattern)
