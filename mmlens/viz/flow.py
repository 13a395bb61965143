"""Figures of the information-flow studies: knockout curves, lens curves, attention shares,
accuracy and the cliff layer.

Every function takes tidy tables (the ``to_dataframe()``/``summary()`` of a result) and returns a
``matplotlib.figure.Figure`` that is not registered with pyplot; results call these from ``plot()``.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mmlens.errors import MMLensError
from mmlens.viz.styles import line_style

LOG_FLOOR = 1e-10
"""Smallest probability a log-scale lens plot draws (lower values, e.g. an underflowed 0, sit on it)."""


def plot_knockout(summary: pd.DataFrame, columns: int = 4, window_size: int | None = None) -> Figure:
    """Relative change (%) of the predicted token's probability per layer, one line per flow with
    its 95% bootstrap band; one panel per value of ``panel`` ("Cross-modal Information Flow"
    Fig. 2–4), ``columns`` panels a row, one legend for all panels.

    Every flow has its own colour, dash pattern and hollow marker (see
    :func:`~mmlens.viz.styles.line_style`), so flows with equal values stay visible. Each panel
    title gives n, the samples behind each line (a panel whose flows differ in n gets its own
    legend with n per line); the figure title gives the window size.

    Args:
        summary: Columns ``panel``, ``flow``, ``layer``, ``mean``, ``ci_low``, ``ci_high``, ``n``
            (a knockout summary per panel, as ``KnockoutResult.plot`` builds it).
        columns: Panels per row.
        window_size: Layers per knockout window (shown in the title; None: not stated).

    Raises:
        MMLensError: an empty table.
    """
    if summary.empty:
        raise MMLensError("the knockout result is empty: were all samples filtered out (filter_correct)?")
    keys = list(dict.fromkeys(summary["panel"]))
    cols = min(columns, len(keys))
    rows = -(-len(keys) // cols)
    fig = Figure(figsize=(max(6.0, 4 * cols), 3.2 * rows + 1.2))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    flows = sorted(summary["flow"].unique())
    styles = {flow: line_style(i, len(flows)) for i, flow in enumerate(flows)}
    for ax, key in zip(axes.flat, keys):
        part = summary[summary["panel"] == key]
        ns = part.groupby("flow")["n"].max()
        uniform = ns.nunique() == 1
        for flow, g in part.groupby("flow"):
            label = flow if uniform else f"{flow} (n={ns[flow]})"
            ax.plot(g["layer"], g["mean"], label=label, **styles[flow])
            ax.fill_between(g["layer"], g["ci_low"], g["ci_high"], color=styles[flow]["color"], alpha=0.12, lw=0)
        ax.axhline(0, color="grey", lw=0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(f"{key} (n={ns.iloc[0]})" if uniform else f"{key} (n={ns.min()}–{ns.max()})", fontsize=10)
        ax.set_xlabel("layer (window centre)")
        if not uniform:
            ax.legend(fontsize=6)
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("Δ p(prediction) %")
    per_flow = summary.groupby(["flow", "panel"])["n"].max().groupby("flow").agg(["min", "max"])
    labels = [f"{f} (n={per_flow.loc[f, 'min']})" if len(keys) == 1 else f for f in flows]
    handles = [Line2D([], [], **styles[f]) for f in flows]
    ncol = min(len(labels), 6 if cols > 1 else 3)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    window = f"window of {window_size} layer{'s' if window_size != 1 else ''}" if window_size else "layer window"
    fig.suptitle(f"Attention knockout, {window} centred on each layer\nmean and 95% bootstrap CI over n samples", fontsize=9)
    legend_rows = -(-len(labels) // ncol)
    fig.tight_layout(rect=(0, (0.05 if rows > 1 else 0.08) * legend_rows, 1, 1))
    return fig


def plot_lens(df: pd.DataFrame, log: bool = False) -> Figure:
    """Probability of each tracked word per layer boundary, one colour per word, lower-case
    dashed, capitalised solid ("Cross-modal Information Flow" Fig. 6); averaged over rows, n in
    the legend.

    Args:
        df: Columns ``word``, ``variant``, ``boundary``, ``prob`` (a logit-lens table; one row per
            input, word variant and boundary).
        log: Log probability scale, so values far below 0.01 stay visible (values under
            :data:`LOG_FLOOR` are drawn at the floor).
    """
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    grouped = df.groupby(["word", "variant", "boundary"], sort=True)["prob"]
    mean = grouped.mean().reset_index().assign(n=grouped.size().to_numpy())
    words = list(dict.fromkeys(mean["word"]))
    for (word, variant), g in mean.groupby(["word", "variant"], sort=True):
        style = line_style(words.index(word), len(words))
        lower = variant == "lower"
        style.update(ls="--" if lower else "-", marker="s" if lower else "o", ms=style["ms"] - (1.5 if lower else 0))
        y = g["prob"].clip(lower=LOG_FLOOR) if log else g["prob"]
        ax.plot(g["boundary"], y, label=f"{word} ({variant}, n={g['n'].max()})", **style)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer boundary (0 = embeddings)")
    if log:
        ax.set_yscale("log")
        ax.set_ylabel("probability at last position (log)")
    else:
        ax.set_ylabel("probability at last position")
    ax.set_title("Logit lens: mean probability over n inputs", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_shares(df: pd.DataFrame) -> Figure:
    """Stacked attention share of each group per layer ("From Redundancy to Relevance"
    Fig. 2), averaged over rows (n in the title).

    Args:
        df: Columns ``layer``, ``group``, ``share`` (an attention-share table; one row per input,
            layer and group).
    """
    grouped = df.groupby(["layer", "group"])["share"]
    table = grouped.mean().unstack("group")
    n = int(grouped.size().max())
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    ax.stackplot(table.index, *[table[c] for c in table.columns], labels=list(table.columns), alpha=0.85)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer")
    ax.set_ylabel("attention share of the last position")
    ax.set_ylim(0, 1)
    ax.set_title(f"Attention share (mean over heads and n={n} inputs)", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()  # top group first, as stacked; outside the data
    ax.legend(handles[::-1], labels[::-1], fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    return fig


def plot_cliff(
    curve: pd.DataFrame, baseline: float, cliff: int | None = None, n: int | None = None, keep: int | None = None
) -> Figure:
    """Accuracy when image tokens are truncated from layer K on, against K, with the untruncated
    accuracy dashed and the cliff layer marked ("From Redundancy to Relevance" Fig. 5).

    Args:
        curve: Columns ``layer``, ``accuracy``.
        baseline: Accuracy without truncation.
        cliff: The cliff layer, marked with a vertical line (None: not marked).
        n: Samples behind each accuracy (shown in the legend when given).
        keep: Image tokens kept from K on (shown in the title when given).
    """
    fig = Figure(figsize=(5, 3.6))
    ax = fig.subplots()
    count = f" (n={n})" if n is not None else ""
    ax.plot(curve["layer"], curve["accuracy"], label=f"truncated from K on{count}", **line_style(0))
    ax.axhline(baseline, color="grey", ls="--", label=f"no truncation{count}")
    if cliff is not None:
        ax.axvline(cliff, color="C3", lw=0.8, ls=":", label=f"cliff layer {cliff}")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer K (image truncated from K on)")
    ax.set_ylabel("accuracy")
    kept = "all image tokens removed" if keep == 0 else f"{keep} image tokens kept" if keep else ""
    ax.set_title("Information-flow cliff" + (f": {kept}" if kept else ""), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_accuracy(summary: pd.DataFrame) -> Figure:
    """Mean score per task, one bar per policy side by side.

    Args:
        summary: Columns ``policy``, ``task``, ``mean`` (an evaluation summary).
    """
    table = summary.pivot_table(index="task", columns="policy", values="mean", sort=False)
    fig = Figure(figsize=(max(4, 1.2 * len(table) + 2), 3.5))
    ax = fig.subplots()
    width = 0.8 / max(1, len(table.columns))
    for i, policy in enumerate(table.columns):
        ax.bar([j + i * width for j in range(len(table))], table[policy], width=width, label=str(policy))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(table))], [str(t) for t in table.index], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean score")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
