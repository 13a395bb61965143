"""The figures results draw show the numbers of their tables, never hide a curve, and state n and
their settings (viz takes tables, not results)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmlens.errors import MMLensError
from mmlens.viz import (
    line_style,
    plot_cam,
    plot_cliff,
    plot_disruption,
    plot_flow_metrics,
    plot_hit_rate,
    plot_knockout,
    plot_lens,
    plot_shares,
)
from mmlens.viz.flow import LOG_FLOOR


def labelled(ax):
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def knockout_summary(n_b: int = 3) -> pd.DataFrame:
    rows = [
        (p, f, layer, m, m - 1, m + 1, 3 if p == "A" else n_b)
        for p in ("A", "B")
        for f in ("x", "y")
        for layer, m in enumerate([-5.0, -20.0, 2.0])  # x and y equal: neither may hide the other
    ]
    return pd.DataFrame(rows, columns=["panel", "flow", "layer", "mean", "ci_low", "ci_high", "n"])


def test_knockout_panels_and_lines_follow_the_summary():
    fig = plot_knockout(knockout_summary(), columns=1, window_size=3)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["A (n=3)", "B (n=3)"]
    assert "window of 3 layers" in fig._suptitle.get_text()
    for ax in axes:
        x, y = labelled(ax)
        assert [x.get_label(), y.get_label()] == ["x", "y"]
        np.testing.assert_allclose(x.get_ydata(), [-5.0, -20.0, 2.0])
        np.testing.assert_allclose(y.get_ydata(), x.get_ydata())
        # Equal curves stay visible: different dashes, different hollow markers, the later one smaller.
        assert x.get_linestyle() != y.get_linestyle() and x.get_marker() != y.get_marker()
        assert x.get_markersize() > y.get_markersize() and x.get_markerfacecolor() == "none"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["x", "y"]
    with pytest.raises(MMLensError, match="empty"):
        plot_knockout(knockout_summary().iloc[:0])


def test_knockout_gives_n_per_line_when_flows_differ_or_one_panel():
    summary = knockout_summary()
    summary.loc[(summary["panel"] == "B") & (summary["flow"] == "y"), "n"] = 2
    fig = plot_knockout(summary, columns=2)
    b = fig.axes[1]
    assert b.get_title() == "B (n=2–3)"
    assert [t.get_text() for t in b.get_legend().get_texts()] == ["x (n=3)", "y (n=2)"]
    single = plot_knockout(summary[summary["panel"] == "A"])
    assert [t.get_text() for t in single.legends[0].get_texts()] == ["x (n=3)", "y (n=3)"]


def lens_table() -> pd.DataFrame:
    rows = []
    for sample, scale in enumerate([1.0, 0.5]):
        for b in range(3):
            rows.append(("red", "lower", b, [0.2, 0.6, 0.0][b] * scale))
            rows.append(("red", "capitalised", b, [0.001, 0.1, 0.9][b] * scale))
    return pd.DataFrame(rows, columns=["word", "variant", "boundary", "prob"])


def test_lens_means_n_and_log_scale():
    fig = plot_lens(lens_table(), log=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in labelled(ax)}
    assert set(lines) == {"red (lower, n=2)", "red (capitalised, n=2)"}
    np.testing.assert_allclose(lines["red (capitalised, n=2)"].get_ydata(), [0.00075, 0.075, 0.675])
    # An underflowed 0 is drawn at the floor, not dropped from the log axis.
    np.testing.assert_allclose(lines["red (lower, n=2)"].get_ydata(), [0.15, 0.45, LOG_FLOOR])
    assert lines["red (lower, n=2)"].get_linestyle() == "--" and lines["red (capitalised, n=2)"].get_linestyle() == "-"
    assert plot_lens(lens_table()).axes[0].get_yscale() == "linear"


def test_shares_state_n():
    df = pd.DataFrame({"layer": [0, 0, 0, 0], "group": ["image", "text", "image", "text"], "share": [0.2, 0.8, 0.4, 0.6]})
    fig = plot_shares(df)
    assert "n=2" in fig.axes[0].get_title()


def test_flow_metrics_distinct_styles_and_n():
    rows = [(r, layer, "source", m, 1.0) for r in range(3) for layer in range(2) for m in ("S_sys", "S_img", "S_ins", "S_vv", "S_vt")]
    fig = plot_flow_metrics(pd.DataFrame(rows, columns=["row", "layer", "aggregate", "metric", "value"]))
    left = labelled(fig.axes[0])
    assert [line.get_label() for line in left] == ["S_sys (n=3)", "S_img (n=3)", "S_ins (n=3)"]
    assert len({line.get_marker() for line in left}) == 3 and len({str(line._unscaled_dash_pattern) for line in left}) == 3


def test_line_styles_never_repeat_within_a_figure():
    styles = [line_style(i, 6) for i in range(6)]
    assert len({(str(s["ls"]), s["marker"]) for s in styles}) == 6
    assert [s["ms"] for s in styles] == sorted((s["ms"] for s in styles), reverse=True)


def test_disruption_draws_d_only_when_given():
    per_layer = pd.DataFrame({"flow": ["f"] * 2, "layer": [0, 1], "label_consistency": [1.0, 0.5], "score_consistency": [0.9, 0.4], "n": [4, 4]})
    assert len(plot_disruption(per_layer).axes) == 2
    fig = plot_disruption(per_layer, pd.DataFrame({"layer": [0, 1], "D": [0.1, -0.2]}))
    np.testing.assert_allclose(fig.axes[2].get_lines()[0].get_ydata(), [0.1, -0.2])
    assert labelled(fig.axes[0])[0].get_label() == "f (n=4)"


def test_cam_panels_share_one_scale_and_say_all_zero():
    heat = torch.zeros(3, 3, 3)
    heat[0] = torch.rand(3, 3) * 0.5
    heat[1, 1, 1] = 2.0
    fig = plot_cam(heat, ["layer 0", "layer 1", "layer 2"], suptitle="q → a", label="heat")
    panels, bars = fig.axes[:3], fig.axes[3:]
    assert len(bars) == 1 and bars[0].get_ylabel() == "heat"
    for ax, h in zip(panels[:2], heat[:2]):
        (im,) = ax.images
        np.testing.assert_allclose(im.get_array(), h.numpy())
        assert im.norm.vmax == pytest.approx(2.0)  # the largest value of all panels
    assert [t.get_text() for t in panels[2].texts] == ["all zero"]
    assert [ax.get_title() for ax in panels] == ["layer 0", "layer 1", "layer 2"]
    own = plot_cam(heat, ["a", "b", "c"], scale="panel")
    assert own.axes[0].get_title() == "a (own scale)"


def test_cliff_marks_baseline_cliff_and_settings():
    fig = plot_cliff(pd.DataFrame({"layer": [0, 1, 2], "accuracy": [0.2, 0.9, 1.0]}), baseline=1.0, cliff=2, n=8, keep=0)
    ax = fig.axes[0]
    lines = ax.get_lines()
    np.testing.assert_allclose(lines[0].get_ydata(), [0.2, 0.9, 1.0])
    assert lines[1].get_ydata()[0] == 1.0 and lines[2].get_xdata()[0] == 2
    assert lines[0].get_label() == "truncated from K on (n=8)" and "all image tokens removed" in ax.get_title()


def test_hit_rate_states_n_and_layers_without_a_map():
    per_layer = pd.DataFrame({"layer": [0, 1, 2], "hit_rate": [0.5, 0.75, np.nan], "chance": [0.2] * 3, "n": [4, 4, 0]})
    ax = plot_hit_rate(per_layer).axes[0]
    assert ax.get_lines()[0].get_label() == "hit rate (n=4)"
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [0.5, 0.75, np.nan])
    assert [(t.get_text(), t.get_position()[0]) for t in ax.texts] == [("all maps zero", 2)]
