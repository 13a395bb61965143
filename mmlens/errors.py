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


class EmptyTokenGroupError(MMLensError, ValueError):
    """A token group that selects no position where at least one is required."""


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
