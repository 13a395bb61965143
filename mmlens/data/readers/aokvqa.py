"""A-OKVQA (Schwenk et al. 2022), multiple-choice setting, on COCO 2017 images.

Official files (https://allenai.org/project/a-okvqa): ``aokvqa_v1p0_<split>.json`` is a list of
``{question_id, image_id, question, choices[4], correct_choice_idx, direct_answers[10],
difficult_direct_answer, rationales[3]}``; images are ``<coco>/<split>2017/<image_id:012d>.jpg``.
The test split has no ``correct_choice_idx`` and so cannot be read as a benchmark.
"""

from __future__ import annotations

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
    letter,
    load_json,
    require,
)
from mmlens.data.sample import Sample

_META_KEYS = ("direct_answers", "difficult_direct_answer", "rationales")


def read_aokvqa(
    path: str | Path,
    coco_dir: str | Path | None = None,
    *,
    split: str | None = None,
    lenient: bool = False,
    limit: int | None = None,
) -> ReadResult:
    """Read A-OKVQA multiple-choice questions.

    Args:
        path: The ``aokvqa_*.json`` file, or a folder holding exactly one.
        coco_dir: The COCO root holding ``<split>2017/``; default the first of ``coco/`` next
            to the file, ``../coco/`` (the official ``datasets/{aokvqa,coco}`` layout), or the
            file's own folder.
        split: ``train``/``val``/``test``; default from the file name (``..._val.json``).
        lenient: Skip bad records (listed in ``.skipped``) instead of raising.
        limit: Stop after this many samples.

    Returns:
        Samples with ``options`` = the four choices, ``answer`` = the correct letter,
        ``true_option``/``false_option`` = the correct and the first other choice, and the direct
        answers and rationales in ``meta``.

    Raises:
        DatasetFormatError: A missing file, field or image, or an answer index out of range.
    """
    path = Path(path)
    file = path if path.is_file() else find_one(path, "aokvqa*.json", "A-OKVQA file")
    if split is None:
        found = re.findall(r"train|val|test", file.stem)
        if not found:
            raise DatasetFormatError(f"{file}: cannot tell the split from the name; pass split='val'.")
        split = found[-1]
    if coco_dir is None:
        candidates = [file.parent / "coco", file.parent.parent / "coco", file.parent]
        coco_dir = next((c for c in candidates if (c / f"{split}2017").is_dir()), candidates[0])
    records = load_json(file, list, "an A-OKVQA list of questions")
    image_dir = Path(coco_dir) / f"{split}2017"
    builds = (partial(_question, file, image_dir, i, rec) for i, rec in enumerate(records))
    return collect(builds, lenient=lenient, limit=limit)


def _question(source: Path, image_dir: Path, index: int, rec: Any) -> Sample:
    qid = rec.get("question_id") if isinstance(rec, dict) else None
    where = f"record {index}" + (f" (question_id {qid!r})" if qid is not None else "")
    fields = {"question_id": str, "image_id": int, "question": str, "choices": list, "correct_choice_idx": int}
    require(rec, fields, source, where)
    choices, answer = rec["choices"], rec["correct_choice_idx"]
    if len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise fail(source, where, f"choices {choices!r}", "give at least two strings")
    if not 0 <= answer < len(choices):
        raise fail(source, where, f"correct_choice_idx {answer} with {len(choices)} choices", "give a 0-based index")
    return Sample(
        id=rec["question_id"], image=image_at(image_dir / f"{rec['image_id']:012d}.jpg", source, where),
        question=rec["question"], answer=letter(answer), task="aokvqa", options=tuple(choices),
        true_option=choices[answer], false_option=next(c for i, c in enumerate(choices) if i != answer),
        meta={"reader": "aokvqa", "source": f"{source}:{index}", "image_id": rec["image_id"],
              "answer_index": answer, **{k: rec[k] for k in _META_KEYS if k in rec}},
    )  # fmt: skip
