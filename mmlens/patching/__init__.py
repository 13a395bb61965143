"""Activation, path and attribution patching on clean/corrupt input pairs that line up.

``activation_patch`` (exact, one patched run per site, computed from cached runs),
``attribution_patch`` (first-order estimate from one forward and backward) and ``path_patch``
(a sender's effect through chosen receivers only) return a :class:`PatchingResult`;
:mod:`mmlens.patching.counterfactuals` builds the corrupt inputs.
"""

from mmlens.patching.activation import activation_patch
from mmlens.patching.attribution import attribution_patch
from mmlens.patching.counterfactuals import (
    Change,
    blur_box,
    check_aligned,
    fill_box,
    image_pair,
    move,
    noise_box,
    recolour,
    remove,
    swap,
    text_pair,
)
from mmlens.patching.errors import (
    CounterfactualError,
    DegenerateMetricError,
    ImageLayoutMismatchError,
    MisalignedInputsError,
    TokenLengthMismatchError,
)
from mmlens.patching.metrics import answer_prob, logit_diff
from mmlens.patching.path import path_patch
from mmlens.patching.result import PatchingResult
from mmlens.patching.sites import SITES

__all__ = [
    "SITES",
    "Change",
    "CounterfactualError",
    "DegenerateMetricError",
    "ImageLayoutMismatchError",
    "MisalignedInputsError",
    "PatchingResult",
    "TokenLengthMismatchError",
    "activation_patch",
    "answer_prob",
    "attribution_patch",
    "blur_box",
    "check_aligned",
    "fill_box",
    "image_pair",
    "logit_diff",
    "move",
    "noise_box",
    "path_patch",
    "recolour",
    "remove",
    "swap",
    "text_pair",
]
