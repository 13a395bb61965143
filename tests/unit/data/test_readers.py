"""Dataset readers on small files in the real public formats, written by each test."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from mmlens.data.readers import (
    READERS,
    DatasetFormatError,
    ImageFile,
    ReadResult,
    load_dataset,
    read_aokvqa,
    read_captions,
    read_gqa,
    read_gqa_csv,
    read_pope,
    read_scienceqa,
    read_textvqa,
)
from mmlens.errors import MMLensError, UnknownNameError


def _image(path: Path, size: tuple[int, int] = (640, 480)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path)
    return path


def _json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _gqa_question(image: str, **extra) -> dict:
    return {
        "imageId": image, "question": "Is the dog to the left or to the right of the dog?", "answer": "left",
        "fullAnswer": "The dog is to the left of the dog.", "isBalanced": True,
        "types": {"structural": "choose", "semantic": "rel", "detailed": "relChooser"},
        "annotations": {"answer": {}, "fullAnswer": {"1": "7"}, "question": {"9": "8", "2": "7", "3:5": "7"}},
        "semantic": [{"operation": "select", "dependencies": [], "argument": "dog (7)"},
                     {"operation": "choose rel", "dependencies": [0],
                      "argument": "dog,to the left of|to the right of,s (8)"}],
        **extra,
    }  # fmt: skip


@pytest.fixture
def gqa(tmp_path: Path) -> Path:
    _image(tmp_path / "images" / "2354786.jpg", (20, 10))
    questions = {
        "q1": _gqa_question("2354786"),
        "q2": _gqa_question("999"),  # image file missing
        "q3": {k: v for k, v in _gqa_question("2354786").items() if k != "answer"},
    }
    _json(tmp_path / "val_balanced_questions.json", questions)
    objects = {"7": {"name": "dog", "x": 1, "y": 2, "w": 3, "h": 4, "attributes": [], "relations": []},
               "8": {"name": "dog", "x": 10, "y": 0, "w": 5, "h": 5, "attributes": [], "relations": []}}  # fmt: skip
    _json(tmp_path / "val_sceneGraphs.json", {"2354786": {"width": 20, "height": 10, "objects": objects}})
    return tmp_path


def test_gqa_boxes_options_and_task(gqa: Path) -> None:
    samples = read_gqa(gqa, lenient=True)
    assert isinstance(samples, ReadResult) and isinstance(samples, list) and len(samples) == 1
    s = samples[0]
    # Objects in question order (token 2 before 9), the repeated id once, the name clash suffixed.
    assert s.boxes == {"dog": (1, 2, 4, 6), "dog_2": (10, 0, 15, 5)}
    assert s.meta["object_ids"] == {"dog": "7", "dog_2": "8"}
    assert (s.task, s.answer, s.options, s.true_option, s.false_option) == (
        "ChooseRel", "left", ("left", "right"), "left", "right")  # fmt: skip
    assert isinstance(s.image, ImageFile) and s.load_image().size == (20, 10)
    assert [m.split(",")[1].strip().split(":")[0] for m in samples.skipped] == ["question 'q2'", "question 'q3'"]


def test_gqa_strict_names_file_record_and_fix(gqa: Path) -> None:
    with pytest.raises(DatasetFormatError, match=r"val_balanced_questions\.json, question 'q2': image file .*999\.jpg"):
        read_gqa(gqa / "val_balanced_questions.json")
    assert len(read_gqa(gqa, limit=1)) == 1  # stops before the bad records


def test_gqa_without_scene_graphs_has_no_boxes(gqa: Path) -> None:
    (gqa / "val_sceneGraphs.json").rename(gqa / "train_sceneGraphs.json")  # another split's graphs are not used
    (s,) = read_gqa(gqa, limit=1)
    assert s.boxes == {} and s.true_option == "left"


def test_gqa_object_missing_from_scene_graph(gqa: Path) -> None:
    _json(gqa / "val_balanced_questions.json", {"q9": _gqa_question("2354786", annotations={"question": {"2": "55"}})})
    with pytest.raises(DatasetFormatError, match="object '55' is not in the scene graph"):
        read_gqa(gqa)


_SEED_HEADER = ["question_id", "img_id", "question", "answer", "true option", "false option", "central object name",
                "captions", "image_w", "image_h", "central object w", "central object h", "central object x",
                "central object y"]  # fmt: skip


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_gqa_csv_released_format(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "2390560.jpg")
    _image(tmp_path / "images" / "2350927.jpg")
    _csv(tmp_path / "GQA_val_correct_question_with_choose_ChooseAttr.csv", _SEED_HEADER, [
        ["00171031", "2390560", "Is the jar full or empty?", "empty", "empty", "full", "jar",
         "a jar, of honey.", "375", "500", "60", "105", "253", "291"]])  # fmt: skip
    _csv(tmp_path / "GQA_val_correct_question_with_existThatOr_LogicalObj.csv",
         ["question_id", "img_id", "question", "answer", "object1 name", "object2 name", "object1 w", "object1 h",
          "object1 x", "object1 y", "object2 w", "object2 h", "object2 x", "object2 y"],
         [["12824169", "2350927", "Is there any grass or mud?", "no", "grass", "mud", "214", "147", "32", "312",
           "-", "-", "-", "-"]])  # fmt: skip
    attr, logical = read_gqa_csv(tmp_path)  # both files, sorted by name
    assert (attr.id, attr.task, attr.answer) == ("00171031", "ChooseAttr", "empty")
    assert attr.boxes == {"central object": (253.0, 291.0, 313.0, 396.0)}
    assert (attr.options, attr.true_option, attr.false_option) == (("full", "empty"), "empty", "full")
    assert attr.meta["names"] == {"central object": "jar"} and attr.meta["columns"]["captions"] == "a jar, of honey."
    assert logical.task == "LogicalObj" and logical.boxes == {"object1": (32.0, 312.0, 246.0, 459.0)}


def test_gqa_csv_single_box_columns_and_type_column(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "7.png")
    header = ["question_id", "img_id", "question", "answer", "type", "central object", "object2 box"]
    _csv(tmp_path / "q.csv", header, [["1", "7.png", "What is it?", "cat", "QueryCat", "[1, 2, 3, 4]",
                                       '{"x": 0, "y": 0, "w": 2, "h": 2}']])  # fmt: skip
    (s,) = read_gqa_csv(tmp_path / "q.csv", tmp_path / "img")
    assert s.task == "QueryCat" and s.boxes == {"central object": (1.0, 2.0, 4.0, 6.0), "object2": (0.0, 0.0, 2.0, 2.0)}


def test_gqa_csv_errors(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "1.jpg")
    _csv(tmp_path / "a.csv", ["question_id", "img_id", "question", "answer", "object1 x", "object1 y"], [])
    with pytest.raises(DatasetFormatError, match=r"a\.csv, line 1: box of 'object1' has only"):
        read_gqa_csv(tmp_path / "a.csv")
    rows = [["1", "1", "Q?", "A", "1", "2", "3", "4", "extra"], ["2", "1", "Q?", "A", "x", "2", "3", "4"],
            ["3", "404", "Q?", "A", "1", "2", "3", "4"], ["4", "1", "Q?", "A", "-", "-", "-", "-"]]  # fmt: skip
    _csv(tmp_path / "b.csv", ["question_id", "img_id", "question", "answer", *(f"object1 {k}" for k in "xywh")], rows)
    with pytest.raises(DatasetFormatError, match=r"b\.csv, line 2: the row does not have as many fields"):
        read_gqa_csv(tmp_path / "b.csv")
    result = read_gqa_csv(tmp_path / "b.csv", lenient=True)
    assert [s.id for s in result] == ["4"] and result[0].boxes == {}
    assert ["line 3: unreadable box" in result.skipped[1], "404.jpg is missing" in result.skipped[2]] == [True, True]


@pytest.fixture
def sqa(tmp_path: Path) -> Path:
    problem = {"question": "Which is a mammal?", "choices": ["frog", "whale", "shark"], "answer": 1,
               "hint": "Mammals breathe air.", "image": "image.png", "task": "closed choice", "split": "test",
               "subject": "natural science", "lecture": "", "solution": ""}  # fmt: skip
    problems = {"1": problem, "2": {**problem, "image": None}, "3": {**problem, "answer": 3}, "4": problem}
    _json(tmp_path / "problems.json", problems)
    _json(tmp_path / "pid_splits.json", {"train": [], "val": [], "test": ["1", "2", "3", "4"]})
    _image(tmp_path / "test" / "1" / "image.png")
    return tmp_path


def test_scienceqa_image_subset_letters_and_skips(sqa: Path) -> None:
    result = read_scienceqa(sqa, "test", lenient=True)
    (s,) = result  # problem 2 is text-only: left out by design, not a skip
    assert (s.id, s.answer, s.options, s.true_option, s.false_option) == (
        "1", "B", ("frog", "whale", "shark"), "whale", "frog")  # fmt: skip
    assert s.meta["hint"] == "Mammals breathe air." and s.meta["subject"] == "natural science"
    assert len(result.skipped) == 2 and "problem '3': answer index 3 with 3 choices" in result.skipped[0]
    with pytest.raises(DatasetFormatError, match=r"problems\.json, problem '3'"):
        read_scienceqa(sqa)
    with pytest.raises(DatasetFormatError, match=r"no split 'dev'; choose one of \['test', 'train', 'val'\]"):
        read_scienceqa(sqa, "dev")


def test_aokvqa_coco_layout(tmp_path: Path) -> None:
    _image(tmp_path / "coco" / "val2017" / "000000000042.jpg")
    rec = {"split": "val", "image_id": 42, "question_id": "22MexNkBPpdZGX6sxbxVBH", "question": "What is he holding?",
           "choices": ["bat", "ball", "cup", "kite"], "correct_choice_idx": 2, "direct_answers": ["cup"] * 10,
           "difficult_direct_answer": False, "rationales": ["He drinks."]}  # fmt: skip
    bad = {k: v for k, v in rec.items() if k != "correct_choice_idx"}
    _json(tmp_path / "aokvqa" / "aokvqa_v1p0_val.json", [rec, bad])
    result = read_aokvqa(tmp_path / "aokvqa", lenient=True)
    (s,) = result
    assert (s.answer, s.true_option, s.false_option, s.options) == ("C", "cup", "bat", ("bat", "ball", "cup", "kite"))
    assert s.load_image().size == (640, 480) and s.meta["direct_answers"] == ["cup"] * 10
    assert "record 1 (question_id '22MexNkBPpdZGX6sxbxVBH'): missing required field(s) ['correct_choice_idx']" in (
        result.skipped[0])  # fmt: skip


def _pope_line(qid: int, image: str = "COCO_val2014_000000310196.jpg", **extra) -> str:
    record = {"question_id": qid, "image": image, "text": "Is there a dog in the image?", "label": "yes"}
    return json.dumps({**record, **extra})


def test_pope_variants_and_broken_lines(tmp_path: Path) -> None:
    _image(tmp_path / "val2014" / "COCO_val2014_000000310196.jpg")
    lines = [_pope_line(1), '{"question_id": 2, "image": ', _pope_line(3, extra_field=1),
             _pope_line(4, label="maybe"), _pope_line(5, image="nope.jpg"), "",
             json.dumps({"question_id": 6, "text": "Is there a cat?"})]  # fmt: skip
    (tmp_path / "coco_pope_random.json").write_text("\n".join(lines) + "\n")
    (tmp_path / "coco_pope_adversarial.json").write_text(_pope_line(1, label="no") + "\n")
    with pytest.raises(DatasetFormatError, match=r"coco_pope_random\.json, line 2: malformed JSON"):
        read_pope(tmp_path / "coco_pope_random.json")
    result = read_pope(tmp_path, lenient=True)
    assert [(s.id, s.task, s.answer) for s in result] == [
        ("adversarial/1", "adversarial", "no"), ("random/1", "random", "yes")]  # fmt: skip
    problems = ["line 2: malformed JSON", "line 3: unknown field(s) ['extra_field']", "line 4: label 'maybe'",
                "line 5: image file", "line 7: missing required field(s) ['image', 'label']"]  # fmt: skip
    assert [p in m for p, m in zip(problems, result.skipped)] == [True] * 5 and len(result.skipped) == 5


def test_textvqa_most_common_answer(tmp_path: Path) -> None:
    _image(tmp_path / "train_images" / "abc.jpg")
    answers = ["coca cola", "coke", "coca cola", "coke", "coca cola", "cola", "coke", "coca-cola", "coca cola", "x"]
    data = {"dataset_name": "textvqa", "data": [
        {"question_id": 34602, "image_id": "abc", "question": "What brand?", "answers": answers, "set_name": "val"},
        {"question_id": 34603, "image_id": "abc", "question": "What year?"}]}  # fmt: skip
    _json(tmp_path / "TextVQA_0.5.1_val.json", data)
    result = read_textvqa(tmp_path, lenient=True)
    assert result[0].answer == "coca cola" and result[0].meta["answers"] == answers and result[0].id == "34602"
    assert result.skipped == [f"{tmp_path / 'TextVQA_0.5.1_val.json'}, data[1] (question_id 34603): missing required "
                              "field(s) ['answers']; add ['answers'] to the record"]  # fmt: skip


def test_captions_one_sample_per_image(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.jpg")
    _image(tmp_path / "images" / "b.jpg")
    data = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
            "annotations": [{"image_id": 1, "id": 10, "caption": "A dog."},
                            {"image_id": 2, "id": 11, "caption": "Cats."},
                            {"image_id": 1, "id": 12, "caption": "A brown dog."},
                            {"image_id": 3, "caption": "?"}]}  # fmt: skip
    _json(tmp_path / "captions_val.json", data)
    with pytest.raises(DatasetFormatError, match=r"annotations\[3\]: image_id 3 is not in images"):
        read_captions(tmp_path)
    result = read_captions(tmp_path, lenient=True)
    assert [(s.id, s.question, s.answer, s.meta["captions"]) for s in result] == [
        ("1", "", "A dog.", ["A dog.", "A brown dog."]), ("2", "", "Cats.", ["Cats."])]  # fmt: skip
    assert len(result.skipped) == 1 and result[0].task == "caption"


def test_load_dataset_specs(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "COCO_val2014_000000310196.jpg")
    (tmp_path / "coco_pope_popular.json").write_text("\n".join(_pope_line(i) for i in range(1, 6)))
    samples = load_dataset(f"pope:{tmp_path}", n=3)
    assert [s.id for s in samples] == ["popular/1", "popular/2", "popular/3"] and samples.skipped == []
    assert set(READERS) == {"gqa", "gqa-csv", "scienceqa", "aokvqa", "pope", "textvqa", "captions"}
    with pytest.raises(UnknownNameError, match=r"unknown dataset reader 'popes'.*'aokvqa', 'captions'.*'pope'"):
        load_dataset(f"popes:{tmp_path}")
    with pytest.raises(MMLensError, match="has no path"):
        load_dataset("pope")
    with pytest.raises(DatasetFormatError, match="file not found"):
        load_dataset(f"scienceqa:{tmp_path / 'missing'}")
    assert issubclass(DatasetFormatError, MMLensError) and issubclass(DatasetFormatError, ValueError)
