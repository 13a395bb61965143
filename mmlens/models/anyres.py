"""The "anyres" layout of LLaVA-NeXT and LLaVA-OneVision: a base view plus tiles, un-padded,
optionally downsampled (OneVision's ``anyres_max_N``), with a newline slot after every row.

Given the projected features of every view of one image, builds the sequence that replaces the
image's placeholders: the base view's patches, then the tiles' patches laid out as one large
grid (row-major over the whole grid), cropped to the original aspect ratio, bilinearly shrunk
when it holds too many patches, each row followed by the learned ``image_newline`` embedding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from torch.nn import functional as F
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


def pack_image(
    views: Float[Tensor, "n_views n_patch d_model"],
    image_size: Sequence[int],
    pinpoints: Sequence[Sequence[int]],
    tile: int,
    newline: Float[Tensor, " d_model"] | None,
    max_patches: int | None = None,
) -> Float[Tensor, "n_tokens d_model"]:
    """The image's placeholder embeddings from its views' projected features.

    Args:
        views: Projected features of the base view followed by the tiles (row-major).
        image_size: The original image's ``(height, width)``.
        pinpoints: Candidate resolutions ``(height, width)`` of the tile canvas.
        tile: Side of one view in pixels (the vision tower's input).
        newline: The learned ``image_newline`` appended after every row (None: no slots).
        max_patches: OneVision's ``anyres_max_N`` budget; None for LLaVA-NeXT.
    """
    base = views[0]
    if views.shape[0] == 1:
        return base if newline is None else torch.cat([base, newline[None].to(base)])
    side = int(round(base.shape[0] ** 0.5))
    rows, cols = tile_grid(image_size, pinpoints, tile)
    d = views.shape[-1]
    # [rows*cols, side*side, d] → one [rows*side, cols*side, d] grid.
    grid = views[1:].view(rows, cols, side, side, d).permute(0, 2, 1, 3, 4).reshape(rows * side, cols * side, d)
    r0, r1, c0, c1 = unpadded_extent(int(image_size[0]), int(image_size[1]), rows * side, cols * side)
    grid = grid[r0:r1, c0:c1]
    size = downsampled_size(*grid.shape[:2], side, max_patches)
    if size != grid.shape[:2]:
        # [h, w, d] → [1, d, h, w] for interpolate, and back.
        grid = F.interpolate(grid.permute(2, 0, 1)[None], list(size), mode="bilinear")[0].permute(1, 2, 0)
    if newline is not None:
        grid = torch.cat([grid, newline.to(grid).expand(grid.shape[0], 1, d)], dim=1)
    return torch.cat([base, grid.reshape(-1, d)])
