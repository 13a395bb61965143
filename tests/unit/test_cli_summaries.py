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


def test_eval_summary_counts_what_each_filter_dropped(tmp_path, capsys):
    from mmlens import HookedVLM
    from mmlens.data.readers import load_dataset
    from mmlens.inputs import answer_without_image, score
    from mmlens.studies import evaluate
    from mmlens.zoo.registry import resolve_model_name
    from tests.unit.test_cli_errors import pope, q

    # One image and one question, half the labels "yes": the model gives every sample the same answer
    # (with the image and without it), so each filter drops exactly the two whose label it misses.
    data = pope(tmp_path / "pope", ["{oops", *[q(i, label=label) for i, label in enumerate(["yes", "no", "yes", "no"])]])
    model = HookedVLM.from_pretrained(resolve_model_name("tiny-random"))
    samples = list(load_dataset(data, lenient=True))
    blind = {s.id for s in samples if score(s, answer_without_image(model, s, "vicuna_v1")) >= 1}
    wrong = set(evaluate(model, samples, template="vicuna_v1").frame.query("not correct")["sample"])
    assert len(blind) == len(wrong) == 2
    base = ["eval", "--model", "tiny-random", "--data", data, "--lenient", "--n", "4"]
    for flag, dropped, why in (("--pseudo-filter", blind, "answered correctly without the image: --pseudo-filter"),
                               ("--filter-correct", wrong, "answered wrongly: --filter-correct")):
        out = tmp_path / flag
        assert main([*base, flag, "--policy", "fastv:1,0.5", "--out", str(out)]) == 0
        summary = (out / "summary.md").read_text()
        assert summary in capsys.readouterr().out
        assert set(pd.read_csv(out / "filtered.csv")["sample"]) == dropped
        assert set(pd.read_csv(out / "predictions.csv")["sample"]) == {s.id for s in samples} - dropped
        assert (f"Samples: n = 2 used of 4; skipped: 2 of 4 samples ({why}). Before that, --lenient skipped 1 "
                "malformed record(s)") in summary  # fmt: skip
        assert "template = vicuna_v1" in summary and "policy = fastv:1,0.5" in summary  # 'auto' as resolved
        csv = pd.read_csv(out / "accuracy.csv")
        rows = table(summary, "## Mean score per policy and question type")
        assert rows["policy"].tolist() == csv["policy"].tolist() and rows["task"].tolist() == csv["task"].tolist()
        assert rows["mean"].tolist() == [f"{x:.3f}" for x in csv["mean"]]
        assert rows["n"].astype(int).tolist() == csv["n"].tolist() == [2, 2]


def test_prune_eval_summary_is_its_csv(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["prune-eval", *DATA, "--n", "2", "--policy", "fastv:1,0.5", "--repeats", "1", "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert summary in capsys.readouterr().out
    assert "Samples: n = 2 used of 2; skipped: none of 2 samples." in summary
    assert "template = vicuna_v1" in summary and "policy = fastv:1,0.5" in summary
    csv = pd.read_csv(out / "prune_eval.csv")
    rows = table(summary, "## Accuracy, FLOPs and prefill latency")
    assert rows["policy"].tolist() == csv["policy"].tolist() == ["baseline", "fastv:1,0.5"]
    for column, spec in (("accuracy", ".3f"), ("flops_estimate", ".4g"), ("flops_exact", ".4g"), ("prefill_ms", ".2f"),
                         ("flops_exact_ratio", ".3f"), ("latency_ratio", ".3f")):
        assert rows[column].tolist() == [format(x, spec) for x in csv[column]], column
    preds = pd.read_csv(out / "predictions.csv")
    assert csv["accuracy"].tolist() == [preds.query("policy == @p")["correct"].mean() for p in csv["policy"]]
