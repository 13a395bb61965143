"""Where each image token of a Qwen2-VL image comes from (docs/methods.md#box-to-patches).

Qwen2-VL's processor resizes every image, aspect ratio nearly kept, so both sides are multiples of
``patch · merge`` pixels and the area lies within its pixel budget (``smart_resize``), then cuts it
into ``patch``-px patches. The merger joins each ``merge × merge`` block of patches into one image
token, so the tokens form a ``(H / (patch · merge)) × (W / (patch · merge))`` grid, row-major, each
covering a ``patch · merge`` square of the resized image. :class:`ResizedGeometry` maps each token
back to its pixel box in the original image.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmlens.geometry.anyres import BASE, Slot
from mmlens.geometry.views import ViewGeometry
from mmlens.typing import Box


@dataclass(frozen=True)
class ResizedGeometry:
    """One image of ``width × height`` pixels resized to ``resized_width × resized_height``.

    Attributes:
        width, height: Original image size in pixels.
        resized_width, resized_height: The processor's resized size (multiples of ``patch · merge``).
        patch: Patch side in pixels.
        merge: Patches per side of the block one image token covers.
    """

    width: int
    height: int
    resized_width: int
    resized_height: int
    patch: int
    merge: int = 2

    @property
    def token_rows(self) -> int:
        return self.resized_height // (self.patch * self.merge)

    @property
    def token_cols(self) -> int:
        return self.resized_width // (self.patch * self.merge)

    @property
    def n_tokens(self) -> int:
        return self.token_rows * self.token_cols

    # The affine map of :class:`~mmlens.geometry.ViewGeometry` (original x = model x / scale_x), so
    # code that draws on the original image treats the resized image as the model's view.
    @property
    def scale_x(self) -> float:
        return self.resized_width / self.width

    @property
    def scale_y(self) -> float:
        return self.resized_height / self.height

    offset_x = 0.0
    offset_y = 0.0

    @property
    def extent(self) -> tuple[int, int]:
        """(width, height) of the model's view in pixels: the resized image."""
        return self.resized_width, self.resized_height

    @property
    def base(self) -> ViewGeometry:
        """The whole image as one view: the affine map from resized to original pixels."""
        return ViewGeometry(self.width, self.height, max(self.resized_width, self.resized_height), self.patch,
                            self.resized_width / self.width, self.resized_height / self.height, 0.0, 0.0)

    def token_box(self, row: int, col: int) -> Box:
        """Original-image pixels of image token ``(row, col)`` (its ``merge × merge`` patches)."""
        span = self.patch * self.merge
        sx, sy = self.width / self.resized_width, self.height / self.resized_height
        return (col * span * sx, row * span * sy, (col + 1) * span * sx, (row + 1) * span * sy)

    def slots(self) -> list[Slot]:
        """Every image token in the order the model fills them (row-major), as base-view slots
        whose ``row`` / ``col`` are token coordinates."""
        return [Slot(BASE, -1, i, j, self.token_box(i, j)) for i in range(self.token_rows) for j in range(self.token_cols)]

    def check_box(self, box: Box) -> None:
        """Raise :class:`~mmlens.errors.BoxOutsideImageError` unless ``box`` lies inside the image."""
        self.base.check_box(box)
