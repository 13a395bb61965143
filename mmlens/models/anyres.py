"""The "anyres" layout of LLaVA-NeXT and LLaVA-OneVision: a base view plus tiles, un-padded,
optionally downsampled (OneVision's ``anyres_max_N``), with a newline slot after every row.

Given the projected features of every view of one image, builds the sequence that replaces the
image's placeholders: the base view's patches, then the tiles' patches laid out as one large
grid (row-major over the whole grid), cropped to the original aspect ratio, bilinearly shrunk
when it holds too many patches, each row followed by the learned ``image_newline`` embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from torch.nn import functional as F

from mmlens.geometry.anyres_layout import downsampled_size, tile_grid, unpadded_extent


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
