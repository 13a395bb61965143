"""Patch geometry against hand-computed cases."""

from __future__ import annotations

import pytest

from mmlens import BoxOutsideImageError
from mmlens.geometry import ViewGeometry


def test_pad_geometry_maps_patches_back_to_the_original_image():
    # 40x20 padded to a 40x40 square (10 px above and below), resized to 32: scale 0.8.
    view = ViewGeometry.pad(40, 20, side=32, patch=8)
    assert view.patch_box(1, 0) == pytest.approx((0.0, 0.0, 10.0, 10.0))
    assert view.patch_box(2, 3) == pytest.approx((30.0, 10.0, 40.0, 20.0))
    assert [view.is_padding(r, 0) for r in range(4)] == [True, False, False, True]
    assert view.overlaps(1, 0, (0, 0, 10, 10)) and not view.overlaps(1, 1, (0, 0, 10, 10))
    assert view.overlaps(1, 1, (9.5, 0, 10.5, 1))


def test_crop_geometry_maps_patches_back_to_the_original_image():
    # 128x64: shortest edge to 32 gives 64x32 (scale 0.5), centre crop keeps x in [16, 48).
    view = ViewGeometry.crop(128, 64, side=32, patch=8)
    assert (view.scale_x, view.scale_y, view.offset_x, view.offset_y) == (0.5, 0.5, 16, 0)
    assert view.patch_box(0, 0) == pytest.approx((32.0, 0.0, 48.0, 16.0))
    assert view.patch_box(3, 3) == pytest.approx((80.0, 48.0, 96.0, 64.0))
    assert not any(view.is_padding(r, c) for r in range(4) for c in range(4))


@pytest.mark.parametrize("box", [(-1, 0, 5, 5), (0, 0, 41, 5), (5, 5, 5, 9), (0, 0, 10, 21)])
def test_boxes_outside_the_image_raise(box):
    with pytest.raises(BoxOutsideImageError, match="inside the 40x20 image"):
        ViewGeometry.pad(40, 20, side=32, patch=8).check_box(box)
