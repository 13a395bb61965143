"""The flow-study summary says what the tables say: "no effect" when the CI covers 0, the lens
where each spelling peaks, and one line for every figure written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mmlens.analysis.knockout_sweep import KnockoutResult
from mmlens.studies.flow import FlowStudyResult
from mmlens.studies.report import knockout_lines, lens_lines, skipped_flows, write_report


def rows(lines: list[str]) -> dict[str, list[str]]:
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ") and "---" not in line)}


def test_knockout_lines_call_a_ci_covering_zero_no_effect():
    summary = pd.DataFrame(
        [
            ("tiny", 0, -0.04, -0.2, 0.1, 5),  # a -0.04 % mean whose CI covers 0: no effect, never "-0.0"
            ("tiny", 1, -0.01, -0.05, 0.02, 5),
            ("real", 0, -3.0, -5.0, -1.0, 5),
            ("real", 1, -40.0, -60.0, -20.0, 5),
            ("small", 0, -0.03, -0.05, -0.01, 5),
            ("up", 0, 2.5, 1.0, 4.0, 5),
        ],
        columns=["flow", "layer", "mean", "ci_low", "ci_high", "n"],
    )
    table = rows(knockout_lines(summary))
    assert table["tiny"] == ["no effect", "–", "–", "–", "5"]
    assert table["real"] == ["drop", "1", "-40.0", "[-60.0, -20.0]", "5"]
    assert table["small"][:3] == ["drop", "0", "-0.03"]  # small but real: digits kept
    assert table["up"][:3] == ["rise", "0", "+2.5"]


def test_lens_lines_report_both_peaks_with_both_probabilities():
    probs = {  # boundary -> (lower, capitalised) for the two samples
        0: ((0.01, 0.01), (0.03, 0.01)),
        1: ((0.50, 0.02), (0.30, 0.04)),
        2: ((0.10, 0.60), (0.00, 0.80)),
        3: ((0.00, 0.99), (0.00, 0.97)),
    }
    data = [
        ("answer", s, b, variant, p[s][i])
        for b, p in probs.items()
        for s in (0, 1)
        for i, variant in enumerate(("lower", "capitalised"))
    ]
    lens = pd.DataFrame(data, columns=["role", "sample", "boundary", "variant", "prob"])
    table = [r for r in lens_lines(lens) if r.startswith("| answer")]
    assert table == [
        "| answer | lower | 1 | 0.400 | 0.030 |",
        "| answer | capitalised | 3 | 0 | 0.980 |",
        "| answer | (final) | 3 | 0 | 0.980 |",
    ]


def test_write_report_describes_every_figure(tmp_path: Path):
    ko = pd.DataFrame(
        [(str(s), "T", "image->last", layer, max(0, layer - 1), min(2, layer + 1), 7, 0.5, 0.5, 0.0) for s in range(2) for layer in range(3)],
        columns=list(KnockoutResult.COLUMNS),
    )
    lens = pd.DataFrame(
        [(0, b, "red", v, 1, p, str(s), "T", True, "answer") for s in range(2) for b in range(2) for v, p in (("lower", 0.1), ("capitalised", 0.9))],
        columns=["row", "boundary", "word", "variant", "token", "prob", "sample", "task", "correct", "role"],
    )
    shares = pd.DataFrame(
        [(0, layer, g, 0.5, str(s), "T", True) for s in range(2) for layer in range(3) for g in ("image", "user")],
        columns=["row", "layer", "group", "share", "sample", "task", "correct"],
    )
    summary = write_report(FlowStudyResult(KnockoutResult(ko), lens, shares, tmp_path), settings={"model": "m"}).read_text()
    for name in ("knockout.png", "lens.png", "shares.png"):
        assert (tmp_path / name).stat().st_size > 0
        (line,) = [line for line in summary.splitlines() if line.startswith(f"- `{name}`")]
        assert "n = 2" in line
    assert "window of 3 layers" in summary and "log scale" in summary and "Settings: model = m." in summary
    assert "| image->last | no effect |" in summary and "-0.0" not in summary


def test_skipped_flows_name_the_empty_group():
    # sample "a" has every flow; "b" has no boxes: its related->question knockout never ran
    flows = ["image->question", "question->last", "image->last", "last->last", "related->question", "other->question"]
    ko = pd.DataFrame([(s, f) for s in "ab" for f in flows if (s, f) != ("b", "related->question")], columns=["sample", "flow"])
    skipped = skipped_flows(ko, ["a", "b", "c"])  # "c" ran no knockout at all: no group is known non-empty there
    assert skipped["related->question"] == (2, "empty 'related' group: 1; empty 'related' or 'question' group: 1")
    assert skipped["image->last"] == (1, "empty 'image' or 'last' group")
    assert skipped_flows(ko, ["a", "b"])["related->question"] == (1, "empty 'related' group")
    assert skipped_flows(ko, ["a", "b"])["image->last"] == (0, "")


def test_write_report_says_which_samples_were_left_out_and_why(tmp_path: Path):
    """Three samples asked: "2" was dropped by filter_correct, "1" has no related tokens."""
    (tmp_path / "done.json").write_text('["0", "1", "2"]')
    flows = [("image->last", "0"), ("image->last", "1"), ("image->question", "1"), ("related->question", "0")]
    ko = pd.DataFrame(
        [(s, "T", flow, layer, 0, 2, 7, 0.5, 0.5 + 0.1 * layer, 20.0 * layer) for flow, s in flows for layer in range(3)],
        columns=list(KnockoutResult.COLUMNS),
    )
    lens = pd.DataFrame(
        [(0, b, "red", v, 1, 0.5, s, "T", True, "answer") for s in "01" for b in range(2) for v in ("lower", "capitalised")],
        columns=["row", "boundary", "word", "variant", "token", "prob", "sample", "task", "correct", "role"],
    )
    shares = pd.DataFrame([(0, 0, "image", 1.0, s, "T", True) for s in "01"],
                          columns=["row", "layer", "group", "share", "sample", "task", "correct"])  # fmt: skip
    summary = write_report(FlowStudyResult(KnockoutResult(ko), lens, shares, tmp_path), records_skipped=4).read_text()
    why = "skipped: 1 of 3 samples (answered incorrectly, left out by filter_correct)"
    assert f"Samples: n = 2 used of 3; {why}. Before that, --lenient skipped 4 malformed record(s)" in summary
    for name in ("knockout.png", "lens.png", "shares.png"):
        (line,) = [line for line in summary.splitlines() if line.startswith(f"- `{name}`")]
        assert why in line, name
    table = rows(summary.splitlines())
    assert table["related->question"][-2:] == ["1", "skipped: 1 of 2 samples (empty 'related' group)"]
    assert table["image->last"][-2:] == ["2", "none"]
    assert table["other->question"] == ["not run", "–", "–", "–", "0", "skipped: 2 of 2 samples (empty 'other' group)"]
