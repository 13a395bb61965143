"""Figures of the gradient analyses: flow metrics, D_l, Grad-CAM overlays."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from mmlens.analysis import CamResult
from mmlens.inputs import MMInputs
from mmlens.viz.image import heat_to_image, overlay


def plot_flow_metrics(df: pd.DataFrame, aggregate: str = "source") -> Figure:
    """Mean S_sys/S_img/S_ins (left) and S_vv/S_vt (right) per layer (seed 003 Fig. 2–3)."""
    part = df[df["aggregate"] == aggregate].groupby(["metric", "layer"])["value"].mean().reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, names in zip(axes, (("S_sys", "S_img", "S_ins"), ("S_vv", "S_vt"))):
        for name in names:
            g = part[part["metric"] == name]
            ax.plot(g["layer"], g["value"], marker="o", ms=3, label=name)
        ax.set_xlabel("layer")
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"saliency ({aggregate} aggregation)")
    fig.tight_layout()
    return fig


def plot_disruption(per_layer: pd.DataFrame, d: pd.DataFrame | None = None) -> Figure:
    """Label and score consistency per layer for each disrupted flow, and D_l (seed 003 Fig. 4–5)."""
    n = 3 if d is not None else 2
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.3))
    for flow, g in per_layer.groupby("flow"):
        axes[0].plot(g["layer"], g["label_consistency"], marker="o", ms=3, label=flow)
        axes[1].plot(g["layer"], g["score_consistency"], marker="o", ms=3, label=flow)
    axes[0].set_ylabel("label consistency")
    axes[1].set_ylabel("score consistency (top-5 Jaccard)")
    if d is not None:
        axes[2].plot(d["layer"], d["D"], marker="o", ms=3, color="k")
        axes[2].axhline(0, color="grey", lw=0.5)
        axes[2].set_ylabel("D = log(E_vv / E_vt)")
    for ax in axes:
        ax.set_xlabel("layer")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_cam(result: CamResult, inputs: MMInputs, image: Image.Image, row: int = 0) -> Figure:
    """One overlay per layer: the heat map upsampled to the original image (seed 000 Fig. 3–4)."""
    n = len(result.layers)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.8), squeeze=False)
    for ax, i in zip(axes[0], range(n)):
        heat = heat_to_image(inputs, result.heat[row, i].numpy(), row)
        overlay(image, heat, ax=ax, title=f"{result.tower} layer {result.layers[i]}")
    fig.suptitle(f"{inputs.prompts[row].split(chr(10))[-1][:60]} → {result.answers[row]}", fontsize=8)
    fig.tight_layout()
    return fig
