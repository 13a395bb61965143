"""Every study command writes a ``summary.md`` whose numbers are its CSV files' numbers, and says
which samples it left out and why (here: a question with no named object, so no boxes)."""

from __future__ import annotations

import pandas as pd
import pytest

from mmlens.cli import main

# ChooseAttr names an object (a box, so a "related" group); Exist names none (empty "related").
DATA = ["--model", "tiny-random", "--types", "ChooseAttr", "Exist"]


def table(summary: str, heading: str) -> pd.DataFrame:
    """The first Markdown table after ``heading`` in ``summary``, as strings."""
    lines = summary[summary.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return pd.DataFrame(rows[2:], columns=rows[0])


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLENS_CACHE", str(tmp_path / "cache"))


def test_flow_summary_counts_the_samples_a_flow_skipped(tmp_path, capsys):
    out = tmp_path / "f"
    assert main(["flow", *DATA, "--n", "3", "--window", "3", "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert summary in capsys.readouterr().out  # the printed summary is the file
    ko = pd.read_csv(out / "knockout.csv")
    used = ko.groupby("flow")["sample"].nunique()
    assert used["related->question"] == 2 and used["image->last"] == 3  # the Exist sample has no related tokens
    rows = table(summary, "## Attention knockout").set_index("flow")
    assert rows.loc["related->question", "n"] == "2"
    assert rows.loc["related->question", "skipped"] == "skipped: 1 of 3 samples (empty 'related' group)"
    assert (rows.drop("related->question")["n"] == "3").all() and (rows.drop("related->question")["skipped"] == "none").all()
    assert "Samples: n = 3 used of 3; skipped: none of 3 samples." in summary
    assert "related->question 1 of 3" in summary.split("`knockout.png`")[1].splitlines()[0]


def test_saliency_summary_is_its_csv(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["saliency", *DATA, "--n", "2", "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert summary in capsys.readouterr().out
    df = pd.read_csv(out / "saliency.csv")
    mean = df[df["aggregate"] == "source"].groupby(["layer", "metric"])["value"].mean()  # "paper": source aggregation
    rows = table(summary, "## Mean flow metrics per layer (source aggregation, convention paper")
    assert len(rows) == df["layer"].nunique() and set(rows.columns) == {"layer", *df["metric"]}
    for _, row in rows.iterrows():
        for metric in set(df["metric"]):
            assert row[metric] == format(mean[int(row["layer"]), metric], ".3g")
    assert "Samples: n = 2 used of 2; skipped: none of 2 samples." in summary
    for name in ("flow_metrics_source.png", "flow_metrics_receiving.png"):
        assert f"- `{name}`" in summary and (out / name).stat().st_size > 0


def test_cam_summary_is_its_csv_and_names_the_skipped_sample(tmp_path):
    out = tmp_path / "c"
    assert main(["cam", *DATA, "--n", "2", "--figures", "1", "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert "Samples: n = 1 used of 2; skipped: 1 of 2 samples (no box of an object the question names)." in summary
    csv = pd.read_csv(out / "cam_hit_rate.csv")
    hits = pd.read_csv(out / "cam_hits.csv")
    rows = table(summary, "## Hit rate per layer")
    assert rows["layer"].astype(int).tolist() == csv["layer"].tolist()
    assert rows["hit rate"].tolist() == [f"{x:.3f}" if x == x else "–" for x in csv["hit rate"]]  # NaN: all maps zero
    assert rows["chance"].tolist() == [f"{x:.3f}" for x in csv["chance"]]
    assert rows["n"].astype(int).tolist() == hits.dropna(subset=["hit"]).groupby("layer").size().reindex(csv["layer"], fill_value=0).tolist()
    # one sample with boxes: no interval and no claim; a layer whose map is all zero has no peak at all
    assert rows["verdict"].tolist() == ["one sample, no CI" if n == "1" else "no sample" for n in rows["n"]]
    (overlay,) = [line for line in summary.splitlines() if line.startswith("- `cam_shapes")]
    assert (out / overlay.split("`")[1]).stat().st_size > 0


def test_disrupt_summary_is_its_csvs(tmp_path):
    out = tmp_path / "d"
    assert main(["disrupt", *DATA, "--n", "2", "--layers", "0", "2", "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    per_layer = pd.read_csv(out / "disruption_per_layer.csv")
    rows = table(summary, "## Consistency per flow and layer")
    assert rows["flow"].tolist() == per_layer["flow"].tolist()
    for column in ("label_consistency", "score_consistency", "E"):
        assert rows[column].tolist() == [f"{x:.3f}" for x in per_layer[column]]
    d = pd.read_csv(out / "d_metric.csv")
    assert table(summary, "## D = log")["D"].tolist() == [f"{x:.3f}" if x == x else "–" for x in d["D"]]
    frame = pd.read_csv(out / "disruption.csv")
    effect = (1 - frame["jaccard"]).groupby([frame["flow"], frame["layer"]]).mean()
    for _, row in table(summary, "## Largest effect per flow").iterrows():
        assert row["n"] == "2"
        if row["effect"] == "no effect":
            continue
        assert row["1 − Jaccard"] == f"{effect[row['flow'], int(row['layer'])]:.3f}"
        assert float(row["1 − Jaccard"]) == pytest.approx(effect[row["flow"]].max(), abs=1e-3)


def test_records_lenient_skipped_are_in_the_summary(tmp_path):
    from tests.unit.test_cli_errors import pope, q

    data = pope(tmp_path / "pope", ["{oops", q(1), q(2)])
    out = tmp_path / "s"
    assert main(["saliency", "--model", "tiny-random", "--data", data, "--lenient", "--n", "2", "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert "Samples: n = 2 used of 2; skipped: none of 2 samples. Before that, --lenient skipped 1 malformed record(s)" in summary
    assert len(pd.read_csv(out / "skipped.csv")) == 1
