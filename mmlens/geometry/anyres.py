"""Where each image position of an anyres image (LLaVA-NeXT, LLaVA-OneVision) comes from
(docs/methods.md#box-to-patches).

The processor makes a base view (the image squashed to the tower's square input) and a canvas
of tiles (the image resized into the best pinpoint resolution, keeping its aspect ratio, and
centred on zero padding). The model lays the tiles' patches out as one grid, crops the rows or
columns that hold only padding, OneVision may shrink that grid bilinearly, and a newline slot
closes every row. :class:`AnyresGeometry` replays that layout and maps every image position
back to a pixel box of the original image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mmlens.geometry.anyres_layout import downsampled_size, tile_grid, unpadded_extent
from mmlens.geometry.views import ViewGeometry
from mmlens.typing import Box

# Kinds of image position (``ImageGrid.kind``); text positions are -1.
BASE, TILE, NEWLINE = 0, 1, 2

# Bilinear weights this small come from float rounding of an exact grid hit: no contribution.
_NO_WEIGHT = 1e-6


@dataclass(frozen=True)
class Slot:
    """One image position: its kind, the view patch feeding it, and its original-pixel box.

    Attributes:
        kind: :data:`BASE`, :data:`TILE` or :data:`NEWLINE`.
        tile: Tile index (row-major over the tile grid) of a tile patch; -1 for base-view patches,
            newline slots, and cells of a shrunk OneVision grid (each mixes several tile patches).
        row, col: Patch coordinates inside the base view or the tile; for a shrunk grid, the
            cell's coordinates in the shrunk grid; -1 for newline slots.
        box: The patch's pixels in the original image (for a shrunk cell, the box around every
            patch it mixes), clipped to the image; None for newline slots and padding-only patches.
    """

    kind: int
    tile: int
    row: int
    col: int
    box: Box | None


@dataclass(frozen=True)
class AnyresGeometry:
    """The anyres layout of one image of ``width`` × ``height`` pixels.

    Attributes:
        width, height: Original image size in pixels.
        tile: Side of one view (base view and tiles) in pixels: the tower's input.
        patch: Patch side in pixels.
        pinpoints: Candidate canvas resolutions ``(height, width)``.
        max_patches: OneVision's ``anyres_max_N`` budget; None for LLaVA-NeXT.
    """

    width: int
    height: int
    tile: int
    patch: int
    pinpoints: tuple[tuple[int, int], ...]
    max_patches: int | None = None

    @property
    def grid(self) -> int:
        """Patches per side of one view."""
        return self.tile // self.patch

    @property
    def base(self) -> ViewGeometry:
        """The base view: the whole image squashed to ``tile`` × ``tile``."""
        return ViewGeometry(self.width, self.height, self.tile, self.patch,
                            self.tile / self.width, self.tile / self.height, 0.0, 0.0)

    @property
    def tiles(self) -> tuple[int, int]:
        """(rows, cols) of tiles."""
        return tile_grid((self.height, self.width), self.pinpoints, self.tile)

    def canvas(self) -> tuple[float, float, int, int]:
        """Canvas pixels per original pixel (x, y) and the padding before the image (x, y).

        As the processor: resize to fit the canvas keeping the aspect ratio (the fitted side
        rounded up), then centre on zero padding.
        """
        rows, cols = self.tiles
        canvas_h, canvas_w = rows * self.tile, cols * self.tile
        if canvas_w / self.width < canvas_h / self.height:
            new_w, new_h = canvas_w, min(math.ceil(self.height * canvas_w / self.width), canvas_h)
        else:
            new_w, new_h = min(math.ceil(self.width * canvas_h / self.height), canvas_w), canvas_h
        return new_w / self.width, new_h / self.height, (canvas_w - new_w) // 2, (canvas_h - new_h) // 2

    def slots(self) -> list[Slot]:
        """Every image position in the order the model packs them."""
        g = self.grid
        base = self.base
        out = [Slot(BASE, -1, r, c, _non_empty(base.patch_box(r, c))) for r in range(g) for c in range(g)]
        rows, cols = self.tiles
        r0, r1, c0, c1 = unpadded_extent(self.height, self.width, rows * g, cols * g)
        h, w = r1 - r0, c1 - c0
        out_h, out_w = downsampled_size(h, w, g, self.max_patches)
        shrunk = (out_h, out_w) != (h, w)
        for i in range(out_h):
            for j in range(out_w):
                if shrunk:
                    cells = [(r0 + a, c0 + b) for a in _support(i, h, out_h) for b in _support(j, w, out_w)]
                    out.append(Slot(TILE, -1, i, j, _union([self._cell_box(*cell) for cell in cells])))
                else:
                    gr, gc = r0 + i, c0 + j
                    out.append(Slot(TILE, (gr // g) * cols + gc // g, gr % g, gc % g, self._cell_box(gr, gc)))
            out.append(Slot(NEWLINE, -1, -1, -1, None))
        return out

    def _cell_box(self, grid_row: int, grid_col: int) -> Box | None:
        """Original-pixel box of the patch at (``grid_row``, ``grid_col``) of the tile grid."""
        g, p = self.grid, self.patch
        sx, sy, pad_x, pad_y = self.canvas()
        # Tile origin plus patch offset: a tile need not be a whole number of patches (SigLIP 384/14).
        x0 = (grid_col // g) * self.tile + (grid_col % g) * p
        y0 = (grid_row // g) * self.tile + (grid_row % g) * p
        box = ((x0 - pad_x) / sx, (y0 - pad_y) / sy, (x0 + p - pad_x) / sx, (y0 + p - pad_y) / sy)
        return _non_empty((max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(self.width)), min(box[3], float(self.height))))

    def check_box(self, box: Box) -> None:
        """Raise :class:`BoxOutsideImageError` unless ``box`` lies inside the image."""
        self.base.check_box(box)


def _support(i: int, n_in: int, n_out: int) -> list[int]:
    """Input cells with a non-zero weight in output cell ``i`` of a bilinear resize
    (``align_corners=False``, as ``torch.nn.functional.interpolate``)."""
    src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = min(int(src), n_in - 1)
    i1 = min(i0 + 1, n_in - 1)
    return [i0] if i1 == i0 or src - i0 < _NO_WEIGHT else [i0, i1]


def _union(boxes: Sequence[Box | None]) -> Box | None:
    real = [b for b in boxes if b is not None]
    if not real:
        return None
    return (min(b[0] for b in real), min(b[1] for b in real), max(b[2] for b in real), max(b[3] for b in real))


def _non_empty(box: Box) -> Box | None:
    return box if box[2] > box[0] and box[3] > box[1] else None
