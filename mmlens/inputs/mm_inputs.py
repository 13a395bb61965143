"""``prepare``: images + questions → model inputs with token groups and patch geometry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mmlens.config import VLMConfig
from mmlens.errors import ImageTokenMismatchError, InvalidInputError, MissingImageSlotError, MMLensError
from mmlens.geometry import BASE, NEWLINE, TILE, AnyresGeometry, ResizedGeometry, TiledGeometry, ViewGeometry
from mmlens.inputs.pixels import Pixels, as_images, process_images
from mmlens.inputs.templates import Template, get_template
from mmlens.inputs.tokens import TokenGroups, span_mask, standard_groups
from mmlens.prompts import PromptText
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
            (``mmlens.geometry.BASE`` / ``TILE`` / ``NEWLINE``); defaults to base view at
            every image position.
        tile: ``[batch, pos]`` tile index (row-major over the tile grid) of a tile patch, -1
            elsewhere, and for the cells of a shrunk OneVision grid (each mixes several patches).
    """

    image_index: Int[Tensor, "batch pos"]
    row: Int[Tensor, "batch pos"]
    col: Int[Tensor, "batch pos"]
    boxes: Float[Tensor, "batch pos 4"]
    views: tuple[ViewGeometry | AnyresGeometry | TiledGeometry | ResizedGeometry | None, ...]
    kind: Int[Tensor, "batch pos"] | None = None
    tile: Int[Tensor, "batch pos"] | None = None

    def __post_init__(self) -> None:
        if self.kind is None:
            object.__setattr__(self, "kind", torch.where(self.image_index >= 0, BASE, -1))
        if self.tile is None:
            object.__setattr__(self, "tile", torch.full_like(self.image_index, -1))

    def patches_in_box(self, box: Any) -> Bool[Tensor, "batch pos"]:
        """Image positions whose patch has a pixel inside ``box`` (original-image pixels).

        docs/methods.md#box-to-patches: "related" means any overlap; newline slots, CLS and padding-only
        patches are never related (they count as "other"). A cell of a shrunk OneVision grid is
        related when any patch it mixes is.

        Args:
            box: One box ``(x0, y0, x1, y1)`` for every row (a tuple, list, numpy array or tensor
                of 4 numbers), or one box (or None) per batch row.

        Raises:
            BoxOutsideImageError: the box is empty or not inside the image.
            InvalidInputError: a list of boxes whose length is not the batch size.
        """
        per_row = _boxes_per_row(box, len(self.views))
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


def _as_box(box: Any) -> tuple[float, ...] | None:
    """``box`` as 4 floats when it is one box (tuple, list, numpy array or tensor of 4 numbers), else None."""
    if isinstance(box, (Tensor, np.ndarray)):
        return tuple(float(v) for v in box.tolist()) if tuple(box.shape) == (4,) else None
    if isinstance(box, (tuple, list)) and len(box) == 4 and all(isinstance(v, (int, float, np.number)) for v in box):
        return tuple(float(v) for v in box)
    return None


def _boxes_per_row(box: Any, batch: int) -> list[tuple[float, ...] | None]:
    """One box per batch row from one box for all rows or a sequence of one box (or None) per row.

    Raises:
        InvalidInputError: a sequence whose length is not the batch size, or an entry that is not a box.
    """
    one = _as_box(box)
    if one is not None:
        return [one] * batch
    rows = list(box.tolist() if isinstance(box, (Tensor, np.ndarray)) else box)
    if len(rows) != batch:
        raise InvalidInputError(
            f"got {len(rows)} boxes for a batch of {batch} row(s): give one box (x0, y0, x1, y1) for every "
            "row, or a list of exactly one box (or None) per row."
        )
    out = []
    for r, b in enumerate(rows):
        parsed = None if b is None else _as_box(b)
        if b is not None and parsed is None:
            raise InvalidInputError(f"box of row {r} is {b!r}: a box is four numbers (x0, y0, x1, y1) in pixels.")
        out.append(parsed)
    return out


@dataclass(frozen=True)
class MMInputs:
    """Tensors for the model plus the groups and geometry that analyses need.

    Anyres models (LLaVA-NeXT, LLaVA-OneVision) get ``pixel_values`` ``[n_img, max_views, 3, H, W]``
    and ``image_sizes`` ``[n_img, 2]`` (height, width), both passed on by ``model(inputs)``.
    InstructBLIP gets ``qformer_input_ids`` / ``qformer_attention_mask``: the question in the
    Q-Former's vocabulary (one row per prompt), also passed on by ``model(inputs)``. Qwen2-VL gets
    every image's patches packed, ``pixel_values [n_patches, d_patch]``, and ``image_grid_thw``
    ``[n_img, 3]``, each image's patch grid (frames, rows, columns).
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: TokenMask
    pixel_values: Float[Tensor, "n_img *views 3 height width"] | Float[Tensor, "v_pos d_patch"] | None
    groups: TokenGroups
    image_grid: ImageGrid
    prompts: tuple[str, ...]
    image_sizes: Int[Tensor, "n_img 2"] | None = None
    qformer_input_ids: Int[Tensor, "batch q_pos"] | None = None
    qformer_attention_mask: Int[Tensor, "batch q_pos"] | None = None
    image_grid_thw: Int[Tensor, "n_img 3"] | None = None

    def __post_init__(self) -> None:
        # Groups of other prompts would mark the wrong positions (replace(inputs, groups=...)).
        self.groups.check(self.input_ids)

    def patches_in_box(self, box: Any) -> Bool[Tensor, "batch pos"]:
        """See :meth:`ImageGrid.patches_in_box`."""
        return self.image_grid.patches_in_box(box)

    def to(self, device: torch.device | str) -> MMInputs:
        pv = None if self.pixel_values is None else self.pixel_values.to(device)
        sizes = None if self.image_sizes is None else self.image_sizes.to(device)
        qformer = {k: None if getattr(self, k) is None else getattr(self, k).to(device)
                   for k in ("qformer_input_ids", "qformer_attention_mask", "image_grid_thw")}
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            pixel_values=pv,
            groups=self.groups.to(device),
            image_sizes=sizes,
            **qformer,
        )

    def row(self, r: int) -> MMInputs:
        """Batch row ``r`` alone (its padding kept), with its pixels: one entry of ``pixel_values``,
        or for a tiled model (InternVL, ``[n_views, 3, H, W]``) that image's run of views."""
        pv = self.pixel_values
        views = self.image_grid.views
        grid_thw = self.image_grid_thw
        if pv is not None and grid_thw is not None:
            # Packed patches (Qwen2-VL): the row's image is a run of t·h·w patch rows.
            counts = grid_thw.prod(-1).tolist()
            pv, grid_thw = pv[sum(counts[:r]) : sum(counts[: r + 1])], grid_thw[r : r + 1]
        elif pv is not None and views and all(isinstance(v, TiledGeometry) for v in views):
            start = sum(v.n_views for v in views[:r])
            pv = pv[start : start + views[r].n_views]
        elif pv is not None:
            pv = pv[r : r + 1]
        g = self.image_grid
        index = torch.where(g.image_index[r : r + 1] >= 0, 0, -1)  # the row's image is now image 0
        grid = ImageGrid(index, g.row[r : r + 1], g.col[r : r + 1], g.boxes[r : r + 1],
                         (views[r],), g.kind[r : r + 1], g.tile[r : r + 1])
        return replace(
            self,
            input_ids=self.input_ids[r : r + 1],
            attention_mask=self.attention_mask[r : r + 1],
            pixel_values=pv,
            groups=TokenGroups.of(self.input_ids[r : r + 1], {k: v[r : r + 1] for k, v in self.groups.items()}),
            image_grid=grid,
            prompts=(self.prompts[r],),
            image_sizes=None if self.image_sizes is None else self.image_sizes[r : r + 1],
            **{k: None if getattr(self, k) is None else getattr(self, k)[r : r + 1]
               for k in ("qformer_input_ids", "qformer_attention_mask")},
            image_grid_thw=grid_thw,
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def shape(self) -> torch.Size:
        """``[batch, pos]`` of the token ids: code written for token tensors (TransformerLens'
        ``get_act_patch_*``) reads the prompt's layout from it."""
        return self.input_ids.shape


def prepare(
    processor: Any,
    cfg: VLMConfig,
    images: Any,
    text: str | PromptText | Sequence[str | PromptText],
    *,
    template: str | Template | None = "auto",
    mark: Mapping[str, str | Sequence[str | None]] | None = None,
) -> MMInputs:
    """Build model inputs for one image per prompt.

    Args:
        processor: The checkpoint's processor (its tokenizer and image processor are used).
        cfg: The model config (image token, tower geometry, feature strategy).
        images: One image per prompt: PIL images, file paths, or ``[H, W, 3]`` / ``[3, H, W]``
            arrays or tensors (0..255 integers or 0..1 floats). Anyres models (LLaVA-NeXT, LLaVA-OneVision) tile each image
            with their own processor (the template's ``image_mode`` is not used): the prompt gets
            as many image tokens as that image's base view, tiles and newline slots fill, and
            ``image_sizes`` goes into the result.
        text: The question(s), placed into ``template``; with ``template=None`` each text is a
            full prompt that must contain the tokenizer's image token once. A
            :class:`~mmlens.prompts.PromptText` (from the task prompt builders) also marks the
            question, options and other spans as groups.
        template: A registered template name or a :class:`Template`; ``"auto"`` (default): the
            one the model's family uses (``cfg.template``: ``vicuna_v1`` for LLaVA-1.5,
            ``llava_hf`` for LLaVA-NeXT/OneVision, ``internvl``, ``qwen2_vl``, ``instructblip``…).
        mark: Extra groups: name → substring of the question (or one per row) whose tokens
            form the group, e.g. ``{"true_option": "red", "false_option": "blue"}``.

    Raises:
        MissingImageSlotError: a full prompt (``template=None``) without exactly one image token.
        MMLensError: images and prompts differ in number; an anyres processor that does not
            match the model.
    """
    images = as_images(images)
    texts = [text] if isinstance(text, (str, PromptText)) else list(text)
    bad = [t for t in texts if not isinstance(t, (str, PromptText))]
    if bad:
        raise InvalidInputError(f"prompts must be strings, got a {type(bad[0]).__name__}: {bad[0]!r:.60}.")
    if len(images) != len(texts):
        raise MMLensError(f"got {len(images)} images for {len(texts)} prompts: give one image per prompt.")
    tok = processor.tokenizer
    image_token = getattr(processor, "image_token", None) or getattr(tok, "image_token", "<image>")
    tmpl = None if template is None else get_template(template, cfg.template)
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
            # Processors that wrap the image tokens (InternVL: <img>…</img>) do so in full prompts too.
            wrap = getattr(processor, "start_image_token", ""), getattr(processor, "end_image_token", "")
            prompts.append(t.replace(image_token, wrap[0] + slot + wrap[1]))
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
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    moved = None
    if tmpl is not None and tmpl.image_before_bos:
        ids, offsets, moved = _image_before_bos(ids, offsets, enc["attention_mask"], cfg.image_token_index)
    groups = standard_groups(ids, enc["attention_mask"], cfg.image_token_index, span_mask(offsets, spans))
    if moved is not None:  # the <s> after the image is the prompt's preamble: the system group, as before the image
        groups["system"], groups["user"] = groups["system"] | moved, groups["user"] & ~moved
    if tmpl is not None and (tmpl.image_open or tmpl.image_close):
        # <im_start> / <im_end> are in no standard group, only in their own (Template.image_open).
        delimiters = [tmpl.delimiter_spans(p, image_token) for p in prompts]
        for name, k in (("image_start", 0), ("image_end", 1)):
            groups[name] = span_mask(offsets, [d[k] for d in delimiters]) & enc["attention_mask"].bool()
            groups["system"], groups["user"] = groups["system"] & ~groups[name], groups["user"] & ~groups[name]
    for name in sorted({k for e in extra for k in e} - {"question"}):
        groups[name] = torch.zeros_like(groups["question"])
        for r, e in enumerate(extra):
            for span in e.get(name, []):
                groups[name][r] |= span_mask(offsets[r : r + 1], [span])[0]
    for name, sub in (mark or {}).items():
        subs = [sub] * len(texts) if isinstance(sub, str) else list(sub)
        groups[name] = span_mask(offsets, [_find(p, s, q) for p, s, q in zip(prompts, subs, spans)])
    grid = _grid(ids, cfg.image_token_index, pixels)
    qformer = _qformer_text(processor, texts, image_token)
    return MMInputs(ids, enc["attention_mask"], pixels.pixel_values, TokenGroups.of(ids, groups), grid,
                    tuple(prompts), pixels.image_sizes, **qformer, image_grid_thw=pixels.image_grid_thw)


def _image_before_bos(
    ids: Int[Tensor, "batch pos"], offsets: Int[Tensor, "batch pos 2"], mask: Tensor, image_token_index: int
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos 2"], Bool[Tensor, "batch pos"]]:
    """Move the token the tokenizer writes first (``<s>``) after the image tokens that follow it,
    as InstructBLIP's processor orders a prompt (queries, ``<s>``, instruction); a row that does
    not start with one token and then image tokens is left as it is. Also returns where the moved
    tokens now are."""
    ids, offsets, moved = ids.clone(), offsets.clone(), torch.zeros_like(ids, dtype=torch.bool)
    for r in range(ids.shape[0]):
        first = int(mask[r].nonzero()[0])
        n = int((ids[r, first + 1 :] == image_token_index).int().cumprod(0).sum())  # image tokens right after it
        if n and int(ids[r, first]) != image_token_index:
            span = slice(first, first + n + 1)
            ids[r, span], offsets[r, span] = ids[r, span].roll(-1), offsets[r, span].roll(-1, dims=0)
            moved[r, first + n] = True
    return ids, offsets, moved


def _qformer_text(processor: Any, texts: Sequence[str | PromptText], image_token: str) -> dict[str, Tensor]:
    """InstructBLIP: the instruction in the Q-Former's vocabulary (``qformer_input_ids`` and mask),
    the question text as ``InstructBlipProcessor`` tokenizes it; empty for other processors."""
    tok = getattr(processor, "qformer_tokenizer", None)
    if tok is None:
        return {}
    plain = [(t.text if isinstance(t, PromptText) else t).replace(image_token, "") for t in texts]
    enc = tok(plain, return_tensors="pt", padding=True)
    return {"qformer_input_ids": enc["input_ids"], "qformer_attention_mask": enc["attention_mask"]}


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
