"""POPE (Li et al. 2023): yes/no object-existence probes on COCO val2014 images.

Official files (https://github.com/RUCAIBox/POPE): ``coco_pope_{random,popular,adversarial}.json``
hold one JSON object per line, ``{"question_id": 1, "image": "COCO_val2014_000000310196.jpg",
"text": "Is there a snowboard in the image?", "label": "yes"}`` (LLaVA's copies add
``category``). The format is closed: any other field is an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from mmlens.data.readers.base import (
    DatasetFormatError,
    ReadResult,
    collect,
    fail,
    first_dir,
    image_at,
    reject_unknown,
    require,
)
from mmlens.data.sample import Sample

FIELDS = ("question_id", "image", "text", "label", "category")
"""Every field a POPE line may hold (``category`` only in LLaVA's copies)."""

LABELS = ("yes", "no")


def read_pope(
    path: str | Path,
    images: str | Path | None = None,
    *,
    lenient: bool = False,
    limit: int | None = None,
) -> ReadResult:
    """Read POPE questions; ``task`` is the variant, the file name's last ``_`` part.

    Args:
        path: One POPE file (``coco_pope_random.json``), or a folder whose ``*pope*.json`` and
            ``*pope*.jsonl`` files are all read (sorted by name).
        images: The COCO val2014 image folder; default the first of ``images/``, ``val2014/``
            next to the files, or their own folder.
        lenient: Skip bad lines (listed in ``.skipped``) instead of raising.
        limit: Stop after this many samples.

    Returns:
        Samples with ``id`` = ``"<variant>/<question_id>"`` (ids restart in every file),
        ``answer`` = the label, ``task`` = the variant (``"random"``, ``"popular"``, ...).

    Raises:
        DatasetFormatError: A missing file or image, a malformed line, a missing or unknown
            field, or a label other than ``yes``/``no``.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted({*path.glob("*pope*.json"), *path.glob("*pope*.jsonl")})
    if not files:
        raise DatasetFormatError(f"{path}: no POPE file found; give a coco_pope_<variant>.json file or its folder.")
    root = files[0].parent
    image_dir = Path(images) if images is not None else first_dir(root, ["images", "val2014", "."])
    builds = (b for f in files for b in _lines(f, image_dir))
    return collect(builds, lenient=lenient, limit=limit)


def _lines(file: Path, image_dir: Path) -> Iterator[partial]:
    variant = file.stem.rsplit("_", 1)[-1]
    try:
        lines = file.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f"{file}: not UTF-8 text ({err.reason}); POPE files are JSON lines.") from err
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield partial(_line, file, number, line, variant, image_dir)


def _line(file: Path, number: int, line: str, variant: str, image_dir: Path) -> Sample:
    where = f"line {number}"
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as err:
        fix = 'each line must be one object like {"question_id": 1, "image": ..., "text": ..., "label": "yes"}'
        raise fail(file, where, f"malformed JSON ({err.msg})", fix) from err
    require(rec, {"question_id": (int, str), "image": str, "text": str, "label": str}, file, where)
    reject_unknown(rec, FIELDS, file, where)
    if rec["label"] not in LABELS:
        raise fail(file, where, f"label {rec['label']!r}", "the label must be 'yes' or 'no'")
    return Sample(
        id=f"{variant}/{rec['question_id']}", image=image_at(image_dir / rec["image"], file, where),
        question=rec["text"], answer=rec["label"], task=variant,
        meta={"reader": "pope", "source": f"{file}:{number}", "question_id": rec["question_id"],
              "variant": variant, "category": rec.get("category")},
    )  # fmt: skip
