"""Figures of the gradient analyses: flow metrics, disruption and D_l, Grad-CAM maps and hit rate.

Every function takes tidy tables or tensors (plus the inputs' geometry for overlays) and returns a
``matplotlib.figure.Figure`` that is not registered with pyplot; results call these from ``plot()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from PIL import Image

from mmlens.errors import MMLensError
from mmlens.inputs import MMInputs
from mmlens.viz.image import SCALES, heat_panels, heat_to_image
from mmlens.viz.styles import line_style


def plot_flow_metrics(df: pd.DataFrame, aggregate: str = "source") -> Figure:
    """Mean S_sys/S_img/S_ins (left) and S_vv/S_vt (right) per layer ("Unraveling the Shift" Fig. 2–3).

    Each metric has its own colour, dash pattern and hollow marker, so equal curves stay
    visible; the legend gives n, the inputs behind each mean.

    Args:
        df: Columns ``aggregate``, ``metric``, ``layer``, ``value`` (a saliency table; one row per
            input, aggregation, metric and layer).
        aggregate: ``"source"`` or ``"receiving"``: which aggregation to draw.
    """
    grouped = df[df["aggregate"] == aggregate].groupby(["metric", "layer"])["value"]
    part = grouped.mean().reset_index().assign(n=grouped.size().to_numpy())
    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    for ax, names in zip(axes, (("S_sys", "S_img", "S_ins"), ("S_vv", "S_vt"))):
        for i, name in enumerate(names):
            g = part[part["metric"] == name]
            ax.plot(g["layer"], g["value"], label=f"{name} (n={g['n'].max()})", **line_style(i, len(names)))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("layer")
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"saliency ({aggregate} aggregation)")
    axes[0].set_title("flows into the last position", fontsize=9)
    axes[1].set_title("flows out of the image", fontsize=9)
    fig.tight_layout()
    return fig


def plot_disruption(per_layer: pd.DataFrame, d: pd.DataFrame | None = None) -> Figure:
    """Label and score consistency per layer for each disrupted flow, and D_l ("Unraveling the
    Shift" Fig. 4–5).

    Args:
        per_layer: Columns ``flow``, ``layer``, ``label_consistency``, ``score_consistency`` (and
            ``n``, the samples per point, shown in the legend when present).
        d: Columns ``layer``, ``D`` (drawn in a third panel when given).
    """
    n = 3 if d is not None else 2
    fig = Figure(figsize=(4.2 * n, 3.4))
    axes = fig.subplots(1, n)
    flows = list(dict.fromkeys(sorted(per_layer["flow"])))
    for flow, g in per_layer.groupby("flow"):
        label = f"{flow} (n={g['n'].max()})" if "n" in g else flow
        style = line_style(flows.index(flow), len(flows))
        axes[0].plot(g["layer"], g["label_consistency"], label=label, **style)
        axes[1].plot(g["layer"], g["score_consistency"], label=label, **style)
    axes[0].set_ylabel("label consistency")
    axes[1].set_ylabel("score consistency (top-5 Jaccard)")
    if d is not None:
        axes[2].plot(d["layer"], d["D"], marker="o", ms=4, mfc="none", color="k")
        axes[2].axhline(0, color="grey", lw=0.5)
        axes[2].set_ylabel("D = log(E_vv / E_vt)")
    for ax in axes:
        ax.set_xlabel("layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_cam(
    heat: Float[torch.Tensor, "layer grid_h grid_w"],
    titles: Sequence[str],
    inputs: MMInputs | None = None,
    image: Image.Image | None = None,
    row: int = 0,
    suptitle: str = "",
    scale: str = "shared",
    label: str = "Grad-CAM heat",
) -> Figure:
    """One panel per layer: the heat map upsampled to the original image when ``inputs`` and
    ``image`` are given ("From Redundancy to Relevance (v1)" Fig. 3–4), else on the patch grid.

    All panels share one colour scale and one colour bar by default (see
    :func:`~mmlens.viz.image.heat_panels`); all-zero maps say so.

    Args:
        heat: One batch row's maps, ``[layer, grid_h, grid_w]``.
        titles: One title per layer.
        inputs: The prepared inputs the maps belong to (their geometry undoes pad or crop).
        image: The original image.
        row: Batch row of ``inputs``.
        suptitle: Figure title.
        scale: ``"shared"`` (one colour bar) or ``"panel"`` (each map on its own scale, labelled).
        label: What the values are (colour bar label).
    """
    maps = [h.detach().float().cpu().numpy() for h in heat]
    if inputs is not None and image is not None:
        pixels = [heat_to_image(inputs, m, row) for m in maps]
        return heat_panels(image, pixels, list(titles), scale=scale, label=label, suptitle=suptitle, ncols=min(len(maps), 8))
    return _grid_panels(maps, list(titles), scale, label, suptitle)


def _grid_panels(maps: list[np.ndarray], titles: list[str], scale: str, label: str, suptitle: str) -> Figure:
    """Maps on the patch grid (no image to draw on): an opaque colour map, one scale and colour
    bar for all panels (``"shared"``) or one per panel (``"panel"``, titles say so)."""
    if scale not in SCALES:
        raise MMLensError(f"scale must be one of {SCALES}, not {scale!r}.")
    signed = any(bool((m < 0).any()) for m in maps)
    shared = max(float(np.abs(m).max()) for m in maps)
    fig = Figure(figsize=(2.3 * len(maps) + 1.2, 2.9))
    axes = list(fig.subplots(1, len(maps), squeeze=False)[0])
    for ax, m, title in zip(axes, maps, titles):
        top = (shared if scale == "shared" else float(np.abs(m).max())) or 1.0
        im = ax.imshow(m, cmap="RdBu_r" if signed else "magma", vmin=-top if signed else 0.0, vmax=top)
        ax.set_title(title if scale == "shared" else f"{title} (own scale)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if not m.any():
            ax.text(0.5, 0.5, "all zero", transform=ax.transAxes, ha="center", va="center", fontsize=10,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
        elif scale == "panel":
            fig.colorbar(im, ax=ax, shrink=0.8, format="%.2g")
    if scale == "shared":
        fig.colorbar(im, ax=axes, label=label, shrink=0.85, format="%.2g")
    fig.suptitle(suptitle, fontsize=8)
    return fig


def plot_hit_rate(per_layer: pd.DataFrame) -> Figure:
    """Share of samples whose heat-map peak lies on a named object, per layer, against chance.

    Args:
        per_layer: Columns ``layer``, ``hit_rate``, ``chance`` (and ``n``, the samples with a
            non-zero map per layer, shown in the legend when present; layers where it is 0 say
            "all maps zero").
    """
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    count = ""
    if "n" in per_layer:
        n = per_layer.loc[per_layer["n"] > 0, "n"]
        count = f" (n={n.min()})" if n.nunique() == 1 else f" (n={n.min()}–{n.max()})" if len(n) else ""
        for layer in per_layer.loc[per_layer["n"] == 0, "layer"]:
            ax.text(layer, 0.6, "all maps zero", rotation=90, ha="center", va="center", fontsize=7, color="grey")
    ax.plot(per_layer["layer"], per_layer["hit_rate"], label=f"hit rate{count}", **line_style(0))
    ax.plot(per_layer["layer"], per_layer["chance"], ls="--", color="grey", label="chance (random peak)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer")
    ax.set_ylabel("peak on a named object")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
