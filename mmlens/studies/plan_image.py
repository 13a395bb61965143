"""The image a plan counts for a packed tower (Qwen2-VL, Qwen2.5-VL), whose token count follows
the image's size: ``--image-size WxH`` read, the processor's pixel budget read from the
checkpoint (no weights), and the image resized by the processor's own rule."""

from __future__ import annotations

from mmlens.config import VLMConfig
from mmlens.errors import MMLensError
from mmlens.geometry import ResizedGeometry

DEFAULT_IMAGE_SIZE = (448, 448)
"""``(width, height)`` of the image planned for a packed tower when none is given."""
DEFAULT_PIXEL_BUDGET = (56 * 56, 28 * 28 * 1280)
"""``(min_pixels, max_pixels)`` of Qwen2-VL's image processor, for a checkpoint that saved none."""


def parse_image_size(text: str) -> tuple[int, int]:
    """``"WxH"`` (e.g. ``"448x448"``, width first) as ``(width, height)`` in pixels.

    Raises:
        MMLensError: not two positive integers joined by ``x``.
    """
    import re

    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match or 0 in (width := int(match[1]), height := int(match[2])):
        raise MMLensError(f"--image-size {text!r}: give the image's width and height in pixels as WxH, e.g. 448x448.")
    return width, height


def pixel_budget(path: str, cfg: VLMConfig) -> tuple[int, int]:
    """``(min_pixels, max_pixels)`` of the image processor saved with a packed-tower checkpoint
    (:data:`DEFAULT_PIXEL_BUDGET` when it saved none); no weights are read.

    Raises:
        MMLensError: the processor cuts patches of another size or merges other blocks than the tower.
    """
    import transformers

    try:
        processor = transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError):  # no image processor saved
        return DEFAULT_PIXEL_BUDGET
    found, tower = (processor.patch_size, processor.merge_size), (cfg.vision.patch_size, cfg.vision.merge_size)
    if found != tower:
        raise MMLensError(f"{path}: the image processor's (patch_size, merge_size) = {found} do not match the vision "
                          f"tower's {tower}: save the processor that belongs to the checkpoint.")  # fmt: skip
    return int(processor.size["shortest_edge"]), int(processor.size["longest_edge"])


def packed_image(cfg: VLMConfig, width: int, height: int, budget: tuple[int, int] = DEFAULT_PIXEL_BUDGET) -> ResizedGeometry:
    """One ``width × height`` image as a packed tower's processor resizes it.

    Qwen2-VL's ``smart_resize``: both sides rounded to multiples of ``patch · merge`` pixels,
    then scaled, aspect ratio nearly kept, until the area lies within ``budget``; the image then
    has ``(h / patch) · (w / patch)`` patches and a ``merge²``-th as many image tokens.

    Args:
        cfg: A model with a packed tower (``cfg.vision.packed``).
        width, height: The image's size in pixels.
        budget: ``(min_pixels, max_pixels)`` of the processor (:func:`pixel_budget`).

    Raises:
        MMLensError: a tower that is not packed (its images have a fixed token count), or an
            aspect ratio the processor refuses (over 200).
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    v = cfg.vision
    _check_packed(cfg)
    try:
        h, w = smart_resize(height, width, v.patch_size * v.merge_size, min_pixels=budget[0], max_pixels=budget[1])
    except ValueError as err:
        raise MMLensError(f"--image-size {width}x{height}: the processor refuses it ({err}).") from None
    return ResizedGeometry(width, height, w, h, v.patch_size, v.merge_size)


def _check_packed(cfg: VLMConfig) -> None:
    if not cfg.vision.packed:
        raise MMLensError(f"--image-size applies to packed towers (Qwen2-VL, Qwen2.5-VL); {cfg.architecture} gives "
                          f"each image (view) {cfg.image_seq_length} tokens whatever its size: leave it out.")  # fmt: skip


def planned_image(path: str, cfg: VLMConfig, size: tuple[int, int] | None = None) -> ResizedGeometry | None:
    """The image ``mmlens plan`` counts: for a packed tower, one of ``size`` (default
    :data:`DEFAULT_IMAGE_SIZE`) resized with the checkpoint's pixel budget; None otherwise.

    Args:
        path: The checkpoint folder (its image processor is read, not its weights).
        cfg: Its config.
        size: ``(width, height)`` from ``--image-size``, or None.

    Raises:
        MMLensError: a ``size`` for a tower that is not packed, or as :func:`pixel_budget` and
            :func:`packed_image`.
    """
    if size is None and not cfg.vision.packed:
        return None
    _check_packed(cfg)
    width, height = size or DEFAULT_IMAGE_SIZE
    return packed_image(cfg, width, height, pixel_budget(path, cfg))
