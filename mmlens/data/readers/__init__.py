"""Readers for real benchmarks, from local files in their public formats (nothing is downloaded).

Every reader is ``read_<name>(path, ..., *, lenient=False, limit=None) -> ReadResult``: a list
of :class:`~mmlens.data.sample.Sample` whose ``.skipped`` lists the records left out under
``lenient=True``. ``docs/datasets.md`` gives each expected folder layout.

Example:
    >>> samples = load_dataset("pope:/data/pope/coco_pope_random.json", n=100)  # doctest: +SKIP
    >>> samples[0].task, samples[0].answer  # doctest: +SKIP
    ('random', 'yes')
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mmlens.data.readers.aokvqa import read_aokvqa
from mmlens.data.readers.base import DatasetFormatError, ImageFile, ReadResult
from mmlens.data.readers.captions import read_captions
from mmlens.data.readers.gqa import read_gqa, read_gqa_csv
from mmlens.data.readers.pope import read_pope
from mmlens.data.readers.scienceqa import read_scienceqa
from mmlens.data.readers.textvqa import read_textvqa
from mmlens.errors import MMLensError, UnknownNameError, closest

Reader = Callable[..., ReadResult]
"""``reader(path, *, lenient, limit) -> ReadResult``; other arguments keep their defaults."""

READERS: dict[str, Reader] = {
    "gqa": read_gqa,
    "gqa-csv": read_gqa_csv,
    "scienceqa": read_scienceqa,
    "aokvqa": read_aokvqa,
    "pope": read_pope,
    "textvqa": read_textvqa,
    "captions": read_captions,
}
"""Reader name (the part before ``:`` in a ``--data`` spec) → reader."""


def load_dataset(spec: str, *, n: int | None = None, lenient: bool = False) -> ReadResult:
    """Read the dataset a ``<reader>:<path>`` spec names (``"gqa-csv:/data/gqa-subsets"``).

    Args:
        spec: A reader name from :data:`READERS`, a colon, and a file or folder (layouts in
            ``docs/datasets.md``).
        n: Read at most this many samples (``None``: all).
        lenient: Skip malformed records (listed in ``.skipped``) instead of raising.

    Returns:
        The samples, with ``.skipped``.

    Raises:
        UnknownNameError: The reader name is not registered; the message lists the valid ones.
        MMLensError: The spec has no path.
        DatasetFormatError: The files do not match the reader's format.
    """
    name, _, path = spec.partition(":")
    if name not in READERS:
        raise UnknownNameError(
            f"unknown dataset reader {name!r} in {spec!r}: valid readers are {sorted(READERS)} "
            f"(did you mean {closest(name, READERS, n=1)[0]!r}?); write the spec as <reader>:<path>."
        )
    if not path:
        raise MMLensError(f"dataset spec {spec!r} has no path: write it as {name}:<file or folder>.")
    return READERS[name](Path(path).expanduser(), lenient=lenient, limit=n)


__all__ = [
    "READERS",
    "DatasetFormatError",
    "ImageFile",
    "ReadResult",
    "load_dataset",
    "read_aokvqa",
    "read_captions",
    "read_gqa",
    "read_gqa_csv",
    "read_pope",
    "read_scienceqa",
    "read_textvqa",
]
