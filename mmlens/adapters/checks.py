"""Checks that a checkpoint directory is readable and that its tensors are exactly the model's.

``transformers`` initialises a tensor missing from ``model.safetensors`` at random and says so
only in a log table; mmlens refuses such a checkpoint, since every number it reports would
come from weights that are not the checkpoint's. Unreadable files get an error naming the file
instead of the library's own (often a JSON or Rust parse error with no path).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from mmlens.errors import CheckpointMismatchError, CorruptFileError

# JSON files a checkpoint directory may hold; each must parse when present.
JSON_FILES = (
    "config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
    "processor_config.json", "preprocessor_config.json", "model.safetensors.index.json",
)


def check_files(path: str | Path) -> None:
    """Raise :class:`CorruptFileError` naming the first file of ``path`` that cannot be read.

    Reads every JSON file of :data:`JSON_FILES`, the header of every ``*.safetensors`` file and
    ``tokenizer.json`` (with the ``tokenizers`` library), without loading any tensor.

    Args:
        path: A local checkpoint directory.

    Raises:
        CorruptFileError: a file that does not parse, with the parser's complaint.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CorruptFileError(f"{path} has no config.json: a Hugging Face checkpoint directory needs one.")
    for name in JSON_FILES:
        file = path / name
        if file.is_file():
            try:
                json.loads(file.read_text())
            except (ValueError, UnicodeDecodeError) as err:
                raise _corrupt(file, err) from err
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except Exception as err:  # safetensors raises its own Rust-side error types
            raise _corrupt(file, err) from err
    tokenizer = path / "tokenizer.json"
    if tokenizer.is_file():
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(tokenizer))
        except Exception as err:  # tokenizers raises a bare Exception subclass from Rust
            raise _corrupt(tokenizer, err) from err


def _corrupt(file: Path, err: BaseException) -> CorruptFileError:
    return CorruptFileError(
        f"cannot read {file} ({type(err).__name__}: {str(err)[:200]}): the file is corrupt or truncated; "
        "download or save the checkpoint again."
    )


def check_loading_info(info: Mapping[str, Iterable], path: str | Path) -> None:
    """Raise :class:`CheckpointMismatchError` if ``transformers`` reported any tensor it could not load.

    Args:
        info: The ``loading_info`` of ``from_pretrained(..., output_loading_info=True,
            ignore_mismatched_sizes=True)``.
        path: The checkpoint, for the message.

    Raises:
        CheckpointMismatchError: naming the missing, unexpected and mis-shaped tensors.
    """
    problems = []
    for key, what in (("missing_keys", "missing (would be randomly initialised)"),
                      ("unexpected_keys", "unexpected (not in the model)"),
                      ("mismatched_keys", "of the wrong shape")):
        entries = sorted(_describe(e) for e in info.get(key) or ())
        if entries:
            shown = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
            problems.append(f"{len(entries)} tensor(s) {what}: {shown}")
    if problems:
        raise CheckpointMismatchError(
            f"the weights in {path} do not match the model its config.json describes; "
            + "; ".join(problems)
            + ". Use the checkpoint's own config.json, or re-save the weights from the model they belong to."
        )


def _describe(entry: object) -> str:
    """A key, or ``key (checkpoint shape vs model shape)`` for a mismatched entry."""
    if isinstance(entry, tuple) and len(entry) == 3:
        key, ckpt, model = entry
        return f"{key} (checkpoint {tuple(ckpt)} vs model {tuple(model)})"
    return str(entry)
