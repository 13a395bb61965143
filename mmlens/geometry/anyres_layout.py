"""The layout maths of "anyres" images (LLaVA-NeXT, LLaVA-OneVision): how many views, which
tile grid, which part of the grid holds the image, and OneVision's shrunk size.

Pure integer arithmetic shared by the model (:func:`mmlens.models.anyres.pack_image`) and the
geometry that maps image positions back to pixels (:class:`~mmlens.geometry.AnyresGeometry`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from transformers.image_processing_utils import select_best_resolution

# A grid is shrunk only when it exceeds the patch budget by more than this factor (per side).
DOWNSAMPLE_SLACK = 1.1


def tile_grid(image_size: Sequence[int], pinpoints: Sequence[Sequence[int]], tile: int) -> tuple[int, int]:
    """(rows, cols) of tiles for an image of ``(height, width)`` under the grid pinpoints."""
    height, width = select_best_resolution(tuple(int(v) for v in image_size), [list(p) for p in pinpoints])
    return height // tile, width // tile


def n_views(image_size: Sequence[int], pinpoints: Sequence[Sequence[int]], tile: int) -> int:
    """Views the processor makes for one image: the base view plus every tile."""
    rows, cols = tile_grid(image_size, pinpoints, tile)
    return 1 + rows * cols


def unpadded_extent(height: int, width: int, grid_h: int, grid_w: int) -> tuple[int, int, int, int]:
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of a ``grid_h × grid_w`` feature grid that hold
    the image (the rest is the processor's padding), with the reference's rounding."""
    if width / height > grid_w / grid_h:
        new_h = int(round(height * (grid_w / width), 7))
        pad = (grid_h - new_h) // 2
        return pad, grid_h - pad, 0, grid_w
    new_w = int(round(width * (grid_h / height), 7))
    pad = (grid_w - new_w) // 2
    return 0, grid_h, pad, grid_w - pad


def downsampled_size(grid_h: int, grid_w: int, side: int, max_patches: int | None) -> tuple[int, int]:
    """OneVision's ``anyres_max_N``: the size the un-padded grid is shrunk to (itself if it fits).

    Args:
        grid_h, grid_w: The un-padded tile grid, in patches.
        side: Patches per side of one view.
        max_patches: N, the budget in views' worth of patches; None (LLaVA-NeXT) never shrinks.
    """
    if max_patches is None:
        return grid_h, grid_w
    ratio = math.sqrt(grid_h * grid_w / (max_patches * side**2))
    if ratio <= DOWNSAMPLE_SLACK:
        return grid_h, grid_w
    return int(grid_h // ratio), int(grid_w // ratio)
