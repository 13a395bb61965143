"""The one exception hierarchy of mmlens.

Every error a user can cause by passing bad input is an :class:`MMLensError` subclass whose
message says what was wrong and how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MMLensError(Exception):
    """Base class of every error mmlens raises on bad input."""


class UnsupportedArchitectureError(MMLensError):
    """The checkpoint uses an architecture or a config option mmlens does not implement."""


class ImageTokenMismatchError(MMLensError):
    """The prompt's image slots do not match the number of image features."""


class MissingImageSlotError(MMLensError):
    """A prompt was given images but has no image placeholder."""


class UnknownHookError(MMLensError, KeyError):
    """A hook name that the model does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class LayerOutOfRangeError(MMLensError, IndexError):
    """A layer index outside ``[-n_layers, n_layers)``."""


class BoxOutsideImageError(MMLensError, ValueError):
    """A pixel box that does not lie inside the original image."""


class EmptyGroupError(MMLensError, ValueError):
    """A token group that selects no position where at least one is required.

    Knocking out, attributing or sharing over an empty group would report "no effect"; callers
    that expect empty groups opt in with ``allow_empty=True`` and get NaN, never 0.0.
    """


EmptyTokenGroupError = EmptyGroupError
"""Former name of :class:`EmptyGroupError` (the same class)."""


class ForeignGroupError(MMLensError, ValueError):
    """Token groups built for one prompt used with another (other length or other token ids)."""


class UnknownWordError(MMLensError, ValueError):
    """A word the tokenizer cannot represent (it maps to the unknown token, or to no token)."""


class ContextLengthError(MMLensError, ValueError):
    """A prompt longer than the decoder's context (its ``n_ctx`` positions)."""


class CheckpointMismatchError(MMLensError):
    """A checkpoint whose tensors are not the model's: missing, unexpected or mis-shaped ones."""


class CorruptFileError(MMLensError):
    """A checkpoint file (weights, config.json, tokenizer, processor) that cannot be read."""


class HookReturnError(MMLensError, TypeError):
    """A hook function returned something other than None or a tensor of the activation's shape."""


class InvalidInputError(MMLensError, ValueError):
    """Model inputs of the wrong kind, rank, dtype or range, or an option value out of range."""


class UnknownCacheKeyError(MMLensError, KeyError):
    """A key that is not in an activation cache."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ProcessorUnavailableError(MMLensError):
    """A checkpoint's processor cannot be built here (e.g. a sub-processor needs a missing package)."""


class UnknownNameError(MMLensError, KeyError):
    """An unknown registered name (model, template, group, variant)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` candidates closest to ``name`` (for "did you mean" messages)."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.0)


def check_layer(layer: int, n_layers: int, what: str = "decoder") -> int:
    """Normalise a possibly negative layer index, raising :class:`LayerOutOfRangeError`.

    Args:
        layer: Index to check; negative counts from the end.
        n_layers: Number of layers of the tower.
        what: Name of the tower, for the message.

    Returns:
        The index in ``[0, n_layers)``.
    """
    if not -n_layers <= layer < n_layers:
        raise LayerOutOfRangeError(
            f"layer {layer} is out of range for the {what}, which has {n_layers} layers: "
            f"use 0..{n_layers - 1} (or -{n_layers}..-1 from the end)."
        )
    return layer % n_layers
