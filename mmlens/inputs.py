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
from mmlens.errors import ImageTokenMismatchError, MissingImageSlotError, MMLensError
from mmlens.geometry import Box, ViewGeometry
from mmlens.pixels import Pixels, process_images
from mmlens.geometry_anyres import BASE, NEWLINE, TILE, AnyresGeometry
from mmlens.prompts import PromptText
from mmlens.templates import Template, get_template
from mmlens.tokens import TokenGroups, span_mask, standard_groups
from mmlens.typing import TokenMask


@dataclass(frozen=True)
class ImageGrid:
    """For every position of the merged sequence: which image, view and patch feeds it.

    Attributes:
        image_index: ``[batch, pos]`` image (= batch row) feeding the position, -1 for text.
        row, col: ``[batch, pos]`` patch coordinates in its view (base view or tile; for a shrunk
            OneVision grid, the cell in the shrunk grid), -1 for text, CLS and newline slots.
        boxes: ``[batch, pos, 4]`` the patch's pixel box ``(x0, y0, x1, y1)`` in the original
            image (float64), NaN for text, CLS, newline slots and padding-only patches.
        views: Per batch row, the geometry of its image (None for a row without image).
        kind: ``[batch, pos]`` -1 text, 0 base-view patch (or CLS), 1 tile patch, 2 newline slot
            (``mmlens.geometry_anyres.BASE`` / ``TILE`` / ``NEWLINE``); defaults to base view at
            every image position.
        tile: ``[batch, pos]`` tile index (row-major over the tile grid) of a tile patch, -1
            elsewhere, and for the cells of a shrunk OneVision grid (each mixes several patches).
    """

    image_index: Int[Tensor, "batch pos"]
    row: Int[Tensor, "batch pos"]
    col: Int[Tensor, "batch pos"]
    boxes: Float[Tensor, "batch pos 4"]
    views: tuple[ViewGeometry | AnyresGeometry | None, ...]
    kind: Int[Tensor, "batch pos"] | None = None
    tile: Int[Tensor, "batch pos"] | None = None

    def __post_init__(self) -> None:
        if self.kind is None:
            object.__setattr__(self, "kind", torch.where(self.image_index >= 0, BASE, -1))
        if self.tile is None:
            object.__setattr__(self, "tile", torch.full_like(self.image_index, -1))

    def patches_in_box(self, box: Box | Sequence[Box | None]) -> Bool[Tensor, "batch pos"]:
        """Image positions whose patch has a pixel inside ``box`` (original-image pixels).

        methods.md §1.1: "related" means any overlap; newline slots, CLS and padding-only
        patches are never related (they count as "other"). A cell of a shrunk OneVision grid is
        related when any patch it mixes is.

        Args:
            box: One box ``(x0, y0, x1, y1)`` for every row, or one box (or None) per batch row.

        Raises:
            BoxOutsideImageError: the box is empty or not inside the image.
        """
        per_row = [box] * len(self.views) if _is_box(box) else list(box)
        mask = torch.zeros(self.row.shape, dtype=torch.bool)
        for r, (view, b) in enumerate(zip(self.views, per_row)):
            if view is None or b is None:
                continue
            view.check_box(b)
            x0, y0, x1, y1 = self.boxes[r].unbind(-1)
            # NaN boxes compare False: text, CLS, newline and padding positions are never related.
            mask[r] = (torch.minimum(x1, torch.tensor(float(b[2]))) > torch.maximum(x0, torch.tensor(float(b[0])))) & (
                torch.minimum(y1, torch.tensor(float(b[3]))) > torch.maximum(y0, torch.tensor(float(b[1])))
            )
        return mask

    def padding_patches(self) -> Bool[Tensor, "batch pos"]:
        """Image positions whose patch holds only padding (pad-to-square or anyres tile padding)."""
        return (self.row >= 0) & (self.kind != NEWLINE) & torch.isnan(self.boxes).any(-1)

    def newline_slots(self) -> Bool[Tensor, "batch pos"]:
        """Anyres ``image_newline`` positions (one after every row of the tile grid)."""
        return self.kind == NEWLINE

    def base_patches(self) -> Bool[Tensor, "batch pos"]:
        """Positions fed by the base view (the whole image at the tower's resolution)."""
        return self.kind == BASE

    def tile_patches(self) -> Bool[Tensor, "batch pos"]:
        """Positions fed by the anyres tiles (after un-padding, and OneVision's shrink)."""
        return self.kind == TILE


def _is_box(box: Any) -> bool:
    return isinstance(box, (tuple, list)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)


@dataclass(frozen=True)
class MMInputs:
    """Tensors for the model plus the groups and geometry that analyses need.

    Anyres models (LLaVA-NeXT, LLaVA-OneVision) get ``pixel_values`` ``[n_img, max_views, 3, H, W]``
    and ``image_sizes`` ``[n_img, 2]`` (height, width), both passed on by ``model(inputs)``.
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: TokenMask
    pixel_values: Float[Tensor, "n_img *views 3 height width"] | None
    groups: TokenGroups
    image_grid: ImageGrid
    prompts: tuple[str, ...]
    image_sizes: Int[Tensor, "n_img 2"] | None = None

    def patches_in_box(self, box: Box | Sequence[Box | None]) -> Bool[Tensor, "batch pos"]:
        """See :meth:`ImageGrid.patches_in_box`."""
        return self.image_grid.patches_in_box(box)

    def to(self, device: torch.device | str) -> MMInputs:
        pv = None if self.pixel_values is None else self.pixel_values.to(device)
        sizes = None if self.image_sizes is None else self.image_sizes.to(device)
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            pixel_values=pv,
            groups=self.groups.to(device),
            image_sizes=sizes,
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]


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
        images: One image per prompt. Anyres models (LLaVA-NeXT, LLaVA-OneVision) tile each image
            with their own processor (the template's ``image_mode`` is not used): the prompt gets
            as many image tokens as that image's base view, tiles and newline slots fill, and
            ``image_sizes`` goes into the result.
        text: The question(s), placed into ``template``; with ``template=None`` each text is a
            full prompt that must contain the tokenizer's image token once. A
            :class:`~mmlens.prompts.PromptText` (from the task prompt builders) also marks the
            question, options and other spans as groups.
        template: A registered template name or a :class:`Template`.
        mark: Extra groups: name → substring of the question (or one per row) whose tokens
            form the group, e.g. ``{"true_option": "red", "false_option": "blue"}``.

    Raises:
        MissingImageSlotError: a full prompt (``template=None``) without exactly one image token.
        MMLensError: images and prompts differ in number; an anyres processor that does not
            match the model.
    """
    images = [images] if isinstance(images, Image.Image) else list(images)
    texts = [text] if isinstance(text, (str, PromptText)) else list(text)
    if len(images) != len(texts):
        raise MMLensError(f"got {len(images)} images for {len(texts)} prompts: give one image per prompt.")
    tok = processor.tokenizer
    image_token = getattr(processor, "image_token", None) or getattr(tok, "image_token", "<image>")
    tmpl = None if template is None else get_template(template)
    mode = tmpl.image_mode if tmpl is not None else "crop"
    pixels = process_images(processor.image_processor, cfg, images, mode)
    prompts, spans, extra = [], [], []
    for t, slots in zip(texts, pixels.slots):
        slot = image_token * len(slots)
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
    grid = _grid(enc["input_ids"], cfg.image_token_index, pixels)
    return MMInputs(enc["input_ids"], enc["attention_mask"], pixels.pixel_values, TokenGroups(groups), grid,
                    tuple(prompts), pixels.image_sizes)


def _find(prompt: str, sub: str | None, question: tuple[int, int] | None) -> tuple[int, int] | None:
    if sub is None:
        return None
    start = prompt.find(sub, question[0] if question else 0)
    if start < 0:
        raise MMLensError(f"cannot mark {sub!r}: it does not occur in the question of prompt {prompt[-80:]!r}.")
    return start, start + len(sub)


def _grid(input_ids: Int[Tensor, "batch pos"], image_token_index: int, pixels: Pixels) -> ImageGrid:
    b, p = input_ids.shape
    image_index, kind, tile, row, col = (torch.full((b, p), -1) for _ in range(5))
    boxes = torch.full((b, p, 4), float("nan"), dtype=torch.float64)
    for r, slots in enumerate(pixels.slots):
        positions = (input_ids[r] == image_token_index).nonzero().flatten().tolist()
        if len(positions) != len(slots):
            raise ImageTokenMismatchError(
                f"prompt {r} has {len(positions)} image tokens but its image needs {len(slots)}: write the "
                "image token once in a prompt (prepare expands it), or let a template place it."
            )
        image_index[r, positions] = r
        for pos, s in zip(positions, slots):
            kind[r, pos], tile[r, pos], row[r, pos], col[r, pos] = s.kind, s.tile, s.row, s.col
            if s.box is not None:
                boxes[r, pos] = torch.tensor(s.box, dtype=torch.float64)
    return ImageGrid(image_index, row, col, boxes, pixels.views, kind, tile)
