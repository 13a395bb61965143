"""Counterfactual inputs with the same token layout as the clean input.

Activation patching swaps activations position by position, so a corrupt input must line up with
the clean one: same length, same image positions, same text except an edited word. This module
builds such pairs and checks them:

* shapes world (:mod:`mmlens.data.shapes`): :func:`recolour`, :func:`move`, :func:`remove` and
  :func:`swap` edit the pixels of one object (everything else stays bit-identical) and return the
  corrupted :class:`~mmlens.data.sample.Sample` with a :class:`Change` record;
* any image: :func:`fill_box`, :func:`blur_box`, :func:`noise_box`, or another image through
  :func:`image_pair` (same image-token count and, for anyres models, the same tile layout);
* text: :func:`text_pair` replaces a word by one of the same token length;
* :func:`check_aligned` refuses any pair that does not line up.

Example:
    >>> corrupt, change = recolour(make_sample(0, "QueryAttr"))  # doctest: +SKIP
    >>> change.old, change.new  # doctest: +SKIP
    ('red', 'green')
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool
from PIL import Image, ImageFilter
from torch import Tensor

from mmlens.data.sample import Sample
from mmlens.data.shapes import COLOUR_RGB, PixelBox
from mmlens.inputs import MMInputs
from mmlens.patching.errors import (
    CounterfactualError,
    ImageLayoutMismatchError,
    MisalignedInputsError,
    TokenLengthMismatchError,
)


@dataclass(frozen=True)
class Change:
    """What a counterfactual changed.

    Attributes:
        kind: ``"recolour"``, ``"move"``, ``"remove"`` or ``"swap"``.
        object: The edited object's shape name (``"a/b"`` for a swap).
        old_box: Its box before the edit (``x1``/``y1`` exclusive).
        new_box: Its box after the edit (None once removed).
        attribute: The attribute that changed: ``"colour"`` or ``"position"``.
        old: The old value (a colour name, or the old box as text).
        new: The new value.
    """

    kind: str
    object: str
    old_box: PixelBox
    new_box: PixelBox | None
    attribute: str
    old: str
    new: str


# --- shapes world --------------------------------------------------------------------------


def _objects(sample: Sample) -> list[dict]:
    objects = sample.meta.get("objects")
    if not objects:
        raise CounterfactualError(
            f"sample {sample.id!r} has no meta['objects']: shapes-world counterfactuals need a sample from "
            "mmlens.data.shapes.make_sample / shapes_dataset; for other images use fill_box, blur_box or noise_box."
        )
    return [dict(o, box=tuple(o["box"])) for o in objects]


def _pick(sample: Sample, objects: list[dict], shape: str | None) -> dict:
    if shape is None:  # the first object the question names
        named = [s for s in sample.boxes if any(o["shape"] == s for o in objects)]
        if not named:
            raise CounterfactualError(f"the question of sample {sample.id!r} names no drawn object: pass shape=.")
        shape = named[0]
    for o in objects:
        if o["shape"] == shape:
            return o
    raise CounterfactualError(
        f"sample {sample.id!r} has no {shape!r}; its objects: {[o['shape'] for o in objects]}."
    )


def _background(image: Image.Image) -> tuple[int, int, int]:
    """The most common colour (the plain background of a shapes scene)."""
    return Counter(image.getdata()).most_common(1)[0][0]


def _with(sample: Sample, image: Image.Image, objects: list[dict], change: Change) -> Sample:
    boxes = dict(sample.boxes)
    if change.new_box is not None:
        for o in objects:
            if o["shape"] in boxes:
                boxes[o["shape"]] = o["box"]
    meta = {**sample.meta, "objects": objects, "counterfactual": change}
    return replace(sample, id=f"{sample.id}-{change.kind}", image=image, boxes=boxes, meta=meta)


def recolour(sample: Sample, shape: str | None = None, colour: str | None = None) -> tuple[Sample, Change]:
    """Paint one object in another colour (its pixels only; the rest of the image is unchanged).

    Args:
        sample: A shapes-world sample.
        shape: The object to recolour; default the first object the question names.
        colour: The new colour (a key of ``COLOUR_RGB``); default the next colour in that table.

    Returns:
        The corrupted sample (its ``answer`` is still the clean one; ``meta["counterfactual"]``
        holds the change) and the :class:`Change`.

    Raises:
        CounterfactualError: no such object, or an unknown or unchanged colour.
    """
    objects = _objects(sample)
    obj = _pick(sample, objects, shape)
    names = list(COLOUR_RGB)
    colour = colour or names[(names.index(obj["colour"]) + 1) % len(names)]
    if colour not in COLOUR_RGB or colour == obj["colour"]:
        raise CounterfactualError(f"colour must be one of {names} other than {obj['colour']!r}, not {colour!r}.")
    image = np.array(sample.load_image())
    x0, y0, x1, y1 = obj["box"]
    region = image[y0:y1, x0:x1]
    region[(region == COLOUR_RGB[obj["colour"]]).all(-1)] = COLOUR_RGB[colour]
    change = Change("recolour", obj["shape"], obj["box"], obj["box"], "colour", obj["colour"], colour)
    obj["colour"] = colour
    return _with(sample, Image.fromarray(image), objects, change), change


def _free(box: PixelBox, others: list[PixelBox], size: tuple[int, int], margin: int) -> bool:
    x0, y0, x1, y1 = box
    if x0 < 0 or y0 < 0 or x1 > size[0] or y1 > size[1]:
        return False
    return all(x1 + margin <= b[0] or b[2] + margin <= x0 or y1 + margin <= b[1] or b[3] + margin <= y0 for b in others)


def _paste(image: np.ndarray, patch: np.ndarray, mask: np.ndarray, box: PixelBox) -> None:
    x0, y0, x1, y1 = box
    region = image[y0:y1, x0:x1]
    region[mask] = patch[mask]


def move(
    sample: Sample, shape: str | None = None, to: tuple[int, int] | None = None, margin: int = 2
) -> tuple[Sample, Change]:
    """Move one object so its box's top-left corner is at ``to`` (pixels are cut and pasted).

    Args:
        sample: A shapes-world sample.
        shape: The object to move; default the first object the question names.
        to: New top-left ``(x, y)``; default the free spot farthest from the old one.
        margin: Least gap to other objects' boxes.

    Raises:
        CounterfactualError: no such object, or the new place leaves the image or touches
            another object.
    """
    objects = _objects(sample)
    obj = _pick(sample, objects, shape)
    img = sample.load_image()
    image, bg = np.array(img), _background(img)
    x0, y0, x1, y1 = obj["box"]
    w, h = x1 - x0, y1 - y0
    others = [o["box"] for o in objects if o is not obj]
    if to is None:
        spots = [(x, y) for y in range(img.height - h + 1) for x in range(img.width - w + 1)
                 if _free((x, y, x + w, y + h), others, img.size, margin)]
        spots = [s for s in spots if abs(s[0] - x0) + abs(s[1] - y0) > 0]
        if not spots:
            raise CounterfactualError(f"no free place to move the {obj['shape']} to in sample {sample.id!r}.")
        to = max(spots, key=lambda s: (abs(s[0] - x0) + abs(s[1] - y0), -s[1], -s[0]))
    new = (to[0], to[1], to[0] + w, to[1] + h)
    if not _free(new, others, img.size, margin):
        raise CounterfactualError(
            f"cannot move the {obj['shape']} to {new}: it must stay inside the {img.size} image and "
            f"{margin} px away from the other objects {others}."
        )
    patch = image[y0:y1, x0:x1].copy()
    mask = (patch != bg).any(-1)
    image[y0:y1, x0:x1] = bg
    _paste(image, patch, mask, new)
    change = Change("move", obj["shape"], obj["box"], new, "position", str(obj["box"]), str(new))
    obj["box"] = new
    return _with(sample, Image.fromarray(image), objects, change), change


def remove(sample: Sample, shape: str | None = None) -> tuple[Sample, Change]:
    """Paint one object over with the background.

    The corrupted sample keeps the object's box in ``boxes`` (its patches are still the ones
    the question is about) but drops it from ``meta["objects"]``.
    """
    objects = _objects(sample)
    obj = _pick(sample, objects, shape)
    img = sample.load_image()
    image = np.array(img)
    x0, y0, x1, y1 = obj["box"]
    image[y0:y1, x0:x1] = _background(img)
    change = Change("remove", obj["shape"], obj["box"], None, "presence", "present", "absent")
    kept = [o for o in objects if o is not obj]
    return _with(sample, Image.fromarray(image), kept, change), change


def swap(sample: Sample, a: str | None = None, b: str | None = None, margin: int = 2) -> tuple[Sample, Change]:
    """Exchange the places of two objects (each centred where the other's box was centred).

    Args:
        sample: A shapes-world sample.
        a, b: The two objects; default the first two the question names, then the scene's others.
        margin: Least gap to the remaining objects.

    Raises:
        CounterfactualError: fewer than two objects, or a swapped object would leave the image
            or touch another object.
    """
    objects = _objects(sample)
    first = _pick(sample, objects, a)
    if b is None:
        rest = [o for o in objects if o is not first]
        named = [o for o in rest if o["shape"] in sample.boxes] or rest
        if not named:
            raise CounterfactualError(f"sample {sample.id!r} has a single object: there is nothing to swap it with.")
        second = named[0]
    else:
        second = _pick(sample, objects, b)
    img = sample.load_image()
    image, bg = np.array(img), _background(img)
    others = [o["box"] for o in objects if o is not first and o is not second]

    def centred(box: PixelBox, at: PixelBox) -> PixelBox:
        w, h = box[2] - box[0], box[3] - box[1]
        cx, cy = (at[0] + at[2]) // 2, (at[1] + at[3]) // 2
        return (cx - w // 2, cy - h // 2, cx - w // 2 + w, cy - h // 2 + h)

    new_a, new_b = centred(first["box"], second["box"]), centred(second["box"], first["box"])
    if not (_free(new_a, others, img.size, margin) and _free(new_b, others, img.size, margin)
            and _free(new_a, [new_b], img.size, margin)):
        raise CounterfactualError(
            f"swapping the {first['shape']} and the {second['shape']} would place them at {new_a} and {new_b}, "
            f"outside the {img.size} image or within {margin} px of another object: pick other objects."
        )
    patches = []
    for o in (first, second):
        x0, y0, x1, y1 = o["box"]
        patch = image[y0:y1, x0:x1].copy()
        patches.append((patch, (patch != bg).any(-1)))
        image[y0:y1, x0:x1] = bg
    _paste(image, *patches[0], new_a)
    _paste(image, *patches[1], new_b)
    change = Change("swap", f"{first['shape']}/{second['shape']}", first["box"], new_a, "position",
                    str((first["box"], second["box"])), str((new_a, new_b)))
    first["box"], second["box"] = new_a, new_b
    return _with(sample, Image.fromarray(image), objects, change), change


# --- any image -----------------------------------------------------------------------------


def _region(image: Image.Image, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    if not (0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height):
        raise CounterfactualError(f"box {box} must lie inside the {image.width}x{image.height} image with x0 < x1, y0 < y1.")
    return x0, y0, x1, y1


def fill_box(image: Image.Image, box: tuple[int, int, int, int], colour: tuple[int, int, int] | None = None) -> Image.Image:
    """A copy with ``box`` filled with ``colour`` (default: the image's mean colour)."""
    image = image.convert("RGB")
    x0, y0, x1, y1 = _region(image, box)
    if colour is None:
        colour = tuple(int(v) for v in np.array(image).reshape(-1, 3).mean(0).round())
    out = image.copy()
    out.paste(colour, (x0, y0, x1, y1))
    return out


def blur_box(image: Image.Image, box: tuple[int, int, int, int], radius: float = 4.0) -> Image.Image:
    """A copy with ``box`` Gaussian-blurred (PIL radius ``radius``)."""
    image = image.convert("RGB")
    region = _region(image, box)
    out = image.copy()
    out.paste(image.crop(region).filter(ImageFilter.GaussianBlur(radius)), region[:2])
    return out


def noise_box(image: Image.Image, box: tuple[int, int, int, int], std: float = 64.0, seed: int = 0) -> Image.Image:
    """A copy with Gaussian noise of ``std`` (0–255 scale) added inside ``box``, seeded."""
    image = image.convert("RGB")
    x0, y0, x1, y1 = _region(image, box)
    arr = np.array(image).astype(np.float64)
    noise = np.random.default_rng(seed).normal(0.0, std, size=(y1 - y0, x1 - x0, 3))
    arr[y0:y1, x0:x1] += noise
    return Image.fromarray(arr.clip(0, 255).round().astype(np.uint8))


def image_pair(model: Any, clean_image: Image.Image, corrupt_image: Image.Image, text: Any, *,
               template: Any = "auto", mark: Any = None) -> tuple[MMInputs, MMInputs]:
    """Prepare the same prompt with two images and check that they line up.

    Raises:
        ImageLayoutMismatchError: the images give different image-token counts or tile layouts
            (anyres models tile by aspect ratio: resize the corrupt image to the clean one's size).
    """
    clean = model.prepare(clean_image, text, template=template, mark=mark)
    corrupt = model.prepare(corrupt_image, text, template=template, mark=mark)
    check_aligned(clean, corrupt)
    return clean, corrupt


def text_pair(model: Any, image: Image.Image, text: str, old: str, new: str, *,
              template: Any = "auto") -> tuple[MMInputs, MMInputs]:
    """The prompt with ``old`` and with ``new`` in its place (first occurrence), as aligned inputs.

    Both inputs get the group ``edited``: the positions of the replaced word.

    Raises:
        CounterfactualError: ``old`` does not occur in ``text``.
        TokenLengthMismatchError: ``new`` tokenises to a different number of tokens than ``old``
            in this context (pick a word of the same token length).
    """
    if old not in text:
        raise CounterfactualError(f"{old!r} does not occur in {text!r}.")
    clean = model.prepare(image, text, template=template, mark={"edited": old})
    corrupt_text = text.replace(old, new, 1)
    corrupt = model.prepare(image, corrupt_text, template=template, mark={"edited": new})
    if clean.input_ids.shape != corrupt.input_ids.shape or not torch.equal(clean.groups["edited"], corrupt.groups["edited"]):
        tok = model.processor.tokenizer
        n_old, n_new = int(clean.groups["edited"].sum()), int(corrupt.groups["edited"].sum())
        raise TokenLengthMismatchError(
            f"replacing {old!r} ({n_old} tokens: {tok.convert_ids_to_tokens(clean.input_ids[clean.groups['edited']].tolist())}) "
            f"by {new!r} ({n_new} tokens) changes the token layout: choose a replacement of {n_old} token(s)."
        )
    check_aligned(clean, corrupt, edited=clean.groups["edited"])
    return clean, corrupt


def check_aligned(
    clean: MMInputs, corrupt: MMInputs, edited: Bool[Tensor, "batch pos"] | None = None
) -> Bool[Tensor, "batch pos"]:
    """Check that two inputs line up position by position; return the text positions that differ.

    Args:
        clean: Clean inputs.
        corrupt: Corrupt inputs.
        edited: Text positions allowed to differ (an edited word); None allows none.

    Raises:
        MisalignedInputsError: different batch or sequence length, padding or token groups' layout.
        ImageLayoutMismatchError: image positions or (anyres) tile layouts differ.
    """
    if clean.input_ids.shape != corrupt.input_ids.shape:
        raise MisalignedInputsError(
            f"clean inputs are {tuple(clean.input_ids.shape)} tokens but corrupt ones {tuple(corrupt.input_ids.shape)}: "
            "build the corrupt input from the same prompt and an image of the same size (see image_pair, text_pair)."
        )
    if not torch.equal(clean.attention_mask, corrupt.attention_mask):
        raise MisalignedInputsError("clean and corrupt inputs are padded differently: prepare them as one batch or unpadded.")
    ci, xi = clean.image_grid.image_index >= 0, corrupt.image_grid.image_index >= 0
    if not torch.equal(ci, xi):
        raise ImageLayoutMismatchError(
            f"the image occupies {int(ci.sum())} positions in the clean input but {int(xi.sum())} in the corrupt one: "
            "the two images must give the same number of image tokens (same size for anyres models)."
        )
    for name in ("kind", "tile", "row", "col"):
        if not torch.equal(getattr(clean.image_grid, name), getattr(corrupt.image_grid, name)):
            raise ImageLayoutMismatchError(
                f"the images' patch layouts differ ({name}): anyres models tile each image by its aspect ratio, so "
                "give the corrupt image the clean image's size (e.g. corrupt.resize(clean.size))."
            )
    differ = (clean.input_ids != corrupt.input_ids) & ~ci
    allowed = torch.zeros_like(differ) if edited is None else edited
    bad = differ & ~allowed
    if bad.any():
        pos = bad.nonzero()[:, 1].tolist()
        raise MisalignedInputsError(
            f"the prompts differ at text positions {pos[:10]} outside the edited word: clean and corrupt prompts "
            "must be the same text except one replaced word of the same token length (see text_pair)."
        )
    return differ
