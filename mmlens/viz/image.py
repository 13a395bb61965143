"""Heat maps over image patches, drawn on the original image."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from mmlens.inputs import MMInputs  # noqa: E402


def patch_heat(inputs: MMInputs, values: torch.Tensor, row: int = 0) -> np.ndarray:
    """Scatter per-position values ``[pos]`` of one batch row onto its ``grid × grid`` patch map."""
    grid = inputs.image_grid
    g = grid.views[row].grid
    heat = np.zeros((g, g), dtype=np.float32)
    sel = (grid.row[row] >= 0).nonzero().flatten()
    heat[grid.row[row, sel].numpy(), grid.col[row, sel].numpy()] = values[sel].detach().float().cpu().numpy()
    return heat


def heat_to_image(inputs: MMInputs, heat: np.ndarray, row: int = 0) -> np.ndarray:
    """Upsample a patch heat map to the original image's pixels, undoing pad or crop."""
    view = inputs.image_grid.views[row]
    w, h = view.width, view.height
    xs = (np.arange(w) + 0.5) * view.scale_x - view.offset_x
    ys = (np.arange(h) + 0.5) * view.scale_y - view.offset_y
    cols = np.clip((xs // view.patch).astype(int), 0, view.grid - 1)
    rows = np.clip((ys // view.patch).astype(int), 0, view.grid - 1)
    return heat[rows[:, None], cols[None, :]]


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


def plot_image_attention(inputs: MMInputs, image: Image.Image, pattern_row: torch.Tensor, row: int = 0, title: str = "") -> Figure:
    """The last position's attention over image positions as a heat map on the image (seed 000 Fig. 2)."""
    return overlay(image, heat_to_image(inputs, patch_heat(inputs, pattern_row, row), row), title=title)
