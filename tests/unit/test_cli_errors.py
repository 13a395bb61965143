"""Bad command lines and bad datasets: ``mmlens: <message>``, exit status 2, before any weights load."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mmlens import HookedVLM
from mmlens.cli import main


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a command loads a model: user errors must be found before that."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error was found")

    monkeypatch.setattr(HookedVLM, "from_pretrained", refuse)


def pope(root: Path, lines: list[dict | str], images: dict[str, bytes | tuple[int, int]] | None = None) -> str:
    """A POPE folder: ``lines`` (objects or raw text) and images (a size to draw, or raw bytes)."""
    (root / "val2014").mkdir(parents=True, exist_ok=True)
    for name, content in (images or {"a.jpg": (40, 30)}).items():
        if isinstance(content, bytes):
            (root / "val2014" / name).write_bytes(content)
        else:
            Image.new("RGB", content, (200, 30, 30)).save(root / "val2014" / name)
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    (root / "coco_pope_random.json").write_text(text + "\n")
    return f"pope:{root}"


def q(i: int, image: str = "a.jpg", **extra) -> dict:
    return {"question_id": i, "image": image, "text": "Is there a circle?", "label": "yes", **extra}


def gqa_csv(root: Path, box: str, size: tuple[int, int] = (64, 48)) -> str:
    """One-row GQA subset CSV whose central object box is ``box`` (x,y,w,h) on a ``size`` image."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(root / "images" / "7.jpg")
    x, y, w, h = box.split(",")
    rows = "question_id,img_id,question,answer,central object x,central object y,central object w,central object h\n"
    (root / "GQA_val_ChooseAttr.csv").write_text(rows + f"q1,7,What color is it?,red,{x},{y},{w},{h}\n")
    return f"gqa-csv:{root}"


# (name, command line after the subcommand, a function of tmp_path giving --data or None, expected text)
CASES = [
    ("n zero", ["flow", "--n", "0"], None, "--n 0: give at least 1 sample"),
    ("n negative", ["eval", "--n", "-3"], None, "--n -3"),
    ("n not a number", ["flow", "--n", "many"], None, "flow: argument --n/--num-samples: invalid int value: 'many'"),
    ("seed negative", ["saliency", "--seed", "-1"], None, "--seed -1"),
    ("unknown option", ["flow", "--windw", "3"], None, "unrecognized arguments: --windw"),
    ("unknown choice", ["cam", "--tower", "audio"], None, "argument --tower: invalid choice: 'audio'"),
    ("window zero", ["flow", "--window", "0"], None, "--window 0: the knockout window must be >= 1"),
    ("window past depth", ["flow", "--window", "40"], None, "<= 3, the model's depth"),
    ("unknown type", ["flow", "--types", "ChooseColour"], None, "unknown question type(s)"),
    ("empty types", ["flow", "--types"], None, "--types needs at least one question type"),
    ("unknown template", ["eval", "--template", "vicuna"], None, "--template 'vicuna' is not registered"),
    ("missing model", ["flow", "--model", "/no/such/model"], None, "neither a registered model"),
    ("layer past depth", ["cam", "--layers", "0", "7"], None, "--layers [7]: out of range for the decoder, which has 3 layers"),
    ("vision layer past depth", ["cam", "--tower", "vision", "--layers", "5"], None, "for the vision tower"),
    ("empty layers", ["disrupt", "--layers"], None, "--layers needs at least one layer"),
    ("bad smooth", ["cam", "--smooth", "x", "0.1"], None, "--smooth x 0.1: give an integer N"),
    ("negative sigma", ["cam", "--smooth", "3", "-1"], None, "SIGMA > 0"),
    ("negative figures", ["cam", "--figures", "-1"], None, "--figures -1"),
    ("zero repeats", ["prune-eval", "--repeats", "0"], None, "--repeats 0"),
    ("unknown policy", ["prune-eval", "--policy", "pyramid:1"], None, "unknown pruning policy 'pyramid'"),
    ("policy past depth", ["eval", "--policy", "himap:2,0.5,8,0.75"], None, "cannot prune before layer 8 of 3"),
    ("malformed policy", ["eval", "--policy", "fastv:two"], None, "cannot read pruning policy 'fastv:two'"),
    ("data without reader", ["flow", "--data", "imagenet"], None, "use 'shapes' or '<reader>:<path>'"),
    ("unknown reader", ["flow", "--data", "vqa2:/data"], None, "unknown dataset reader 'vqa2'"),
    ("missing data", ["flow", "--data", "gqa:/nowhere"], None, "questions"),
    ("empty dataset", ["flow"], lambda t: pope(t, []), "holds no usable sample"),
    ("types not in data", ["eval", "--types", "adversarial"], lambda t: pope(t, [q(1)]), "types found: ['random']"),
    ("duplicate ids", ["flow"], lambda t: pope(t, [q(1), q(1)]), "duplicate sample id 'random/1'"),
    ("corrupt image", ["flow"], lambda t: pope(t, [q(1, "bad.jpg")], {"bad.jpg": b"\xff\xd8not a jpeg"}), "bad.jpg cannot be read"),
    ("truncated image", ["flow"], lambda t: pope(t, [q(1, "cut.png")], {"cut.png": truncated_png()}), "cut.png cannot be read"),
    ("missing image", ["flow"], lambda t: pope(t, [q(1, "gone.jpg")]), "image file"),
    ("malformed line", ["eval"], lambda t: pope(t, [q(1), "{not json"]), "coco_pope_random.json, line 2: malformed JSON"),
    ("box past the edge", ["cam"], lambda t: gqa_csv(t, "50,10,30,20"), "box 'central object'"),
    ("negative box", ["cam"], lambda t: gqa_csv(t, "-9,0,5,5"), "lies outside its image 7.jpg of 64x48 pixels"),
    ("unreadable box", ["cam"], lambda t: gqa_csv(t, "a,0,5,5"), "unreadable box"),
    ("out is a file", ["flow", "--out", "FILE"], None, "is a file"),
    ("no command", [], None, "the following arguments are required: command"),
    ("convert a missing folder", ["convert", "/no/such/llava"], None, "/no/such/llava holds no config.json"),
]


def truncated_png() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()[:-40]


def command_line(argv: list[str], tmp_path: Path, model: str, data) -> list[str]:
    """A case's command line with ``--model``, ``--data`` and ``--out`` added unless it sets them."""
    argv = list(argv)
    if not argv or argv[0] == "convert":
        return argv + (["--out", str(tmp_path / "out")] if argv else [])
    if "--model" not in argv:
        argv += ["--model", model]
    if data is not None:
        argv += ["--data", data(tmp_path / "data")]
    if "FILE" in argv:
        (tmp_path / "FILE").write_text("")
        argv[argv.index("FILE")] = str(tmp_path / "FILE")
    else:
        argv += ["--out", str(tmp_path / "out")]
    return argv


@pytest.mark.parametrize("argv, data, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_user_error_is_one_line_and_exit_status_2(argv, data, expected, tmp_path, capsys, no_model_load, checkpoint_factory):
    model = checkpoint_factory()  # 3 decoder and 3 vision layers
    capsys.readouterr()
    assert main(command_line(argv, tmp_path, model, data)) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmlens: ") and "Traceback" not in err and "mmlens: mmlens" not in err
    assert expected in err, err


def test_lenient_skips_bad_records_and_lists_them(tmp_path, capsys, no_model_load, checkpoint_factory):
    data = pope(tmp_path / "data", [q(1), "{oops", q(1), q(2, "gone.jpg")])
    out = tmp_path / "out"
    # the run stops at the model load (refused here), after the data and the skipped list
    with pytest.raises(AssertionError, match="model was loaded"):
        main(["flow", "--model", checkpoint_factory(), "--data", data, "--lenient", "--out", str(out)])
    assert "--lenient skipped 3 malformed record(s)" in capsys.readouterr().err
    skipped = pd.read_csv(out / "skipped.csv")
    assert len(skipped) == 3 and list(skipped.columns) == ["record", "problem"]
    assert skipped["record"].str.endswith(("line 2", "line 4")).sum() == 2
    assert skipped["problem"].str.contains("duplicate sample id").sum() == 1


def test_a_rerun_with_other_settings_refuses_before_loading_the_model(tmp_path, capsys, monkeypatch, checkpoint_factory):
    out = tmp_path / "out"
    (out / "journal").mkdir(parents=True)
    manifest = {"command": "flow", "data": "shapes", "mmlens_version": "0.1.0", "model": {"name": "x", "fingerprint": "0"}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    refuse = lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded"))  # noqa: E731
    monkeypatch.setattr(HookedVLM, "from_pretrained", refuse)
    assert main(["flow", "--model", checkpoint_factory(), "--n", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.fingerprint = '0' there" in err and "model.name = 'x' there" in err and "--force" in err


def test_prune_eval_defaults_work_on_the_default_model(tmp_path, capsys):
    assert main(["prune-eval", "--n", "1", "--repeats", "1", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "prune_eval.csv")
    assert table["policy"].tolist() == ["baseline", "himap:1,0.5,2,0.75"]  # K1=2, K2=8 of 32 layers, scaled to 4
    assert table["flops_exact_ratio"][1] < 1
