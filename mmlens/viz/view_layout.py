"""Where each position of a prompt goes in an HTML view: token labels, panels and patch boxes.

Single-view models show one panel, the model's square input in the original image's frame (pad
as grey margins, a centre crop as the visible part). Anyres models show two panels as the model
sees them: the base view (the whole image squashed to the tower's input, its ``grid × grid``
patches) and the tiles (their patches where they lie in the image, after un-padding), with a
column of newline slots to the right of the tile grid, one per grid row. InternVL images cut
into several tiles show the thumbnail (the whole image squashed to one tile) and the tiles where
they lie in the image, each token drawn as the box of its 2×2 patches; a single-tile image is
one panel.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import torch
from PIL import Image

from mmlens.errors import MMLensError
from mmlens.geometry import BASE, NEWLINE, AnyresGeometry, ResizedGeometry, TiledGeometry, ViewGeometry
from mmlens.inputs import MMInputs

PANEL_PX = 360  # longest side of a panel on screen (CSS pixels)
PNG_PX = 512  # longest side of an embedded picture
GUTTER = 0.07  # width of the newline-slot column, as a fraction of the tile panel's image width


def token_labels(model, inputs: MMInputs, row: int = 0) -> list[str]:
    """Readable labels: text tokens as themselves, image tokens by the patch feeding them.

    Single-view images: ``img(r,c)``. Anyres images (LLaVA-NeXT, LLaVA-OneVision): ``base(r,c)``
    for the base view, ``t{tile}(r,c)`` for a patch of tile ``tile`` (row-major over the tile
    grid), ``tiles(r,c)`` for a cell of a shrunk OneVision grid (it mixes several tiles'
    patches), ``nl`` for a newline slot. InternVL images of several tiles: ``base(r,c)`` for the
    thumbnail's tokens, ``t{tile}(r,c)`` for a tile's.
    """
    toks = model.processor.tokenizer.convert_ids_to_tokens(inputs.input_ids[row].tolist())
    grid = inputs.image_grid
    split = _two_panels(grid.views[row])
    labels = []
    for i, tok in enumerate(toks):
        if grid.image_index[row, i] < 0:
            labels.append(tok)
            continue
        kind, tile, r, c = (int(t[row, i]) for t in (grid.kind, grid.tile, grid.row, grid.col))
        if not split:
            labels.append(f"img({r},{c})")
        elif kind == NEWLINE:
            labels.append("nl")
        elif kind == BASE:
            labels.append(f"base({r},{c})")
        else:
            labels.append(f"t{tile}({r},{c})" if tile >= 0 else f"tiles({r},{c})")
    return labels


def image_layout(model, inputs: MMInputs, row: int, image: Image.Image | None) -> tuple[list[dict], list[dict]]:
    """The view's positions (non-padding tokens of ``row``) and its image panels.

    Returns:
        ``pos``: per kept position ``{"i": position, "t": display text, "k": kind, "n": label}``
        with, for image positions drawn on a panel, ``"p"`` (panel) and ``"b"`` (box as
        fractions of the panel). Kinds: ``text``, ``special``, ``img``, ``nl``, ``pad`` (an image
        position with no pixels to draw, e.g. an all-padding tile patch).
        ``panels``: ``{"name", "png" (base64), "w", "h" (CSS px), "img" (picture rectangle as
        fractions of the panel)}``.

    Raises:
        MMLensError: the row has no image.
    """
    grid = inputs.image_grid
    view = grid.views[row]
    if view is None:
        raise MMLensError(f"batch row {row} has no image: pick a row that holds one.")
    split = _two_panels(view)
    tiled = isinstance(view, TiledGeometry)
    base = view.base if split or tiled else view
    if image is None and isinstance(view, ResizedGeometry):
        raise MMLensError(
            "Qwen2-VL's pixel values are packed patches, not a picture to draw: pass the original image "
            "(image=...) to draw the view on."
        )
    picture = _picture(model, inputs, row, base) if image is None else image.convert("RGB")
    w, h = base.width, base.height
    # Qwen2-VL's resized image and InternVL's views cover the whole original image; their tokens
    # are drawn by their boxes.
    whole = split or tiled or isinstance(view, ResizedGeometry)
    base_extent = (0.0, 0.0, float(w), float(h)) if whole else _view_extent(base)
    gutter = GUTTER if isinstance(view, AnyresGeometry) else 0.0  # InternVL has no newline slots
    extents = [base_extent] + ([(0.0, 0.0, w * (1 + gutter), float(h))] if split else [])
    names = (["thumbnail", "tiles"] if tiled else ["base view", "tiles"]) if split else ["image (as the model sees it)"]
    panels = [_panel(name, picture, ext, w, h, len(extents)) for name, ext in zip(names, extents)]

    tok = model.processor.tokenizer
    special = set(tok.all_special_ids)
    ids = inputs.input_ids[row].tolist()
    labels = token_labels(model, inputs, row)
    kept = inputs.attention_mask[row].bool().nonzero().flatten().tolist()
    # Word-level tokenizers (the shapes model's) carry no word-start marker: space the words.
    spaced = not any(m in labels[i] for i in kept for m in ("▁", "Ġ"))
    pos = []
    for i in kept:
        entry = {"i": i, "t": _display(labels[i]), "n": labels[i]}
        if grid.image_index[row, i] < 0:
            entry["k"] = "special" if ids[i] in special else "text"
            entry["t"] = (" " if spaced and entry["k"] == "text" else "") + entry["t"]
        else:
            entry.update(_image_position(grid, row, i, base, split, extents))
        pos.append(entry)
    if isinstance(view, AnyresGeometry):
        _place_newlines(pos, extents[1])
    return pos, panels


def _two_panels(view: object) -> bool:
    """Whether an image is drawn as a base view (or thumbnail) panel beside a tiles panel."""
    return isinstance(view, AnyresGeometry) or isinstance(view, TiledGeometry) and view.n_tiles > 1


def _image_position(grid, row: int, i: int, base: ViewGeometry | ResizedGeometry, split: bool, extents: list) -> dict:
    kind, r, c = int(grid.kind[row, i]), int(grid.row[row, i]), int(grid.col[row, i])
    if kind == NEWLINE:
        return {"k": "nl", "p": 1}
    # Unclipped: pad-to-square margins get their patches too. InternVL's thumbnail tokens (2×2 patches) take their boxes.
    if kind == BASE and r >= 0 and isinstance(base, ViewGeometry) and not isinstance(grid.views[row], TiledGeometry):
        box = (
            (c * base.patch + base.offset_x) / base.scale_x,
            (r * base.patch + base.offset_y) / base.scale_y,
            ((c + 1) * base.patch + base.offset_x) / base.scale_x,
            ((r + 1) * base.patch + base.offset_y) / base.scale_y,
        )
        return {"k": "img", "p": 0, "b": _fractions(box, extents[0])}
    box = grid.boxes[row, i].tolist()
    if any(math.isnan(v) for v in box):
        return {"k": "pad"}
    panel = int(split and kind != BASE)  # InternVL: thumbnail tokens on the first panel, tiles on the second
    return {"k": "img", "p": panel, "b": _fractions(box, extents[panel])}


def _place_newlines(pos: list[dict], extent: tuple) -> None:
    """Put each newline slot beside the tile-grid row it closes (the tile patches before it)."""
    x0 = (extent[2] / (1 + GUTTER) * (1 + GUTTER / 4)) / extent[2]
    y_prev = 0.0
    row_boxes: list[list[float]] = []
    for entry in pos:
        if entry["k"] == "img" and entry.get("p") == 1:
            row_boxes.append(entry["b"])
        elif entry["k"] == "nl":
            y0 = min((b[1] for b in row_boxes), default=y_prev)
            y1 = max((b[3] for b in row_boxes), default=y_prev)
            if y1 <= y0:  # a row of padding-only patches: a thin slot under the previous one
                y0, y1 = y_prev, min(1.0, y_prev + 0.03)
            entry["b"] = [round(x0, 5), round(y0, 5), 1.0, round(y1, 5)]
            y_prev, row_boxes = y1, []


def _view_extent(view: ViewGeometry) -> tuple[float, float, float, float]:
    """The model input's square in original-image pixels."""
    return (view.offset_x / view.scale_x, view.offset_y / view.scale_y,
            (view.side + view.offset_x) / view.scale_x, (view.side + view.offset_y) / view.scale_y)


def _fractions(box, extent) -> list[float]:
    ex0, ey0, ex1, ey1 = extent
    return [round((box[0] - ex0) / (ex1 - ex0), 5), round((box[1] - ey0) / (ey1 - ey0), 5),
            round((box[2] - ex0) / (ex1 - ex0), 5), round((box[3] - ey0) / (ey1 - ey0), 5)]


def _panel(name: str, picture: Image.Image, extent, w: int, h: int, n_panels: int) -> dict:
    ex0, ey0, ex1, ey1 = extent
    side = PANEL_PX if n_panels == 1 else int(PANEL_PX * 0.85)
    s = side / max(ex1 - ex0, ey1 - ey0)
    scale = min(1.0, PNG_PX / max(picture.size))
    if scale < 1:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.BILINEAR)
    buf = io.BytesIO()
    picture.save(buf, format="PNG", optimize=True)
    rect = [-ex0 / (ex1 - ex0), -ey0 / (ey1 - ey0), w / (ex1 - ex0), h / (ey1 - ey0)]
    return {"name": name, "png": base64.b64encode(buf.getvalue()).decode("ascii"),
            "w": round((ex1 - ex0) * s), "h": round((ey1 - ey0) * s), "img": [round(v, 5) for v in rect]}


def _picture(model, inputs: MMInputs, row: int, base: ViewGeometry) -> Image.Image:
    """The model's base-view input, un-normalised and mapped back onto the original image's frame."""
    views = inputs.image_grid.views
    n = sum(v is not None for v in views[:row])
    if isinstance(views[row], TiledGeometry):  # InternVL: every image's views stacked, its thumbnail last
        n = sum(v.n_views for v in views[:row] if v is not None) + views[row].base_view
    px = inputs.pixel_values[n].detach().float().cpu()
    px = px[0] if px.dim() == 4 else px  # anyres: the base view comes first
    proc = getattr(model.processor, "image_processor", None)
    mean = torch.tensor(getattr(proc, "image_mean", None) or [0.0, 0.0, 0.0]).view(3, 1, 1)
    std = torch.tensor(getattr(proc, "image_std", None) or [1.0, 1.0, 1.0]).view(3, 1, 1)
    arr = ((px * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    scale = min(1.0, PNG_PX / max(base.width, base.height))
    w, h = max(1, round(base.width * scale)), max(1, round(base.height * scale))
    xs = np.floor((np.arange(w) + 0.5) / scale * base.scale_x - base.offset_x).astype(int)
    ys = np.floor((np.arange(h) + 0.5) / scale * base.scale_y - base.offset_y).astype(int)
    out = np.full((h, w, 3), 154, dtype=np.uint8)
    okx, oky = (xs >= 0) & (xs < arr.shape[1]), (ys >= 0) & (ys < arr.shape[0])
    out[np.ix_(oky, okx)] = arr[np.ix_(ys[oky], xs[okx])]
    return Image.fromarray(out)


def _display(label: str) -> str:
    """A token as it reads: word-start markers become spaces, newlines a visible ↵."""
    if label in ("<0x0A>", "\n", "Ċ"):
        return "↵"
    return label.replace("▁", " ").replace("Ġ", " ").replace("Ċ", "↵").replace("\n", "↵")
