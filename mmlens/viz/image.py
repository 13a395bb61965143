"""Heat maps over image patches, drawn on the original image.

Single-view models (LLaVA-1.5) show one square view: a heat map is a ``grid × grid`` array over
its patches, upsampled by undoing the pad or crop. Anyres models (LLaVA-NeXT, LLaVA-OneVision)
show a base view plus tiles; per-position values are painted through each position's pixel box
in the original image (``ImageGrid.boxes``), so base view and tiles both land where they belong.

Figures state their colour scale: one scale and one colour bar per figure by default
(:func:`heat_panels`), so a head that puts 0.01 of its attention on the image looks faint next
to one that puts 0.99 there; per-panel scales are labelled "(own scale)"; an all-zero map is
not painted and says "all zero".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float
from matplotlib.axes import Axes
from matplotlib import colormaps
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from PIL import Image

from mmlens.errors import MMLensError
from mmlens.geometry import BASE, TILE, AnyresGeometry, ResizedGeometry, TiledGeometry, ViewGeometry
from mmlens.inputs import MMInputs

# Which image positions ``position_heat_to_image`` paints (newline slots have no pixels).
VIEW_KINDS = {"all": (BASE, TILE), "base": (BASE,), "tiles": (TILE,)}
# Colour scales of a multi-panel heat-map figure (see :func:`heat_panels`).
SCALES = ("shared", "panel")


def patch_heat(inputs: MMInputs, values: Float[torch.Tensor, " pos"], row: int = 0) -> np.ndarray:
    """Scatter per-position values ``[pos]`` of one batch row onto its ``grid × grid`` patch map.

    For anyres inputs this is the base view's map (tiles and newline slots are left out); use
    :func:`position_heat_to_image` to see every position.
    """
    grid = inputs.image_grid
    g = grid.views[row].grid
    heat = np.zeros((g, g), dtype=np.float32)
    sel = ((grid.row[row] >= 0) & (grid.kind[row] == BASE)).nonzero().flatten()
    heat[grid.row[row, sel].numpy(), grid.col[row, sel].numpy()] = values[sel].detach().float().cpu().numpy()
    return heat


def heat_to_image(inputs: MMInputs, heat: np.ndarray, row: int = 0) -> np.ndarray:
    """Upsample a patch heat map to the original image's pixels, undoing pad or crop.

    For anyres inputs ``heat`` covers the base view (as Grad-CAM's maps do), which shows the
    whole image squashed to the tower's square input.
    """
    view = _single_view(inputs, row)
    w, h = view.width, view.height
    xs = (np.arange(w) + 0.5) * view.scale_x - view.offset_x
    ys = (np.arange(h) + 0.5) * view.scale_y - view.offset_y
    # A map coarser than the patch grid (InternVL's pixel-shuffled tokens) has cells of several
    # patches; Qwen2-VL's view (the resized image) need not be square.
    extent_w, extent_h = view.extent if isinstance(view, ResizedGeometry) else (view.patch * view.grid,) * 2
    n_rows, n_cols = heat.shape
    cols = np.clip((xs // (extent_w / n_cols)).astype(int), 0, n_cols - 1)
    rows = np.clip((ys // (extent_h / n_rows)).astype(int), 0, n_rows - 1)
    return heat[rows[:, None], cols[None, :]]


def position_heat_to_image(
    inputs: MMInputs, values: Float[torch.Tensor, " pos"], row: int = 0, views: str = "all"
) -> np.ndarray:
    """Per-position values ``[pos]`` of one batch row (attention to image positions, saliency,
    knockout effects) as a ``[height, width]`` map over the original image's pixels.

    Single-view inputs: :func:`patch_heat` then :func:`heat_to_image`. Anyres inputs: each pixel
    gets the mean value of the image positions whose patch box holds the pixel's centre — one
    base-view patch and one tile patch for LLaVA-NeXT, possibly several overlapping cells of a
    shrunk OneVision grid. Newline slots have no pixels and are skipped; pixels no position
    covers are 0.

    Args:
        inputs: The prepared inputs the values belong to.
        values: One value per position of the merged sequence (text positions are ignored).
        row: Batch row.
        views: ``"all"``, ``"base"`` (base view only) or ``"tiles"`` (anyres tiles only).

    Raises:
        MMLensError: an unknown ``views``.
    """
    if views not in VIEW_KINDS:
        raise MMLensError(f"views must be one of {sorted(VIEW_KINDS)}, not {views!r}.")
    grid = inputs.image_grid
    view = grid.views[row]
    if not isinstance(view, (AnyresGeometry, TiledGeometry, ResizedGeometry)):
        return heat_to_image(inputs, patch_heat(inputs, values, row), row)
    chosen = torch.isin(grid.kind[row], torch.tensor(VIEW_KINDS[views])) & ~torch.isnan(grid.boxes[row]).any(-1)
    sel = chosen.nonzero().flatten()
    total = np.zeros((view.height, view.width), dtype=np.float64)
    count = np.zeros_like(total)
    vals = values[sel].detach().double().cpu().numpy()
    # Pixel k (centre k + 0.5) lies in [a, b) when ceil(a - 0.5) <= k < ceil(b - 0.5).
    first = np.ceil(grid.boxes[row, sel].numpy() - 0.5).astype(int)
    for (x0, y0, x1, y1), v in zip(first, vals):
        total[y0:y1, x0:x1] += v
        count[y0:y1, x0:x1] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0).astype(np.float32)


def overlay(
    image: Image.Image,
    heat_px: np.ndarray,
    alpha: float = 0.8,
    ax: Axes | None = None,
    title: str = "",
    vmax: float | None = None,
    label: str = "",
) -> Figure:
    """A heat map over the image, with a stated colour scale.

    Values are painted with a colour map whose opacity grows with ``|value|`` (0 leaves the image
    as it is; the colour bar shows the same fading colours). Non-negative maps use ``magma`` on
    ``[0, vmax]``; maps with negative values use ``RdBu_r`` on ``[-vmax, vmax]``. An all-zero map
    is not painted: the panel says "all zero".

    Args:
        image: The original image.
        heat_px: ``[height, width]`` values over the image's pixels (e.g. from
            :func:`position_heat_to_image`).
        alpha: Opacity of the largest value.
        ax: Draw into this axes (a panel of a bigger figure); ``None`` makes a figure with a colour bar.
        title: Panel title.
        vmax: Top of the colour scale, shared by the figure's panels; ``None`` uses this map's own
            ``max |value|``, and a panel drawn into ``ax`` then says "(own scale)" in its title.
        label: Colour bar label (only when ``ax`` is None).
    """
    own = ax is not None and vmax is None
    fig = None
    if ax is None:
        fig = Figure(figsize=(3.6, 3))
        ax = fig.subplots()
    im = _paint(ax, image, heat_px, alpha, _limit(heat_px) if vmax is None else vmax, bool((heat_px < 0).any()))
    ax.set_title(f"{title} (own scale)" if own and title else "own scale" if own else title, fontsize=8)
    if fig is not None:
        fig.colorbar(im, ax=ax, label=label, shrink=0.85, format="%.2g")
    return fig or ax.figure


def heat_panels(
    images: Image.Image | Sequence[Image.Image],
    heats: Sequence[np.ndarray],
    titles: Sequence[str],
    scale: str = "shared",
    label: str = "",
    suptitle: str = "",
    ncols: int | None = None,
    alpha: float = 0.8,
) -> Figure:
    """Several heat maps over images in one figure, with one colour scale or one per panel.

    Args:
        images: One image for every panel, or one per panel.
        heats: ``[height, width]`` maps over each panel's image pixels.
        titles: One title per panel.
        scale: ``"shared"``: one colour scale (the largest ``|value|`` of all panels) and one colour
            bar, so panels compare; ``"panel"``: each panel stretched to its own maximum, with its
            own colour bar and "(own scale)" in its title.
        label: What the values are (colour bar label).
        suptitle: Figure title.
        ncols: Panels per row (default: all in one row, at most 6).
        alpha: Opacity of the largest value.

    Raises:
        MMLensError: an unknown ``scale``, or titles and heats of different lengths.
    """
    if scale not in SCALES:
        raise MMLensError(f"scale must be one of {SCALES}, not {scale!r}.")
    if len(titles) != len(heats):
        raise MMLensError(f"got {len(heats)} heat maps but {len(titles)} titles: give one title per map.")
    images = [images] * len(heats) if isinstance(images, Image.Image) else list(images)
    n = len(heats)
    ncols = ncols or min(n, 6)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(2.6 * ncols + (0.9 if scale == "shared" else 0.6 * ncols), 2.7 * nrows + 0.4))
    axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
    signed = any(bool((h < 0).any()) for h in heats)
    shared = max((_limit(h) for h in heats), default=0.0)
    mappable = None
    for ax, image, heat, title in zip(axes, images, heats, titles):
        vmax = shared if scale == "shared" else _limit(heat)
        im = _paint(ax, image, heat, alpha, vmax, signed)
        if scale == "panel":
            ax.set_title(f"{title} (own scale)", fontsize=8)
            if _limit(heat) > 0:
                fig.colorbar(im, ax=ax, shrink=0.8, format="%.2g")
        else:
            ax.set_title(title, fontsize=8)
            mappable = im
    for ax in axes[n:]:
        ax.set_visible(False)
    if mappable is not None:
        fig.colorbar(mappable, ax=list(axes[:n]), label=label, shrink=0.85, format="%.2g")
    if suptitle or scale == "panel":
        note = "each panel on its own colour scale" if scale == "panel" else ""
        fig.suptitle("\n".join(t for t in (suptitle, note) if t), fontsize=9)
    return fig


def plot_image_attention(
    inputs: MMInputs,
    image: Image.Image,
    pattern_row: Float[torch.Tensor, " pos"],
    row: int = 0,
    title: str = "",
) -> Figure:
    """The last position's attention over image positions as a heat map on the image.

    The row "From Redundancy to Relevance" §3.4 ranks image tokens by (docs/methods.md#truncation).

    The colour bar runs from 0 to the largest attention any pixel gets. Anyres inputs show base
    view and tiles together (see :func:`position_heat_to_image`).
    """
    return overlay(image, position_heat_to_image(inputs, pattern_row, row), title=title, label="attention")


def _limit(heat: np.ndarray) -> float:
    return float(np.abs(heat).max()) if heat.size else 0.0


def _paint(ax: Axes, image: Image.Image, heat: np.ndarray, alpha: float, vmax: float, signed: bool) -> AxesImage:
    """Image, then the heat; returns the heat's image, whose colour map (and so its colour bar)
    carries the opacity: transparent at 0, ``alpha`` at ``±vmax``."""
    ax.imshow(image)
    ax.axis("off")
    top = vmax if vmax > 0 else 1.0
    norm = Normalize(-top, top) if signed else Normalize(0.0, top)
    cmap = _fading("RdBu_r" if signed else "magma", alpha, signed)
    if _limit(heat) == 0:
        ax.text(0.5, 0.5, "all zero", transform=ax.transAxes, ha="center", va="center", fontsize=10,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
        return ax.imshow(np.zeros_like(heat), cmap=cmap, norm=norm, alpha=0.0)
    extent = (-0.5, image.width - 0.5, image.height - 0.5, -0.5)
    return ax.imshow(heat, cmap=cmap, norm=norm, interpolation="nearest", extent=extent)


def _fading(name: str, alpha: float, signed: bool) -> ListedColormap:
    """``name``'s colours with opacity growing linearly with |value| (from the middle when signed)."""
    colours = colormaps[name](np.linspace(0, 1, 256))
    t = np.abs(np.linspace(-1, 1, 256)) if signed else np.linspace(0, 1, 256)
    colours[:, 3] = alpha * t
    return ListedColormap(colours, name=f"{name}_fading")


def _single_view(inputs: MMInputs, row: int) -> ViewGeometry | ResizedGeometry:
    view = inputs.image_grid.views[row]
    if view is None:
        raise MMLensError(f"batch row {row} has no image: pick a row that holds one.")
    return view.base if isinstance(view, (AnyresGeometry, TiledGeometry)) else view
