"""ScienceQA (Lu et al. 2022): the image subset (IMG) of one split, as LLaVA evaluates it.

Official files (https://scienceqa.github.io): ``problems.json`` maps a problem id to
``{question, choices[], answer (0-based index), hint, image (file name or null), split,
subject, topic, category, grade, lecture, solution, ...}``; ``pid_splits.json`` maps
``train``/``val``/``test`` (and ``minival``, ...) to problem ids; images are
``<split>/<pid>/image.png`` (the release's ``images/<split>/...`` works too).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from mmlens.data.readers.base import (
    DatasetFormatError,
    ReadResult,
    collect,
    fail,
    first_dir,
    image_at,
    letter,
    load_json,
    require,
)
from mmlens.data.sample import Sample

MAX_CHOICES = 5
"""ScienceQA problems have 2 to 5 choices, lettered A to E."""

_META_KEYS = ("hint", "subject", "topic", "category", "skill", "grade", "lecture", "solution")


def read_scienceqa(
    path: str | Path,
    split: str = "test",
    *,
    images: str | Path | None = None,
    lenient: bool = False,
    limit: int | None = None,
) -> ReadResult:
    """Read the problems of ``split`` that have an image (text-only problems are left out).

    Args:
        path: The folder holding ``problems.json`` and ``pid_splits.json`` (or ``problems.json``).
        split: A key of ``pid_splits.json``.
        images: The split's image folder (holding ``<pid>/image.png``); default ``<split>/``
            or ``images/<split>/`` under ``path``.
        lenient: Skip bad problems (listed in ``.skipped``) instead of raising.
        limit: Stop after this many samples.

    Returns:
        Samples with ``options`` = the choices, ``answer`` = the correct letter (``"B"``, what
        LLaVA's ScienceQA evaluation expects), ``true_option`` = the correct choice,
        ``false_option`` = the first other choice, and the hint, subject, lecture... in ``meta``.

    Raises:
        DatasetFormatError: A missing file, split, field or image, or an answer out of range.
    """
    path = Path(path)
    root = path.parent if path.is_file() else path
    problems_file = path if path.is_file() else root / "problems.json"
    problems = load_json(problems_file, dict, "ScienceQA problems (pid → problem)")
    splits_file = root / "pid_splits.json"
    splits = load_json(splits_file, dict, 'ScienceQA splits ({"train": [pid, ...], ...})')
    if not isinstance(splits.get(split), list):
        raise DatasetFormatError(f"{splits_file}: no split {split!r}; choose one of {sorted(splits)}.")
    image_dir = Path(images) if images is not None else first_dir(root, [split, f"images/{split}"])
    builds = (partial(_problem, problems_file, image_dir, split, str(pid), problems.get(str(pid)))
              for pid in splits[split])  # fmt: skip
    return collect(builds, lenient=lenient, limit=limit)


def _problem(source: Path, image_dir: Path, split: str, pid: str, problem: Any) -> Sample | None:
    where = f"problem {pid!r}"
    if problem is None:
        raise fail(source, where, "listed in pid_splits.json but absent",
                   "use problems.json and pid_splits.json of the same release")  # fmt: skip
    require(problem, {"question": str, "choices": list, "answer": int}, source, where)
    if "image" not in problem:
        raise fail(source, where, "missing field 'image'", "give the image file name (null: text-only)")
    if problem["image"] is None:
        return None
    choices = problem["choices"]
    if not 2 <= len(choices) <= MAX_CHOICES or not all(isinstance(c, str) for c in choices):
        raise fail(source, where, f"choices {choices!r}", f"give 2 to {MAX_CHOICES} strings")
    index = problem["answer"]
    if not 0 <= index < len(choices):
        raise fail(source, where, f"answer index {index} with {len(choices)} choices",
                   "give a 0-based index into choices")  # fmt: skip
    return Sample(
        id=pid, image=image_at(image_dir / pid / str(problem["image"]), source, where),
        question=problem["question"], answer=letter(index), task="scienceqa",
        options=tuple(choices), true_option=choices[index],
        false_option=next(c for i, c in enumerate(choices) if i != index),
        meta={"reader": "scienceqa", "source": f"{source}:{pid}", "split": split, "answer_index": index,
              **{k: problem[k] for k in _META_KEYS if k in problem}},
    )  # fmt: skip
