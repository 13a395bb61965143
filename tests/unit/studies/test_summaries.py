"""The study summaries' verdicts: an interval that covers 0 is "no effect", never a claim."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmlens.studies.summaries import cam_summary, disruption_summary, mean_ci, samples_lines, skipped_text
from tests.unit.test_cli_summaries import table


def test_mean_ci_is_a_percentile_bootstrap_of_the_mean():
    x = np.array([0.0, 1.0, 1.0, 1.0])
    mean, low, high = mean_ci(x, n_boot=2000, seed=3)
    boots = np.random.default_rng(3).choice(x, size=(2000, 4), replace=True).mean(1)  # the same draws, by hand
    assert mean == 0.75 and (low, high) == tuple(np.percentile(boots, [2.5, 97.5]))
    assert mean_ci(np.array([2.0, 2.0, 2.0])) == (2.0, 2.0, 2.0)
    assert np.isnan(mean_ci(np.array([0.5]))[1])


def test_skipped_and_sample_lines():
    assert skipped_text(2, 5, "no boxes") == "skipped: 2 of 5 samples (no boxes)"
    assert skipped_text(0, 1, "no boxes") == "skipped: none of 1 sample"
    assert samples_lines(5, {"no boxes": 2, "other": 0}, 1)[0] == (
        "Samples: n = 3 used of 5; skipped: 2 of 5 samples (no boxes). Before that, --lenient skipped 1 malformed "
        "record(s) of the data (listed in skipped.csv).")  # fmt: skip


def test_cam_verdicts_follow_the_interval_of_hit_minus_chance():
    rows = [(f"s{i}", "T", 0, 1.0, 0.25) for i in range(6)]  # always on the object: above chance
    rows += [(f"s{i}", "T", 1, float(i % 2), 0.5) for i in range(6)]  # half the time with chance 0.5: no effect
    rows += [(f"s{i}", "T", 2, 0.0, 0.25) for i in range(5)] + [("s5", "T", 2, float("nan"), 0.25)]  # below; one zero map
    hits = pd.DataFrame(rows, columns=["sample", "task", "layer", "hit", "chance"])
    per_layer = hits.groupby("layer").agg(hit_rate=("hit", "mean"), chance=("chance", "mean")).round(3).reset_index()
    summary = cam_summary(hits, per_layer.rename(columns={"hit_rate": "hit rate"}), n=8, overlays=[])
    assert "Samples: n = 6 used of 8; skipped: 2 of 8 samples (no box of an object the question names)." in summary
    got = table(summary, "## Hit rate per layer")
    assert got["verdict"].tolist() == ["above chance", "no effect (CI covers 0)", "below chance"]
    assert got["hit − chance"].tolist() == ["+0.750", "+0.000", "-0.250"]
    assert got["n"].tolist() == ["6", "6", "5"]
    assert got["skipped"].tolist()[2] == "skipped: 1 of 6 samples (all-zero map, no peak)"


def test_disruption_calls_an_unchanged_top_k_no_effect():
    frame = pd.DataFrame(
        [(str(s), flow, layer, True, 1.0 if flow == "image<-image" else [0.2, 0.5, 0.4][s] if layer == 1 else 1.0)
         for s in range(3) for flow in ("instruction<-image", "image<-image") for layer in (0, 1)],
        columns=["sample", "flow", "layer", "same_label", "jaccard"],
    )
    from mmlens.analysis import DisruptionResult

    result = DisruptionResult(frame)
    summary = disruption_summary(frame, result.per_layer(), result.d_metric(), n=3)
    got = table(summary, "## Largest effect per flow").set_index("flow")
    assert got.loc["image<-image", "effect"] == "no effect"
    assert got.loc["instruction<-image", ["effect", "layer"]].tolist() == ["effect", "1"]
    assert float(got.loc["instruction<-image", "1 − Jaccard"]) == pytest.approx(1 - (0.2 + 0.5 + 0.4) / 3, abs=1e-3)
