"""``mmlens flow`` end to end on the tiny random model: files, figures, resume."""

from __future__ import annotations

import json

import pandas as pd

from mmlens.cli import main


def test_flow_study_writes_tables_figures_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLENS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "flow"
    args = ["flow", "--model", "tiny-random", "--window", "3", "--out", str(out)]
    assert main(args + ["--n", "2"]) == 0
    first = pd.read_csv(out / "knockout.csv")
    assert first["sample"].nunique() == 2 and set(first["flow"]) >= {"image->last", "related->question"}
    assert main(args + ["--n", "3"]) == 0  # resumes: only the third sample is new
    again = pd.read_csv(out / "knockout.csv")
    assert again["sample"].nunique() == 3 and len(again) == len(first) * 3 // 2
    assert len(json.loads((out / "done.json").read_text())) == 3
    for name in ["lens.csv", "shares.csv", "knockout.png", "lens.png", "shares.png", "image_attention.png", "summary.md"]:
        assert (out / name).stat().st_size > 0, name
    shares = pd.read_csv(out / "shares.csv")
    sums = shares.groupby(["sample", "layer"])["share"].sum()
    assert ((sums - 1).abs() < 1e-4).all()


def test_unknown_or_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["flow", "--model", "tiny-random", "--data", "gqa:/nowhere", "--out", str(tmp_path)]) == 2
    assert "questions" in capsys.readouterr().err
    assert main(["flow", "--model", "tiny-random", "--data", "imagenet", "--out", str(tmp_path)]) == 2
    assert "<reader>:<path>" in capsys.readouterr().err


def test_gradient_studies_write_their_tables_and_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLENS_CACHE", str(tmp_path / "cache"))
    base = ["--model", "tiny-random", "--n", "2"]
    assert main(["saliency", *base, "--out", str(tmp_path / "s")]) == 0
    sal = pd.read_csv(tmp_path / "s" / "saliency.csv")
    assert set(sal["metric"]) == {"S_sys", "S_img", "S_ins", "S_vv", "S_vt"} and sal["sample"].nunique() == 2
    assert main(["cam", *base, "--figures", "1", "--smooth", "2", "0.1", "--out", str(tmp_path / "c")]) == 0
    hits = pd.read_csv(tmp_path / "c" / "cam_hits.csv")
    assert hits["layer"].nunique() == 3 and (tmp_path / "c").glob("cam_*.png")
    assert main(["disrupt", *base, "--layers", "0", "2", "--out", str(tmp_path / "d")]) == 0
    per_layer = pd.read_csv(tmp_path / "d" / "disruption_per_layer.csv")
    assert set(per_layer["flow"]) == {"instruction<-image", "image<-image", "random<-image"}
    assert (tmp_path / "d" / "disruption.png").stat().st_size > 0


def test_prune_eval_reports_accuracy_flops_and_latency(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLENS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "p"
    assert main(["prune-eval", "--model", "tiny-random", "--policy", "fastv:1,0.5", "--n", "2", "--repeats", "1", "--out", str(out)]) == 0
    table = pd.read_csv(out / "prune_eval.csv")
    assert table["policy"].tolist() == ["baseline", "fastv:1,0.5"]
    assert table["flops_exact_ratio"][1] < 1 and table["flops_estimate_ratio"][1] < table["flops_exact_ratio"][1]
    assert main(["prune-eval", "--model", "tiny-random", "--policy", "pyramid:1", "--n", "1", "--out", str(out)]) == 2


def write_pope(root):
    """A two-question POPE file in its public jsonl format, with its images."""
    from PIL import Image

    (root / "val2014").mkdir(parents=True)
    lines = []
    for i, (label, shape) in enumerate([("yes", "circle"), ("no", "star")]):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.new("RGB", (40, 30), (200, 30, 30)).save(root / "val2014" / name)
        lines.append(json.dumps({"question_id": i, "image": name, "text": f"Is there a {shape} in the image?", "label": label}))
    (root / "coco_pope_random.json").write_text("\n".join(lines) + "\n")


def test_eval_and_flow_on_a_benchmark_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLENS_CACHE", str(tmp_path / "cache"))
    write_pope(tmp_path / "pope")
    data = ["--model", "tiny-random", "--data", f"pope:{tmp_path / 'pope'}", "--n", "2"]
    assert main(["eval", *data, "--policy", "fastv:1,0.5", "--pseudo-filter", "--out", str(tmp_path / "e")]) == 0
    preds = pd.read_csv(tmp_path / "e" / "predictions.csv")
    assert set(preds["policy"]) <= {"baseline", "fastv:1,0.5"} and (preds["score"].between(0, 1)).all()
    assert main(["flow", *data, "--window", "3", "--out", str(tmp_path / "f")]) == 0
    ko = pd.read_csv(tmp_path / "f" / "knockout.csv")
    assert ko["sample"].nunique() == 2 and (ko["task"] == "random").all()
