"""Image geometry: where each image position's patch lies in the original image.

Pure layout maths with no tensors and no model: single-view preprocessing
(:class:`ViewGeometry`), the anyres tile layout (:mod:`~mmlens.geometry.anyres_layout`) and the
map from every anyres image position back to pixels (:class:`AnyresGeometry`); InternVL's
tiles plus thumbnail (:class:`TiledGeometry`); Qwen2-VL's resized, merged grid (:class:`ResizedGeometry`).
"""

from mmlens.geometry.anyres import BASE, NEWLINE, TILE, AnyresGeometry, Slot
from mmlens.geometry.anyres_layout import downsampled_size, n_views, tile_grid, unpadded_extent
from mmlens.geometry.resized import ResizedGeometry
from mmlens.geometry.tiles import TiledGeometry, tile_layout
from mmlens.geometry.views import ViewGeometry
from mmlens.typing import Box

__all__ = [
    "BASE",
    "NEWLINE",
    "TILE",
    "AnyresGeometry",
    "Box",
    "ResizedGeometry",
    "Slot",
    "TiledGeometry",
    "ViewGeometry",
    "downsampled_size",
    "n_views",
    "tile_grid",
    "tile_layout",
    "unpadded_extent",
]
