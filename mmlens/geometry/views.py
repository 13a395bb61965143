"""Where each image position's patch lies in the original image (docs/methods.md#box-to-patches).

A :class:`ViewGeometry` records how one image was turned into the model's square input — padded to
a square with the mean colour (LLaVA-1.5) or resized on its shortest edge and centre-cropped
(llava-hf) — so a patch of the input maps back to a pixel box of the original image, and a box
of the original image maps to the patches it overlaps.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmlens.errors import BoxOutsideImageError
from mmlens.typing import Box


@dataclass(frozen=True)
class ViewGeometry:
    """The affine map between the model input (``side`` × ``side``) and the original image.

    Original ``x = (model_x + offset_x) / scale_x`` (likewise ``y``): padding gives negative
    offsets, cropping positive ones.

    Attributes:
        width, height: Original image size in pixels.
        side: Model input side in pixels.
        patch: Patch side in pixels.
        scale_x, scale_y: Model pixels per original pixel.
        offset_x, offset_y: Model-space offset of the original image's origin (see above).
    """

    width: int
    height: int
    side: int
    patch: int
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    @classmethod
    def pad(cls, width: int, height: int, side: int, patch: int) -> ViewGeometry:
        """LLaVA-1.5's ``expand2square``: paste centred on a square of the longer side, then resize."""
        s = max(width, height)
        scale = side / s
        return cls(width, height, side, patch, scale, scale, -((s - width) // 2) * scale, -((s - height) // 2) * scale)

    @classmethod
    def crop(cls, width: int, height: int, side: int, patch: int) -> ViewGeometry:
        """CLIP preprocessing: resize the shortest edge to ``side`` (long edge truncated), centre-crop."""
        if width <= height:
            new_w, new_h = side, int(side * height / width)
        else:
            new_w, new_h = int(side * width / height), side
        return cls(width, height, side, patch, new_w / width, new_h / height, (new_w - side) // 2, (new_h - side) // 2)

    @property
    def grid(self) -> int:
        return self.side // self.patch

    def patch_box(self, row: int, col: int) -> Box:
        """The patch's pixel box in the original image, clipped to it (empty if all padding)."""
        x0 = (col * self.patch + self.offset_x) / self.scale_x
        x1 = ((col + 1) * self.patch + self.offset_x) / self.scale_x
        y0 = (row * self.patch + self.offset_y) / self.scale_y
        y1 = ((row + 1) * self.patch + self.offset_y) / self.scale_y
        return (max(x0, 0.0), max(y0, 0.0), min(x1, float(self.width)), min(y1, float(self.height)))

    def is_padding(self, row: int, col: int) -> bool:
        """True when the patch holds no pixel of the original image."""
        x0, y0, x1, y1 = self.patch_box(row, col)
        return x1 <= x0 or y1 <= y0

    def check_box(self, box: Box) -> None:
        """Raise :class:`BoxOutsideImageError` unless ``box`` is a non-empty box inside the image."""
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
            raise BoxOutsideImageError(
                f"box {tuple(box)} is not a non-empty (x0, y0, x1, y1) box inside the "
                f"{self.width}x{self.height} image: give pixel coordinates of the original image "
                "with 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height."
            )

    def overlaps(self, row: int, col: int, box: Box) -> bool:
        """True when some pixel of the patch lies inside ``box`` (the reference's "related")."""
        px0, py0, px1, py1 = self.patch_box(row, col)
        x0, y0, x1, y1 = box
        return min(px1, x1) > max(px0, x0) and min(py1, y1) > max(py0, y0)
