"""Figures of the information-flow studies: knockout curves, lens curves, attention shares."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mmlens.analysis import KnockoutResult, LensResult, ShareResult  # noqa: E402
from mmlens.errors import MMLensError  # noqa: E402


def plot_knockout(result: KnockoutResult, by: str | None = "task") -> Figure:
    """Relative change (%) of the predicted token's probability per layer, one line per flow with
    its 95% bootstrap band; one panel per value of ``by`` (seed 002 Fig. 2–4)."""
    df = result.df
    if df.empty:
        raise MMLensError("the knockout result is empty: were all samples filtered out (filter_correct)?")
    keys = sorted(df[by].unique()) if by and by in df else [None]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False, sharey=True)
    for ax, key in zip(axes[0], keys):
        part = KnockoutResult(df if key is None else df[df[by] == key]).summary()
        for flow, g in part.groupby("flow"):
            ax.plot(g["layer"], g["mean"], label=flow)
            ax.fill_between(g["layer"], g["ci_low"], g["ci_high"], alpha=0.2)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(str(key) if key is not None else "all samples")
        ax.set_xlabel("layer (window centre)")
    axes[0][0].set_ylabel("relative change of p(prediction) %")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_lens(result: LensResult | pd.DataFrame) -> Figure:
    """Probability of each tracked word per layer boundary, lower-case dashed, capitalised solid
    (seed 002 Fig. 6); averaged over rows."""
    df = result.to_dataframe() if isinstance(result, LensResult) else result
    fig, ax = plt.subplots(figsize=(5, 3.5))
    mean = df.groupby(["word", "variant", "boundary"], sort=True)["prob"].mean().reset_index()
    for (word, variant), g in mean.groupby(["word", "variant"]):
        ax.plot(g["boundary"], g["prob"], ls="-" if variant == "capitalised" else "--", label=f"{word} ({variant})")
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
    ax.set_xlabel("layer")
    ax.set_ylabel("attention share of the last position")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig
