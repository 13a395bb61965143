"""Where each image token of a dynamically tiled image (InternVL) comes from
(docs/methods.md#box-to-patches).

InternVL's processor picks a grid of ``cols × rows`` tiles whose aspect ratio is closest to the
image's (between ``min_tiles`` and ``max_tiles`` tiles), resizes the whole image to that canvas
(no padding, aspect ratio not kept), cuts it into square tiles (row-major) and, when there is
more than one tile, appends a thumbnail: the whole image squashed to one tile. Each view is a
``g × g`` patch grid that pixel shuffle turns into ``(g/s) × (g/s)`` tokens, each covering an
``s × s`` block of patches. :class:`TiledGeometry` replays that layout and maps every image
token back to a pixel box of the original image.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from mmlens.geometry.anyres import BASE, TILE, Slot
from mmlens.geometry.views import ViewGeometry
from mmlens.typing import Box


def tile_layout(height: int, width: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(rows, cols) of tiles the processor cuts an image of ``height × width`` into.

    Hugging Face's own choice (``get_optimal_tiled_canvas`` of the InternVL / GOT-OCR2 image
    processor): the closest aspect ratio, ties going to more tiles while the image is large enough.
    """
    cols, rows = get_optimal_tiled_canvas((height, width), (tile, tile), min_tiles, max_tiles)
    return rows, cols


@dataclass(frozen=True)
class TiledGeometry:
    """The tiles-plus-thumbnail layout of one image of ``width`` × ``height`` pixels.

    Attributes:
        width, height: Original image size in pixels.
        tile: Side of one view (tiles and thumbnail) in pixels: the tower's input.
        patch: Patch side in pixels.
        rows, cols: The tile grid (1 × 1: the image is one view and has no thumbnail).
        shuffle: Patches per side of the block one token covers (pixel shuffle factor).
    """

    width: int
    height: int
    tile: int
    patch: int
    rows: int
    cols: int
    shuffle: int = 2

    @property
    def n_tiles(self) -> int:
        return self.rows * self.cols

    @property
    def n_views(self) -> int:
        """Views the processor makes: the tiles, plus the thumbnail when there are several."""
        return self.n_tiles + int(self.n_tiles > 1)

    @property
    def base_view(self) -> int:
        """Index of the view showing the whole image: the thumbnail (last), or the only tile."""
        return self.n_views - 1

    @property
    def base(self) -> ViewGeometry:
        """The view showing the whole image (thumbnail or only tile): the image squashed to ``tile`` × ``tile``."""
        return ViewGeometry(self.width, self.height, self.tile, self.patch,
                            self.tile / self.width, self.tile / self.height, 0.0, 0.0)

    @property
    def token_grid(self) -> int:
        """Tokens per side of one view."""
        return self.tile // self.patch // self.shuffle

    def slots(self) -> list[Slot]:
        """Every image token in the order the model fills them: tiles row-major, then the thumbnail.

        Tile tokens are :data:`~mmlens.geometry.TILE` with their tile index; thumbnail tokens (and
        the tokens of a single-view image) are :data:`~mmlens.geometry.BASE`. ``row`` / ``col``
        are token coordinates in the view's ``token_grid × token_grid`` grid.
        """
        g, span = self.token_grid, self.patch * self.shuffle
        out = []
        if self.n_tiles > 1:
            sx, sy = self.width / (self.cols * self.tile), self.height / (self.rows * self.tile)
            for t in range(self.n_tiles):
                tr, tc = divmod(t, self.cols)
                for i in range(g):
                    for j in range(g):
                        x0, y0 = tc * self.tile + j * span, tr * self.tile + i * span
                        out.append(Slot(TILE, t, i, j, (x0 * sx, y0 * sy, (x0 + span) * sx, (y0 + span) * sy)))
        sx, sy = self.width / self.tile, self.height / self.tile
        for i in range(g):
            for j in range(g):
                x0, y0 = j * span, i * span
                out.append(Slot(BASE, -1, i, j, (x0 * sx, y0 * sy, (x0 + span) * sx, (y0 + span) * sy)))
        return out

    def check_box(self, box: Box) -> None:
        """Raise :class:`~mmlens.errors.BoxOutsideImageError` unless ``box`` lies inside the image."""
        self.base.check_box(box)
