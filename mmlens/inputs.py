"""``prepare``: images + questions → model inputs with token groups and patch geometry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from PIL import Image
from torch import Tensor

from mmlens.config import VLMConfig
from mmlens.errors import MissingImageSlotError, MMLensError
from mmlens.geometry import Box, ViewGeometry
from mmlens.prompts import PromptText
from mmlens.templates import Template, get_template
from mmlens.tokens import TokenGroups, span_mask, standard_groups


@dataclass(frozen=True)
class ImageGrid:
    """For every position of the merged sequence: which image and patch feeds it.

    Attributes:
        image_index: ``[batch, pos]`` image (= batch row) feeding the position, -1 for text.
        row, col: ``[batch, pos]`` patch coordinates, -1 for text and for a CLS slot.
        boxes: ``[batch, pos, 4]`` the patch's pixel box in the original image, NaN if none.
        views: Per batch row, the geometry of its image (None for a row without image).
    """

    image_index: Int[Tensor, "batch pos"]
    row: Int[Tensor, "batch pos"]
    col: Int[Tensor, "batch pos"]
    boxes: Float[Tensor, "batch pos 4"]
    views: tuple[ViewGeometry | None, ...]

    def patches_in_box(self, box: Box | Sequence[Box | None]) -> Bool[Tensor, "batch pos"]:
        """Image positions whose patch has a pixel inside ``box`` (original-image pixels).

        Args:
            box: One box for every row, or one box (or None) per batch row.

        Raises:
            BoxOutsideImageError: the box is empty or not inside the image.
        """
        per_row = [box] * len(self.views) if _is_box(box) else list(box)
        mask = torch.zeros(self.row.shape, dtype=torch.bool)
        for r, (view, b) in enumerate(zip(self.views, per_row)):
            if view is None or b is None:
                continue
            view.check_box(b)
            for p in (self.row[r] >= 0).nonzero().flatten().tolist():
                mask[r, p] = view.overlaps(int(self.row[r, p]), int(self.col[r, p]), b)
        return mask

    def padding_patches(self) -> Bool[Tensor, "batch pos"]:
        """Image positions whose patch holds only padding (pad-to-square geometry)."""
        return (self.row >= 0) & torch.isnan(self.boxes).any(-1)


def _is_box(box: Any) -> bool:
    return isinstance(box, (tuple, list)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)


@dataclass(frozen=True)
class MMInputs:
    """Tensors for the model plus the groups and geometry that analyses need."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    pixel_values: Float[Tensor, "n_img 3 height width"] | None
    groups: TokenGroups
    image_grid: ImageGrid
    prompts: tuple[str, ...]

    def patches_in_box(self, box: Box | Sequence[Box | None]) -> Bool[Tensor, "batch pos"]:
        """See :meth:`ImageGrid.patches_in_box`."""
        return self.image_grid.patches_in_box(box)

    def to(self, device: torch.device | str) -> MMInputs:
        pv = None if self.pixel_values is None else self.pixel_values.to(device)
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            pixel_values=pv,
            groups=self.groups.to(device),
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def expand2square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """LLaVA-1.5's padding: centre the image on a square of its longer side."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), fill)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


def prepare(
    processor: Any,
    cfg: VLMConfig,
    images: Image.Image | Sequence[Image.Image],
    text: str | PromptText | Sequence[str | PromptText],
    *,
    template: str | Template | None = "vicuna_v1",
    mark: Mapping[str, str | Sequence[str | None]] | None = None,
) -> MMInputs:
    """Build model inputs for one image per prompt.

    Args:
        processor: The checkpoint's processor (its tokenizer and image processor are used).
        cfg: The model config (image token, tower geometry, feature strategy).
        images: One image per prompt.
        text: The question(s), placed into ``template``; with ``template=None`` each text is a
            full prompt that must contain the tokenizer's image token once. A
            :class:`~mmlens.prompts.PromptText` (from the task prompt builders) also marks the
            question, options and other spans as groups.
        template: A registered template name or a :class:`Template`.
        mark: Extra groups: name → substring of the question (or one per row) whose tokens
            form the group, e.g. ``{"true_option": "red", "false_option": "blue"}``.
    """
    images = [images] if isinstance(images, Image.Image) else list(images)
    texts = [text] if isinstance(text, (str, PromptText)) else list(text)
    if len(images) != len(texts):
        raise MMLensError(f"got {len(images)} images for {len(texts)} prompts: give one image per prompt.")
    tok = processor.tokenizer
    image_token = getattr(processor, "image_token", None) or getattr(tok, "image_token", "<image>")
    slot = image_token * cfg.image_seq_length
    tmpl = None if template is None else get_template(template)
    prompts, spans, extra = [], [], []
    for t in texts:
        marked = t if isinstance(t, PromptText) else None
        t = marked.text if marked else t
        if tmpl is None:
            if t.count(image_token) != 1:
                raise MissingImageSlotError(
                    f"prompt {t[:60]!r}... must contain the image token {image_token!r} exactly once "
                    "(or pass the question alone with a template, e.g. template='vicuna_v1')."
                )
            prompts.append(t.replace(image_token, slot))
            spans.append(None)
        else:
            prompt, span = tmpl.render(t, slot)
            prompts.append(prompt)
            if marked is not None:
                shift = span[0]
                extra.append({k: [(a + shift, b + shift) for a, b in v] for k, v in marked.spans.items()})
                q = marked.spans.get("question")
                span = (q[0][0] + shift, q[-1][1] + shift) if q else None
            else:
                extra.append({})
            spans.append(span)
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(prompts, return_tensors="pt", padding=True, return_offsets_mapping=True)
    finally:
        tok.padding_side = side
    mode = tmpl.image_mode if tmpl is not None else "crop"
    pixel_values, views = _pixels(processor.image_processor, cfg, images, mode)
    offsets = enc["offset_mapping"]
    groups = standard_groups(enc["input_ids"], enc["attention_mask"], cfg.image_token_index, span_mask(offsets, spans))
    for name in sorted({k for e in extra for k in e} - {"question"}):
        groups[name] = torch.zeros_like(groups["question"])
        for r, e in enumerate(extra):
            for span in e.get(name, []):
                groups[name][r] |= span_mask(offsets[r : r + 1], [span])[0]
    for name, sub in (mark or {}).items():
        subs = [sub] * len(texts) if isinstance(sub, str) else list(sub)
        groups[name] = span_mask(offsets, [_find(p, s, q) for p, s, q in zip(prompts, subs, spans)])
    grid = _grid(enc["input_ids"], cfg, views)
    return MMInputs(enc["input_ids"], enc["attention_mask"], pixel_values, TokenGroups(groups), grid, tuple(prompts))


def _find(prompt: str, sub: str | None, question: tuple[int, int] | None) -> tuple[int, int] | None:
    if sub is None:
        return None
    start = prompt.find(sub, question[0] if question else 0)
    if start < 0:
        raise MMLensError(f"cannot mark {sub!r}: it does not occur in the question of prompt {prompt[-80:]!r}.")
    return start, start + len(sub)


def _pixels(image_processor: Any, cfg: VLMConfig, images: list[Image.Image], mode: str):
    side, patch = cfg.vision.image_size, cfg.vision.patch_size
    images = [im.convert("RGB") for im in images]
    if mode == "pad":
        fill = tuple(int(255 * m) for m in image_processor.image_mean)
        views = [ViewGeometry.pad(*im.size, side, patch) for im in images]
        images = [expand2square(im, fill) for im in images]
    else:
        views = [ViewGeometry.crop(*im.size, side, patch) for im in images]
    return image_processor(images, return_tensors="pt")["pixel_values"], tuple(views)


def _grid(input_ids: Tensor, cfg: VLMConfig, views: tuple[ViewGeometry, ...]) -> ImageGrid:
    b, p = input_ids.shape
    image_index = torch.full((b, p), -1)
    row = torch.full((b, p), -1)
    col = torch.full((b, p), -1)
    boxes = torch.full((b, p, 4), float("nan"))
    # Position k of an image block shows patch k - shift (shift 1: CLS kept; -1: SigLIP's first dropped).
    shift = int(cfg.vision.has_cls) - int(cfg.vision_feature_select_strategy == "default")
    g = cfg.vision.grid
    for r in range(b):
        slots = (input_ids[r] == cfg.image_token_index).nonzero().flatten()
        image_index[r, slots] = r
        for k, pos in enumerate(slots.tolist()):
            idx = k - shift
            if idx < 0:
                continue
            row[r, pos], col[r, pos] = idx // g, idx % g
            if not views[r].is_padding(idx // g, idx % g):
                boxes[r, pos] = torch.tensor(views[r].patch_box(idx // g, idx % g))
    return ImageGrid(image_index, row, col, boxes, views)
