"""Images → pixel values and, for every image, the layout of its image positions.

LLaVA-1.5 checkpoints see one square view (padded to square or centre-cropped, chosen by the
template). Anyres checkpoints (LLaVA-NeXT, LLaVA-OneVision) see a base view plus tiles made by
their own image processor; their image-token count differs per image and follows the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from PIL import Image
from torch import Tensor

from mmlens.config import VLMConfig
from mmlens.errors import MMLensError
from mmlens.geometry import ViewGeometry
from mmlens.geometry_anyres import BASE, AnyresGeometry, Slot


@dataclass(frozen=True)
class Pixels:
    """What the image processor produced, plus the geometry of every image.

    Attributes:
        pixel_values: ``[n_img, 3, H, W]`` (single view) or ``[n_img, max_views, 3, H, W]`` (anyres).
        image_sizes: ``[n_img, 2]`` original (height, width) for anyres models, else None.
        views: Per image, its geometry.
        slots: Per image, its image positions in the order the model fills them.
    """

    pixel_values: Float[Tensor, "n_img *views 3 height width"]
    image_sizes: Int[Tensor, "n_img 2"] | None
    views: tuple[ViewGeometry | AnyresGeometry, ...]
    slots: tuple[list[Slot], ...]


def expand2square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """LLaVA-1.5's padding: centre the image on a square of its longer side."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), fill)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


def process_images(image_processor: Any, cfg: VLMConfig, images: list[Image.Image], mode: str) -> Pixels:
    """Run the image processor and record each image's layout.

    Args:
        image_processor: The checkpoint's image processor.
        cfg: The model config.
        images: One image per prompt.
        mode: ``"pad"`` or ``"crop"`` for single-view models (see :class:`~mmlens.templates.Template`);
            anyres models always use their processor's tiling.

    Raises:
        MMLensError: an anyres processor whose settings disagree with the model's.
    """
    images = [im.convert("RGB") for im in images]
    if cfg.image_grid_pinpoints is not None:
        return _anyres(image_processor, cfg, images)
    side, patch = cfg.vision.image_size, cfg.vision.patch_size
    if mode == "pad":
        fill = tuple(int(255 * m) for m in image_processor.image_mean)
        views = tuple(ViewGeometry.pad(*im.size, side, patch) for im in images)
        images = [expand2square(im, fill) for im in images]
    else:
        views = tuple(ViewGeometry.crop(*im.size, side, patch) for im in images)
    pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
    return Pixels(pixel_values, None, views, tuple(_single_view_slots(cfg, v) for v in views))


def _single_view_slots(cfg: VLMConfig, view: ViewGeometry) -> list[Slot]:
    # Position k of an image block shows patch k - shift (shift 1: CLS kept; -1: SigLIP's first dropped).
    shift = int(cfg.vision.has_cls) - int(cfg.vision_feature_select_strategy == "default")
    g = cfg.vision.grid
    slots = []
    for k in range(cfg.image_seq_length):
        idx = k - shift
        if idx < 0:
            slots.append(Slot(BASE, -1, -1, -1, None))
        else:
            r, c = divmod(idx, g)
            slots.append(Slot(BASE, -1, r, c, None if view.is_padding(r, c) else view.patch_box(r, c)))
    return slots


def _anyres(image_processor: Any, cfg: VLMConfig, images: list[Image.Image]) -> Pixels:
    tile, patch = cfg.vision.image_size, cfg.vision.patch_size
    _check_anyres_processor(image_processor, cfg)
    out = image_processor(images, return_tensors="pt")
    views = tuple(
        AnyresGeometry(im.width, im.height, tile, patch, cfg.image_grid_pinpoints, cfg.anyres_max_patches)
        for im in images
    )
    sizes = torch.tensor([[im.height, im.width] for im in images])
    if not torch.equal(torch.as_tensor(out["image_sizes"]).long(), sizes):
        raise MMLensError(
            f"the image processor reports image sizes {out['image_sizes'].tolist()} for images of "
            f"{sizes.tolist()} (height, width): mmlens expects the processor not to resize before tiling."
        )
    return Pixels(out["pixel_values"], sizes, views, tuple(v.slots() for v in views))


def _check_anyres_processor(image_processor: Any, cfg: VLMConfig) -> None:
    """Anyres geometry assumes the released processors' settings: views of the tower's side."""
    tile = cfg.vision.image_size
    pinpoints = tuple(tuple(int(v) for v in p) for p in (getattr(image_processor, "image_grid_pinpoints", None) or ()))
    sides = {_get(image_processor.size, k) for k in ("height", "width", "shortest_edge")} - {None}
    if getattr(image_processor, "do_center_crop", False):
        sides |= {_get(image_processor.crop_size, k) for k in ("height", "width")} - {None}
    if pinpoints != cfg.image_grid_pinpoints or sides != {tile}:
        raise MMLensError(
            f"the image processor (pinpoints {pinpoints}, view sides {sorted(sides)}) does not match the "
            f"model (pinpoints {cfg.image_grid_pinpoints}, views of {tile} px): load the processor saved "
            "with the checkpoint, or build one with the model's image_grid_pinpoints and its tower's "
            "image_size as size (and crop_size)."
        )


def _get(size: Any, key: str) -> Any:
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)
