"""Heat maps over image patches, drawn on the original image.

Single-view models (LLaVA-1.5) show one square view: a heat map is a ``grid × grid`` array over
its patches, upsampled by undoing the pad or crop. Anyres models (LLaVA-NeXT, LLaVA-OneVision)
show a base view plus tiles; per-position values are painted through each position's pixel box
in the original image (``ImageGrid.boxes``), so base view and tiles both land where they belong.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from PIL import Image

from mmlens.errors import MMLensError
from mmlens.geometry import ViewGeometry
from mmlens.geometry_anyres import BASE, TILE, AnyresGeometry
from mmlens.inputs import MMInputs

# Which image positions ``position_heat_to_image`` paints (newline slots have no pixels).
VIEW_KINDS = {"all": (BASE, TILE), "base": (BASE,), "tiles": (TILE,)}


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
    cols = np.clip((xs // view.patch).astype(int), 0, view.grid - 1)
    rows = np.clip((ys // view.patch).astype(int), 0, view.grid - 1)
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
    if not isinstance(view, AnyresGeometry):
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


def overlay(image: Image.Image, heat_px: np.ndarray, alpha: float = 0.4, ax=None, title: str = "") -> Figure:
    """The heat map (max-normalised, jet colour map) over the image."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(image)
    norm = heat_px / heat_px.max() if heat_px.max() > 0 else heat_px
    ax.imshow(norm, cmap="jet", alpha=alpha, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return fig or ax.figure


def plot_image_attention(
    inputs: MMInputs, image: Image.Image, pattern_row: Float[torch.Tensor, " pos"], row: int = 0, title: str = ""
) -> Figure:
    """The last position's attention over image positions as a heat map on the image (seed 000 Fig. 2).

    Anyres inputs show base view and tiles together (see :func:`position_heat_to_image`).
    """
    return overlay(image, position_heat_to_image(inputs, pattern_row, row), title=title)


def _single_view(inputs: MMInputs, row: int) -> ViewGeometry:
    view = inputs.image_grid.views[row]
    if view is None:
        raise MMLensError(f"batch row {row} has no image: pick a row that holds one.")
    return view.base if isinstance(view, AnyresGeometry) else view
