"""GQA: the official questions JSON with scene-graph boxes, and the CSV subsets of "Cross-modal Information Flow".

Official files (https://cs.stanford.edu/people/dorarad/gqa): ``<split>_balanced_questions.json``
maps a question id to ``{imageId, question, answer, fullAnswer, types{structural, semantic,
detailed}, annotations{question{token: objectId}, ...}, semantic[...], ...}``;
``<split>_sceneGraphs.json`` maps an image id to ``{width, height, objects{objectId: {name, x,
y, w, h, ...}}}``; images are ``images/<imageId>.jpg``.

The GQA subsets of "Cross-modal Information Flow" (Zhang et al., released as
``GQA_val_correct_question_with_<...>_<Task>.csv``) hold one question per row with columns
``question_id, img_id, question, answer`` and box columns ``<role> x|y|w|h`` for the roles
``central object`` (ChooseAttr, ChooseCat, QueryAttr) or ``object1``/``object2`` (ChooseRel,
CompareAttr, LogicalObj; ``-`` marks an absent object2), plus ``true option``/``false option``
for the choose tasks.
"""

from __future__ import annotations

import ast
import csv
import re
from functools import partial
from pathlib import Path
from typing import Any

from mmlens.data.readers.base import (
    DatasetFormatError,
    ReadResult,
    collect,
    fail,
    find_one,
    image_at,
    in_text_order,
    load_json,
    require,
)
from mmlens.data.sample import Box, Sample

CSV_COLUMNS = ("question_id", "img_id", "question", "answer")
"""Columns every CSV of the "Cross-modal Information Flow" subsets must have."""

_ABSENT = {"", "-"}
_SINGLE_BOX = re.compile(r"^(central object|object\d+)$|^(.+) b?box$")
_SPLIT_BOX = re.compile(r"^(.*\S) ([xywh])$")


def read_gqa(
    path: str | Path,
    scene_graphs: str | Path | None = None,
    images: str | Path | None = None,
    *,
    lenient: bool = False,
    limit: int | None = None,
) -> ReadResult:
    """Read GQA questions with the boxes of the objects each question refers to.

    Args:
        path: The questions JSON, or a folder holding exactly one ``*questions*.json``.
        scene_graphs: The scene graphs JSON; default ``<split>_sceneGraphs.json`` next to the
            questions (``<split>`` = the questions file name up to its first ``_``). Without
            one, boxes are empty (as for testdev, whose scene graphs are not public).
        images: Image folder; default ``images/`` next to the questions.
        lenient: Skip bad records (listed in ``.skipped``) instead of raising.
        limit: Stop after this many samples.

    Returns:
        Samples with ``task`` = structural + semantic type (``"ChooseAttr"``), ``boxes`` keyed by
        object name (``"dog"``, ``"dog_2"``), and for choose questions ``options`` and the true
        and false option (common words of the alternatives stripped: ``left``/``right``).

    Raises:
        DatasetFormatError: A missing file, image, field or scene-graph object.
    """
    path = Path(path)
    questions_file = path if path.is_file() else find_one(path, "*questions*.json", "questions file")
    root = questions_file.parent
    if scene_graphs is None:
        named = root / f"{questions_file.name.split('_')[0]}_sceneGraphs.json"
        scene_graphs = named if named.is_file() else None
    questions = load_json(questions_file, dict, "a GQA questions JSON object (question id → question)")
    graphs = None if scene_graphs is None else load_json(Path(scene_graphs), dict, "GQA scene graphs")
    ctx = (questions_file, Path(scene_graphs) if scene_graphs else None, graphs, Path(images or root / "images"))
    builds = (partial(_question, ctx, str(qid), rec) for qid, rec in questions.items())
    return collect(builds, lenient=lenient, limit=limit)


def _question(ctx: tuple, qid: str, rec: Any) -> Sample:
    source, graph_file, graphs, image_dir = ctx
    where = f"question {qid!r}"
    require(rec, {"imageId": str, "question": str, "answer": str}, source, where)
    image = image_at(image_dir / f"{rec['imageId']}.jpg", source, where)
    types = rec["types"] if isinstance(rec.get("types"), dict) else {}
    structural, semantic = types.get("structural", ""), types.get("semantic", "")
    task = structural.capitalize() + semantic.capitalize() if structural and semantic else types.get("detailed", "")
    boxes, object_ids = {}, {}
    notes = rec.get("annotations")
    refs = notes.get("question") or {} if isinstance(notes, dict) else {}
    if not isinstance(refs, dict):
        raise fail(source, where, "annotations.question is not an object", "map token → objectId")
    if graphs is not None and refs:
        graph = graphs.get(rec["imageId"])
        if not isinstance(graph, dict) or not isinstance(graph.get("objects"), dict):
            raise fail(source, where, f"image {rec['imageId']!r} has no scene graph in {graph_file}",
                       "use the scene graphs of the same split as the questions")  # fmt: skip
        for _, obj_id in sorted(refs.items(), key=_token_position):
            if str(obj_id) in object_ids.values():
                continue
            obj = graph["objects"].get(str(obj_id))
            if not isinstance(obj, dict):
                raise fail(source, where, f"object {obj_id!r} is not in the scene graph of image "
                           f"{rec['imageId']!r}", "use the scene graphs of the same split")  # fmt: skip
            require(obj, {"name": str, "x": (int, float), "y": (int, float), "w": (int, float),
                          "h": (int, float)}, graph_file, f"image {rec['imageId']!r} object {obj_id!r}")  # fmt: skip
            name, k = obj["name"], 2
            while name in boxes:
                name, k = f"{obj['name']}_{k}", k + 1
            boxes[name] = (obj["x"], obj["y"], obj["x"] + obj["w"], obj["y"] + obj["h"])
            object_ids[name] = str(obj_id)
    options = _options(rec.get("semantic") or [])
    true = next((o for o in options if o.lower() == rec["answer"].lower()), None)
    false = next((o for o in options if o != true), None) if true else None
    return Sample(
        id=qid, image=image, question=rec["question"], answer=rec["answer"], task=task,
        options=in_text_order(options, rec["question"]), true_option=true, false_option=false,
        boxes=boxes,
        meta={"reader": "gqa", "source": f"{source}:{qid}", "image_id": rec["imageId"],
              "full_answer": rec.get("fullAnswer"), "types": types, "object_ids": object_ids},
    )  # fmt: skip


def _token_position(item: tuple) -> int:
    """Where an annotation ``("3:5", objectId)`` starts in the question (its first token)."""
    head = str(item[0]).split(":")[0]
    return int(head) if head.isdigit() else 1 << 30


def _options(program: list) -> tuple[str, ...]:
    """The alternatives of a ``choose ...`` step (``"brown|white"``), common words stripped."""
    for step in program:
        if not isinstance(step, dict):
            continue
        arg = str(step.get("argument", ""))
        if str(step.get("operation", "")).startswith("choose") and "|" in arg:
            part = next(p for p in arg.split(",") if "|" in p)
            words = [alt.split() for alt in part.split("|")]
            while all(len(w) > 1 for w in words) and len({w[0] for w in words}) == 1:
                words = [w[1:] for w in words]
            while all(len(w) > 1 for w in words) and len({w[-1] for w in words}) == 1:
                words = [w[:-1] for w in words]
            return tuple(" ".join(w) for w in words)
    return ()


def read_gqa_csv(
    path: str | Path,
    images: str | Path | None = None,
    *,
    task: str | None = None,
    lenient: bool = False,
    limit: int | None = None,
) -> ReadResult:
    """Read the GQA subsets of "Cross-modal Information Flow" (one CSV per task) with their object boxes.

    Boxes are ``(x, y, x + w, y + h)`` keyed by role (``"central object"``, ``"object1"``,
    ``"object2"``). Accepted box columns: four columns ``<role> x``, ``<role> y``, ``<role> w``,
    ``<role> h`` (the released files), or one column ``<role>`` (``central object``,
    ``objectN``) or ``<role> box``/``<role> bbox`` holding ``[x, y, w, h]`` or
    ``{"x": .., "y": .., "w": .., "h": ..}`` (JSON or Python literal). Empty or ``-`` means no box.

    Args:
        path: One CSV file, or a folder whose ``*.csv`` files are all read (sorted by name).
        images: Image folder holding ``<img_id>.jpg``; default ``images/`` next to the CSVs.
        task: Task for every row; default the row's ``type`` column, else the file name's last
            ``_`` part (``..._ChooseAttr.csv`` → ``"ChooseAttr"``).
        lenient: Skip bad rows (listed in ``.skipped``) instead of raising.
        limit: Stop after this many samples.

    Raises:
        DatasetFormatError: A missing file or column, a partial box, a malformed row or a
            missing image.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.csv"))
    if not files:
        raise DatasetFormatError(f"{path}: no CSV file found; give a GQA subset CSV or a folder of them.")
    image_dir = Path(images) if images is not None else files[0].parent / "images"
    builds = (b for f in files for b in _csv_rows(f, image_dir, task))
    return collect(builds, lenient=lenient, limit=limit)


def _csv_rows(file: Path, image_dir: Path, task: str | None):
    with file.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise DatasetFormatError(f"{file}, line 1: missing column(s) {missing}; a CSV of the Cross-modal Information Flow subsets "
                                     f"has the columns {list(CSV_COLUMNS)}.")  # fmt: skip
        roles = _box_columns(file, header)
        file_task = task or file.stem.rsplit("_", 1)[-1]
        try:
            for row in reader:
                yield partial(_csv_sample, file, reader.line_num, row, roles, image_dir, file_task)
        except (csv.Error, UnicodeDecodeError) as err:
            raise DatasetFormatError(f"{file}, line {reader.line_num}: unreadable CSV ({err}); "
                                     "save the file as UTF-8 CSV with a header row.") from err  # fmt: skip


def _box_columns(file: Path, header: list[str]) -> dict[str, tuple[str, ...]]:
    """Role → its box columns: ``(x, y, w, h)`` names, or one name for a single box column."""
    roles: dict[str, dict[str, str]] = {}
    out: dict[str, tuple[str, ...]] = {}
    for col in header:
        if single := _SINGLE_BOX.match(col):
            out[single.group(1) or single.group(2)] = (col,)
        elif split := _SPLIT_BOX.match(col):
            roles.setdefault(split.group(1), {})[split.group(2)] = col
    for role, cols in roles.items():
        if len(cols) != 4:
            have = ", ".join(cols[k] for k in "xywh" if k in cols)
            raise DatasetFormatError(f"{file}, line 1: box of {role!r} has only the column(s) "
                                     f"{have}; give all four of '{role} x|y|w|h'.")  # fmt: skip
        out[role] = tuple(cols[k] for k in "xywh")
    return out


def _csv_sample(file, line, row, roles, image_dir, task) -> Sample:
    where = f"line {line}"
    if None in row or None in row.values():
        raise fail(file, where, "the row does not have as many fields as the header",
                   "quote fields holding commas and give one value per column")  # fmt: skip
    empty = [c for c in CSV_COLUMNS if not row[c].strip()]
    if empty:
        raise fail(file, where, f"empty required field(s) {empty}", "fill them in")
    boxes = {role: box for role, cols in roles.items() if (box := _box(file, where, row, cols))}
    used = set(CSV_COLUMNS) | {c for cols in roles.values() for c in cols}
    names = {r: row[f"{r} name"] for r in roles if row.get(f"{r} name", "") not in _ABSENT}
    true, false = row.get("true option", "").strip(), row.get("false option", "").strip()
    image_name = row["img_id"] if Path(row["img_id"]).suffix else f"{row['img_id']}.jpg"
    return Sample(
        id=row["question_id"], image=image_at(image_dir / image_name, file, where),
        question=row["question"], answer=row["answer"], task=row.get("type") or task,
        options=in_text_order([o for o in (true, false) if o], row["question"]),
        true_option=true or None, false_option=false or None, boxes=boxes,
        meta={"reader": "gqa-csv", "source": f"{file}:{line}", "image_id": row["img_id"],
              "names": names, "columns": {k: v for k, v in row.items() if k not in used}},
    )  # fmt: skip


def _box(file: Path, where: str, row: dict, cols: tuple[str, ...]) -> Box | None:
    values = [row[c].strip() for c in cols]
    if all(v in _ABSENT for v in values):
        return None
    try:
        if len(cols) == 1:
            parsed = ast.literal_eval(values[0])
            parsed = [parsed[k] for k in "xywh"] if isinstance(parsed, dict) else list(parsed)
        else:
            parsed = values
        x, y, w, h = (float(v) for v in parsed)
    except (ValueError, SyntaxError, TypeError, KeyError) as err:
        shown = ", ".join(f"{c}={row[c]!r}" for c in cols)
        raise fail(file, where, f"unreadable box {shown} ({err})",
                   "give numbers x, y, w, h (or '-' for no box)") from err  # fmt: skip
    return (x, y, x + w, y + h)
