"""COCO-style caption files (COCO Captions, NoCaps, Flickr30k in COCO format, CHAIR sets).

The format is COCO's: ``{"images": [{"id", "file_name", ...}], "annotations": [{"image_id",
"caption", ...}]}``. One sample per image, in ``images`` order; the question is empty because
the captioning instruction comes from the prompt builder.
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
    find_one,
    first_dir,
    image_at,
    load_json,
    require,
)
from mmlens.data.sample import Sample


def read_captions(
    path: str | Path,
    images: str | Path | None = None,
    *,
    lenient: bool = False,
    limit: int | None = None,
) -> ReadResult:
    """Read a COCO-format caption file: one sample per image with all its captions.

    Args:
        path: The captions JSON, or a folder holding exactly one ``*.json``.
        images: Image folder holding each ``file_name``; default the first of ``images/``
            next to the file, or its own folder.
        lenient: Skip bad images or annotations (listed in ``.skipped``) instead of raising.
        limit: Stop after this many samples.

    Returns:
        Samples with ``question`` = ``""``, ``answer`` = the image's first caption (``""`` when
        it has none, as in test sets) and every caption in ``meta["captions"]``.

    Raises:
        DatasetFormatError: A missing file, field or image, or an annotation naming an image
            id that ``images`` does not list.
    """
    path = Path(path)
    file = path if path.is_file() else find_one(path, "*.json", "caption file")
    data = load_json(file, dict, 'a COCO caption object {"images": [...], "annotations": [...]}')
    entries, notes = data.get("images"), data.get("annotations", [])
    if not isinstance(entries, list) or not isinstance(notes, list):
        raise DatasetFormatError(f'{file}: "images" and "annotations" must be lists; see the COCO caption format.')
    ids = {e["id"] for e in entries if isinstance(e, dict) and "id" in e}
    captions: dict[Any, list[str]] = {}
    skipped: list[str] = []
    for i, note in enumerate(notes):
        try:
            require(note, {"image_id": (int, str), "caption": str}, file, f"annotations[{i}]")
            if note["image_id"] not in ids:
                raise fail(file, f"annotations[{i}]", f"image_id {note['image_id']!r} is not in images",
                           "add the image or drop the annotation")  # fmt: skip
        except DatasetFormatError as err:
            if not lenient:
                raise
            skipped.append(str(err))
            continue
        captions.setdefault(note["image_id"], []).append(note["caption"])
    image_dir = Path(images) if images is not None else first_dir(file.parent, ["images", "."])
    builds = (partial(_image, file, image_dir, i, e, captions) for i, e in enumerate(entries))
    return collect(builds, lenient=lenient, limit=limit, skipped=skipped)


def _image(source: Path, image_dir: Path, index: int, entry: Any, captions: dict) -> Sample:
    where = f"images[{index}]"
    require(entry, {"id": (int, str), "file_name": str}, source, where)
    texts = captions.get(entry["id"], [])
    return Sample(
        id=str(entry["id"]), image=image_at(image_dir / entry["file_name"], source, where),
        question="", answer=texts[0] if texts else "", task="caption",
        meta={"reader": "captions", "source": f"{source}:{index}", "image_id": entry["id"],
              "file_name": entry["file_name"], "captions": list(texts)},
    )  # fmt: skip
