"""Errors of the patching package: every one says which inputs disagree and how to fix them."""

from __future__ import annotations

from mmlens.errors import MMLensError


class CounterfactualError(MMLensError, ValueError):
    """A counterfactual that cannot be built as asked (unknown object, no room to move it)."""


class MisalignedInputsError(MMLensError, ValueError):
    """Clean and corrupt inputs do not line up position by position, so activations cannot be swapped."""


class ImageLayoutMismatchError(MisalignedInputsError):
    """Two images give different image-token counts or (anyres) tile layouts."""


class TokenLengthMismatchError(MisalignedInputsError):
    """A replacement word tokenises to a different number of tokens than the word it replaces."""


class DegenerateMetricError(MMLensError, ValueError):
    """The metric is equal on the clean and the corrupt run, so normalised effects are undefined."""
