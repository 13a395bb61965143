"""TextVQA (Singh et al. 2019): questions about text in images, ten human answers each.

Official files (https://textvqa.org): ``TextVQA_0.5.1_<split>.json`` is ``{"dataset_name":
"textvqa", ..., "data": [{question_id, image_id, question, answers[10], image_classes,
flickr_original_url, image_width, image_height, set_name, ...}]}``; the train and val images
are both in ``train_images/<image_id>.jpg``.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

from mmlens.data.readers.base import ReadResult, collect, fail, find_one, first_dir, image_at, load_json, require
from mmlens.data.sample import Sample

_META_KEYS = ("image_classes", "set_name", "image_width", "image_height", "ocr_tokens")


def read_textvqa(
    path: str | Path,
    images: str | Path | None = None,
    *,
    lenient: bool = False,
    limit: int | None = None,
) -> ReadResult:
    """Read TextVQA questions with all ten answers.

    Args:
        path: The ``TextVQA_*.json`` file, or a folder holding exactly one.
        images: Image folder; default the first of ``train_images/``, ``images/`` next to the
            file, or its own folder.
        lenient: Skip bad records (listed in ``.skipped``) instead of raising.
        limit: Stop after this many samples.

    Returns:
        Samples with ``answer`` = the most frequent raw answer string (ties: the first given)
        and every answer in ``meta["answers"]`` (score with :func:`mmlens.metrics.vqa_accuracy`).

    Raises:
        DatasetFormatError: A missing file, field or image, or an empty answer list.
    """
    path = Path(path)
    file = path if path.is_file() else find_one(path, "TextVQA*.json", "TextVQA file")
    data = load_json(file, dict, 'a TextVQA object {"data": [...]}')
    records = data.get("data")
    if not isinstance(records, list):
        raise fail(file, 'top level "data"', "missing or not a list", 'the file must be {"data": [question, ...]}')
    image_dir = Path(images) if images is not None else first_dir(file.parent, ["train_images", "images", "."])
    builds = (partial(_question, file, image_dir, i, rec) for i, rec in enumerate(records))
    return collect(builds, lenient=lenient, limit=limit)


def _question(source: Path, image_dir: Path, index: int, rec: Any) -> Sample:
    qid = rec.get("question_id") if isinstance(rec, dict) else None
    where = f"data[{index}]" + (f" (question_id {qid!r})" if qid is not None else "")
    require(rec, {"question_id": (int, str), "image_id": str, "question": str, "answers": list}, source, where)
    answers = rec["answers"]
    if not answers or not all(isinstance(a, str) for a in answers):
        raise fail(source, where, f"answers {answers!r}", "give the list of human answers (strings)")
    return Sample(
        id=str(rec["question_id"]), image=image_at(image_dir / f"{rec['image_id']}.jpg", source, where),
        question=rec["question"], answer=Counter(answers).most_common(1)[0][0], task="textvqa",
        meta={"reader": "textvqa", "source": f"{source}:{index}", "image_id": rec["image_id"],
              "answers": list(answers), **{k: rec[k] for k in _META_KEYS if k in rec}},
    )  # fmt: skip
