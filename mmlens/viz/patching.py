"""Patching heat maps: layer × position, with image positions painted on the image per layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from mmlens.inputs import MMInputs
from mmlens.viz.image import position_heat_to_image

MAX_TICKS = 60
"""Above this many columns, only every k-th label is written."""


def _ticks(ax: Any, labels: Sequence[str]) -> None:
    step = max(1, int(np.ceil(len(labels) / MAX_TICKS)))
    idx = list(range(0, len(labels), step))
    ax.set_xticks(idx)
    ax.set_xticklabels([labels[i] for i in idx], rotation=90, fontsize=6)


def plot_patching(
    values: Float[torch.Tensor, "layer column"],
    layers: Sequence[int],
    labels: Sequence[str],
    *,
    positions: Sequence[int] | None = None,
    inputs: MMInputs | None = None,
    image: Any = None,
    title: str = "",
    xlabel: str = "position",
    cmap: str = "RdBu_r",
    max_layers: int = 8,
    label: str = "effect",
) -> Figure:
    """Heat map of patching effects, one row per layer.

    With ``inputs``, ``positions`` and the clean ``image``, text positions form the heat map
    (labelled by their tokens) and image positions are painted on the image, one panel per
    layer (at most ``max_layers``, evenly spaced); all panels share one colour scale, symmetric
    around 0, and one colour bar.

    Args:
        values: ``[layer, column]`` effects (normalised patching values).
        layers: Layer of each row.
        labels: Label of each column.
        positions: Sequence position of each column (needed to paint the image).
        inputs: The inputs the positions belong to (their image geometry).
        image: The original image.
        title: Figure title.
        xlabel: Name of the column axis.
        cmap: A diverging colour map.
        max_layers: Most image panels drawn.
        label: Colour bar label.

    Returns:
        A matplotlib figure (not registered with pyplot).
    """
    vals = values.detach().float().cpu().numpy()
    finite = np.abs(vals[np.isfinite(vals)])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    norm = Normalize(-vmax, vmax)
    paint = image is not None and inputs is not None and positions is not None
    is_image = np.zeros(len(labels), dtype=bool)
    if paint:
        img_pos = inputs.image_grid.image_index[0] >= 0
        is_image = img_pos[torch.tensor(list(positions), dtype=torch.long)].numpy()
        paint = bool(is_image.any())
    fig = Figure(figsize=(max(6.0, 0.12 * int((~is_image).sum()) + 2), 3.0 + (2.2 if paint else 0)), layout="constrained")
    text_cols = np.flatnonzero(~is_image)
    if paint:
        shown = np.unique(np.linspace(0, len(layers) - 1, min(max_layers, len(layers))).round().astype(int))
        grid = fig.add_gridspec(2, len(shown), height_ratios=[1.2, 1])
        ax = fig.add_subplot(grid[0, :])
    else:
        ax = fig.add_subplot()
    mappable = ax.imshow(vals[:, text_cols], aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels([str(layer) for layer in layers], fontsize=7)
    ax.set_ylabel("layer")
    ax.set_xlabel(f"{xlabel} (text)" if paint else xlabel)
    _ticks(ax, [labels[i] for i in text_cols])
    if paint:
        n_pos = inputs.input_ids.shape[1]
        cols = np.flatnonzero(is_image)
        where = torch.tensor([positions[i] for i in cols], dtype=torch.long)
        for k, row in enumerate(shown):
            per_pos = torch.zeros(n_pos)
            per_pos[where] = torch.from_numpy(vals[row, cols]).float()
            heat = position_heat_to_image(inputs, per_pos)
            panel = fig.add_subplot(grid[1, k])
            panel.imshow(image)
            panel.imshow(heat, cmap=cmap, norm=norm, alpha=0.65, extent=(0, image.width, image.height, 0))
            panel.set_title(f"layer {layers[row]}", fontsize=8)
            panel.axis("off")
    fig.colorbar(mappable, ax=fig.axes, shrink=0.8, label=label)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_region_means(table: Any, regions: Sequence[str], title: str = "") -> Figure:
    """Layer × region heat maps of a mean value, one panel per hook, one shared colour scale.

    Args:
        table: A DataFrame with columns ``hook``, ``layer``, ``region`` and ``value``.
        regions: Column order (regions absent from the table are left out).
        title: Figure title.
    """
    hooks = list(dict.fromkeys(table["hook"])) if len(table) else []
    fig = Figure(figsize=(1.2 + 2.6 * max(1, len(hooks)), 3.2), layout="constrained")
    if not hooks:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no sample patched", ha="center", va="center")
        ax.set_axis_off()
        return fig
    cols = [r for r in regions if r in set(table["region"])]
    top = max(1e-9, float(np.nanmax(np.abs(table["value"].to_numpy(dtype=float)))))
    norm = Normalize(-top, top)
    axes = fig.subplots(1, len(hooks), squeeze=False)[0]
    for ax, hook in zip(axes, hooks):
        grid = table[table["hook"] == hook].pivot_table(index="layer", columns="region", values="value").reindex(columns=cols)
        im = ax.imshow(grid.to_numpy(dtype=float), cmap="RdBu_r", norm=norm, aspect="auto", origin="lower")
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels(cols, rotation=45, fontsize=8)
        ax.set_yticks(range(len(grid.index)))
        ax.set_yticklabels([str(v) for v in grid.index], fontsize=8)
        ax.set_title(hook, fontsize=9)
        ax.set_xlabel("region")
    axes[0].set_ylabel("layer")
    fig.colorbar(im, ax=list(axes), label="mean value (1: clean restored)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
