"""Images → pixel values and, for every image, the layout of its image positions.

LLaVA-1.5 checkpoints see one square view (padded to square or centre-cropped, chosen by the
template). Anyres checkpoints (LLaVA-NeXT, LLaVA-OneVision) see a base view plus tiles made by
their own image processor; their image-token count differs per image and follows the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from PIL import Image
from torch import Tensor

from mmlens.config import VLMConfig
from mmlens.errors import InvalidInputError, MMLensError
from mmlens.geometry import BASE, AnyresGeometry, ResizedGeometry, Slot, TiledGeometry, ViewGeometry, tile_layout


@dataclass(frozen=True)
class Pixels:
    """What the image processor produced, plus the geometry of every image.

    Attributes:
        pixel_values: ``[n_img, 3, H, W]`` (single view), ``[n_img, max_views, 3, H, W]`` (anyres)
            or ``[n_views, 3, H, W]``, every image's views one after another (tiled, InternVL), or
            ``[n_patches, d_patch]``, every image's patches one after another (packed, Qwen2-VL).
        image_sizes: ``[n_img, 2]`` original (height, width) for anyres models, else None.
        views: Per image, its geometry.
        slots: Per image, its image positions in the order the model fills them.
        image_grid_thw: ``[n_img, 3]`` patch grid (frames, rows, columns) of packed images, else None.
    """

    pixel_values: Float[Tensor, "n_img *views 3 height width"] | Float[Tensor, "v_pos d_patch"]
    image_sizes: Int[Tensor, "n_img 2"] | None
    views: tuple[ViewGeometry | AnyresGeometry | TiledGeometry | ResizedGeometry, ...]
    slots: tuple[list[Slot], ...]
    image_grid_thw: Int[Tensor, "n_img 3"] | None = None


def as_image(image: Any) -> Image.Image:
    """One image as RGB PIL: a PIL image, a file path, or an array / tensor of pixels.

    Arrays (numpy or torch) are ``[H, W, 3]`` or ``[3, H, W]`` (``[H, W]`` is greyscale, a fourth
    channel is alpha and dropped), with values in 0..255 (integers) or 0..1 (floats).

    Raises:
        InvalidInputError: anything else, or an unreadable file (naming it).
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as err:
            raise InvalidInputError(f"cannot read the image file {image} ({type(err).__name__}: {err}).") from err
    if isinstance(image, (np.ndarray, Tensor)):
        arr = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # [3, H, W] → [H, W, 3]
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise InvalidInputError(
                f"an image array must be [H, W, 3] (RGB), [H, W, 4] (RGBA), [3, H, W] or [H, W]; got shape {tuple(image.shape)} "
                "(for several images pass a list of arrays, one per prompt)."
            )
        if arr.dtype.kind == "f":
            if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1):
                raise InvalidInputError(
                    f"a float image array must hold values in [0, 1]; got [{arr.min():.3g}, {arr.max():.3g}] "
                    "(pass uint8 pixels 0..255, or scale to [0, 1])."
                )
            arr = np.round(arr * 255)
        elif arr.dtype.kind not in "ui" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
            raise InvalidInputError(f"an image array must hold 0..255 integers or 0..1 floats, not {arr.dtype}.")
        return Image.fromarray(arr.astype(np.uint8), "RGBA" if arr.ndim == 3 and arr.shape[-1] == 4 else None).convert("RGB")
    raise InvalidInputError(
        f"cannot use a {type(image).__name__} as an image: pass a PIL image, a file path, or an "
        "[H, W, 3] / [3, H, W] numpy array or tensor."
    )


def as_images(images: Any) -> list[Image.Image]:
    """One image or a sequence of images (any form :func:`as_image` takes) → a list of PIL images."""
    single = isinstance(images, (Image.Image, str, Path)) or (
        isinstance(images, (np.ndarray, Tensor)) and images.ndim in (2, 3)
    )
    if single:
        return [as_image(images)]
    if isinstance(images, (np.ndarray, Tensor)) and images.ndim == 4:
        return [as_image(im) for im in images]
    if isinstance(images, (list, tuple)):
        return [as_image(im) for im in images]
    return [as_image(images)]


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
        mode: ``"pad"`` or ``"crop"`` for single-view models (see :class:`~mmlens.inputs.Template`);
            anyres models always use their processor's tiling.

    Raises:
        MMLensError: an anyres processor whose settings disagree with the model's.
    """
    images = [im.convert("RGB") for im in images]
    if cfg.image_grid_pinpoints is not None:
        return _anyres(image_processor, cfg, images)
    if cfg.tiled_views:
        return _tiled(image_processor, cfg, images)
    if cfg.vision.packed:
        return _packed(image_processor, cfg, images)
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
    if cfg.qformer is not None:
        # InstructBLIP's image positions are Q-Former queries, not patches: HookedVLM.prepare maps
        # each to a patch through the Q-Former's cross-attention (models/qformer_geometry.py).
        return [Slot(BASE, -1, -1, -1, None) for _ in range(cfg.image_seq_length)]
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


def _tiled(image_processor: Any, cfg: VLMConfig, images: list[Image.Image]) -> Pixels:
    """InternVL: tiles plus thumbnail per image, as ``InternVLProcessor`` asks its image processor."""
    tile, patch = cfg.vision.image_size, cfg.vision.patch_size
    sides = {_get(image_processor.size, k) for k in ("height", "width")}
    if sides != {tile}:
        raise MMLensError(
            f"the image processor makes {sorted(sides, key=str)}-px tiles but the vision tower takes {tile} px: "
            "load the processor saved with the checkpoint, or build one with size={'height': T, 'width': T} "
            "where T is the tower's image_size."
        )
    # InternVLProcessor turns tiling on whatever the image processor's own default.
    out = image_processor(images, crop_to_patches=True, return_tensors="pt")
    lo, hi = (image_processor.min_patches, image_processor.max_patches) if image_processor.max_patches > 1 else (1, 1)
    views = tuple(
        TiledGeometry(im.width, im.height, tile, patch, *tile_layout(im.height, im.width, tile, lo, hi),
                      shuffle=cfg.projector.pixel_shuffle)
        for im in images
    )
    counts = [int(n) for n in torch.as_tensor(out["num_patches"]).tolist()]
    if counts != [v.n_views for v in views]:
        raise MMLensError(
            f"the image processor made {counts} views per image where mmlens' tiling expects "
            f"{[v.n_views for v in views]}: mmlens follows InternVL's GotOcr2 image processor (tiles + thumbnail)."
        )
    return Pixels(out["pixel_values"], None, views, tuple(v.slots() for v in views))


def _packed(image_processor: Any, cfg: VLMConfig, images: list[Image.Image]) -> Pixels:
    """Qwen2-VL: each image resized by the processor (its own pixel budget), patches packed."""
    vision = cfg.vision
    settings = {"patch_size": vision.patch_size, "merge_size": vision.merge_size,
                "temporal_patch_size": vision.temporal_patch_size}
    found = {k: getattr(image_processor, k, None) for k in settings}
    if found != settings:
        raise MMLensError(
            f"the image processor's {found} do not match the vision tower's {settings}: load the processor "
            "saved with the checkpoint, or build one with the tower's patch, merge and temporal patch sizes."
        )
    out = image_processor(images, return_tensors="pt")
    grid = torch.as_tensor(out["image_grid_thw"]).long()
    patch = vision.patch_size
    views = tuple(ResizedGeometry(im.width, im.height, int(w) * patch, int(h) * patch, patch, vision.merge_size)
                  for im, (_, h, w) in zip(images, grid.tolist()))
    return Pixels(out["pixel_values"], None, views, tuple(v.slots() for v in views), grid)


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
