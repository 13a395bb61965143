"""Figures of the information-flow studies: knockout curves, lens curves, attention shares."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from mmlens.analysis import KnockoutResult, LensResult, ShareResult
from mmlens.errors import MMLensError


def plot_knockout(result: KnockoutResult, by: str | None = "task", columns: int = 4) -> Figure:
    """Relative change (%) of the predicted token's probability per layer, one line per flow with
    its 95% bootstrap band; one panel per value of ``by`` (seed 002 Fig. 2–4), ``columns`` panels
    a row, one legend for all panels."""
    df = result.df
    if df.empty:
        raise MMLensError("the knockout result is empty: were all samples filtered out (filter_correct)?")
    keys = sorted(df[by].unique()) if by and by in df else [None]
    cols = min(columns, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows + 0.6), squeeze=False, sharey=True)
    colours = {flow: f"C{i}" for i, flow in enumerate(sorted(df["flow"].unique()))}
    for ax, key in zip(axes.flat, keys):
        part = KnockoutResult(df if key is None else df[df[by] == key]).summary()
        for flow, g in part.groupby("flow"):
            ax.plot(g["layer"], g["mean"], marker="o", ms=3, color=colours[flow], label=flow)
            ax.fill_between(g["layer"], g["ci_low"], g["ci_high"], color=colours[flow], alpha=0.15)
        ax.axhline(0, color="grey", lw=0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
        n = part.groupby("flow")["n"].max().max() if "n" in part else None
        title = str(key) if key is not None else "all samples"
        ax.set_title(f"{title} (n={n})" if n is not None else title, fontsize=10)
        ax.set_xlabel("layer (window centre)")
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("Δ p(prediction) %")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if rows > 1 else 0.1, 1, 1))
    return fig


def plot_lens(result: LensResult | pd.DataFrame) -> Figure:
    """Probability of each tracked word per layer boundary, lower-case dashed, capitalised solid
    (seed 002 Fig. 6); averaged over rows."""
    df = result.to_dataframe() if isinstance(result, LensResult) else result
    fig, ax = plt.subplots(figsize=(5, 3.5))
    mean = df.groupby(["word", "variant", "boundary"], sort=True)["prob"].mean().reset_index()
    for (word, variant), g in mean.groupby(["word", "variant"]):
        ax.plot(g["boundary"], g["prob"], ls="-" if variant == "capitalised" else "--", label=f"{word} ({variant})")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer boundary (0 = embeddings)")
    ax.set_ylabel("probability at last position")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_shares(result: ShareResult | pd.DataFrame) -> Figure:
    """Stacked attention share of each group per layer (seeds 000/001 Fig. 2)."""
    df = result.to_dataframe() if isinstance(result, ShareResult) else result
    table = df.groupby(["layer", "group"])["share"].mean().unstack("group")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.stackplot(table.index, *[table[c] for c in table.columns], labels=list(table.columns), alpha=0.85)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer")
    ax.set_ylabel("attention share of the last position")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig
