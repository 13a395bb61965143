"""What every dataset reader shares: the format error, the result list, lazy images, validation.

Readers turn public benchmark files into :class:`~mmlens.data.sample.Sample` lists. A record
that does not match the documented format raises :class:`DatasetFormatError` naming the file,
the line or record key and what to fix; with ``lenient=True`` the record is skipped instead
and its message kept in :attr:`ReadResult.skipped`. File-level problems (a missing or
unparsable file, a wrong top-level structure, a CSV header without required columns) always
raise: no record of such a file can be trusted.

Everything a study needs from a record is checked when it is read, not mid-run: each image is
opened and decoded (a missing, unreadable or truncated file is an error naming the record),
each box must lie inside its image (up to :data:`BOX_SLACK` pixels of rounding), and sample
ids must be unique (they key resumable runs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from mmlens.data.sample import Sample
from mmlens.errors import MMLensError


class DatasetFormatError(MMLensError, ValueError):
    """A dataset file or record that does not match its documented format."""


class ReadResult(list):
    """The samples a reader produced (a plain ``list`` of :class:`Sample`) plus what it skipped.

    Attributes:
        skipped: One message per record skipped under ``lenient=True`` (file, record, problem).
    """

    def __init__(self, samples: Iterable[Sample] = (), skipped: Iterable[str] = ()) -> None:
        super().__init__(samples)
        self.skipped: list[str] = list(skipped)


@dataclass(frozen=True)
class ImageFile:
    """A zero-argument image loader: readers store these so images are opened only when used.

    Attributes:
        path: The image file; it is opened and decoded when the sample is read.
        size: ``(width, height)`` found when it was read (None when not checked).
    """

    path: Path
    size: tuple[int, int] | None = None

    def __call__(self) -> Image.Image:
        """Open and fully load the image (the file handle is closed on return)."""
        with Image.open(self.path) as img:
            img.load()
            return img


Build = Callable[[], Sample | None]
"""Builds one sample from one record, raises :class:`DatasetFormatError`, or returns ``None``
for a well-formed record the reader leaves out by design (e.g. ScienceQA's text-only problems)."""


def collect(
    builds: Iterable[Build], *, lenient: bool, limit: int | None, skipped: Sequence[str] = ()
) -> ReadResult:
    """Run record builders until ``limit`` samples are made, raising or skipping bad records.

    Args:
        builds: One builder per record, in file order (lazily, so ``limit`` stops early).
        lenient: Skip records that raise :class:`DatasetFormatError` instead of raising.
        limit: Stop after this many samples (``None``: read everything).
        skipped: Messages of records already skipped by a pre-pass of the reader.

    Returns:
        The samples and the skip messages.
    """
    if limit is not None and limit < 0:
        raise MMLensError(f"limit must be >= 0 or None, got {limit}.")
    out = ReadResult(skipped=skipped)
    if limit == 0:
        return out
    seen: dict[str, str] = {}
    for build in builds:
        try:
            sample = build()
            if sample is not None:
                check_sample(sample, seen)
        except DatasetFormatError as err:
            if not lenient:
                raise
            out.skipped.append(str(err))
            continue
        if sample is not None:
            out.append(sample)
            if limit is not None and len(out) >= limit:
                break
    return out


BOX_SLACK = 1.0
"""Pixels a box may pass the image edge by (annotation rounding) before it is an error."""


def check_sample(sample: Sample, seen: dict[str, str]) -> None:
    """Raise when ``sample`` repeats an id in ``seen`` (id → source; updated) or holds a box
    past the edge of its image; the message starts with the record's ``file:line``."""
    source = str(sample.meta.get("source", sample.id))
    if sample.id in seen:
        raise DatasetFormatError(f"{source}: duplicate sample id {sample.id!r} (first at {seen[sample.id]}); "
                                 "give every record a unique id: ids key resumable runs.")  # fmt: skip
    size = sample.image.size if isinstance(sample.image, ImageFile) else None
    if size is not None:
        w, h = size
        for role, (x0, y0, x1, y1) in sample.boxes.items():
            if not (-BOX_SLACK <= x0 < x1 <= w + BOX_SLACK and -BOX_SLACK <= y0 < y1 <= h + BOX_SLACK):
                raise DatasetFormatError(
                    f"{source}: box {role!r} (x0, y0, x1, y1) = {(x0, y0, x1, y1)} lies outside its image "
                    f"{sample.image.path.name} of {w}x{h} pixels; fix the box (x, y, w, h in pixels of the "
                    "original image) or the image."
                )
    seen[sample.id] = source


def fail(path: Path | str, where: str, problem: str, fix: str) -> DatasetFormatError:
    """The error for one bad record: ``"<file>, <where>: <problem>; <fix>"`` (raise it)."""
    return DatasetFormatError(f"{path}, {where}: {problem}; {fix}")


def load_json(path: Path, expect: type, what: str) -> Any:
    """Parse a whole JSON file whose top level must be ``expect`` (``dict`` or ``list``).

    Raises:
        DatasetFormatError: The file is missing, is not valid JSON, or has the wrong top level.
    """
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file not found; expected {what} there.")
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(
            f"{path}, line {err.lineno} column {err.colno}: malformed JSON ({err.msg}); "
            f"the file must be {what}."
        ) from err
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f"{path}: not UTF-8 text ({err.reason}); the file must be {what}.") from err
    if not isinstance(data, expect):
        raise DatasetFormatError(
            f"{path}: top level is a JSON {type(data).__name__}, expected a JSON "
            f"{'object' if expect is dict else 'array'}; the file must be {what}."
        )
    return data


_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object"}


def require(record: Any, fields: Mapping[str, type | tuple[type, ...]], path: Path, where: str) -> None:
    """Check that ``record`` is a JSON object holding every field with the right type.

    Raises:
        DatasetFormatError: Naming the missing or mistyped fields.
    """
    if not isinstance(record, dict):
        raise fail(path, where, f"expected a JSON object, got {type(record).__name__}", "fix the record")
    missing = [name for name in fields if record.get(name) is None]
    if missing:
        raise fail(path, where, f"missing required field(s) {missing}", f"add {missing} to the record")
    for name, kind in fields.items():
        value = record[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            want = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
            raise fail(path, where, f"field {name!r} is {value!r}", f"it must be {want}")


def reject_unknown(record: dict, allowed: Iterable[str], path: Path, where: str) -> None:
    """Raise when a record of a closed format holds a field the format does not define."""
    unknown = sorted(set(record) - set(allowed))
    if unknown:
        raise fail(path, where, f"unknown field(s) {unknown}", f"this format holds only {sorted(allowed)}")


def image_at(path: Path, source: Path, where: str) -> ImageFile:
    """A lazy loader for ``path`` with its size, raising now when the image file is missing,
    not an image, or truncated (it is decoded once; the pixels are not kept)."""
    if not path.is_file():
        raise fail(
            source, where, f"image file {path} is missing",
            "put the image there or point the reader at the image folder (images=...)",
        )
    stat = path.stat()
    try:
        size = _decoded_size(str(path), stat.st_mtime_ns, stat.st_size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise fail(source, where, f"image file {path} cannot be read ({type(err).__name__}: {err})",
                   "replace it with a valid image file (JPEG, PNG, ...)") from err  # fmt: skip
    return ImageFile(path, size)


@lru_cache(maxsize=65536)
def _decoded_size(path: str, mtime_ns: int, nbytes: int) -> tuple[int, int]:
    """Decode an image once per file version (many questions share an image); its size."""
    with Image.open(path) as img:
        img.load()
        return img.size


def first_dir(root: Path, names: Sequence[str]) -> Path:
    """The first existing folder ``root/name``, else ``root/names[0]`` (so errors name it)."""
    for name in names:
        if (root / name).is_dir():
            return root / name
    return root / names[0]


def find_one(root: Path, pattern: str, what: str) -> Path:
    """The single file in ``root`` matching ``pattern``; raises when there are none or several."""
    found = sorted(root.glob(pattern))
    if len(found) != 1:
        listing = ", ".join(p.name for p in found) or "none"
        raise DatasetFormatError(
            f"{root}: expected exactly one {what} matching {pattern!r}, found {listing}; "
            "pass the file itself instead of the folder."
        )
    return found[0]


def letter(index: int) -> str:
    """Option letter for a 0-based index: 0 → ``"A"``."""
    return chr(ord("A") + index)


def in_text_order(options: Sequence[str], text: str) -> tuple[str, ...]:
    """Options sorted by where they first occur in ``text`` (absent ones last, order kept)."""
    lowered = text.lower()

    def position(option: str) -> int:
        found = re.search(rf"\b{re.escape(option.lower())}\b", lowered)
        return found.start() if found else len(text)

    return tuple(sorted(options, key=position))
