"""mmlens: the TransformerLens of multimodal LLMs.

What a notebook needs::

    from mmlens import HookedVLM, sample_inputs
    model = HookedVLM.from_pretrained("shapes-llava")
    inputs = model.prepare(image, "Is the circle red?")   # MMInputs, with inputs.groups (TokenGroups)
    logits, cache = model.run_with_cache(inputs)

Everything else lives in the subpackages, each exporting its public names: ``mmlens.inputs``,
``mmlens.interventions``, ``mmlens.pruning``, ``mmlens.analysis``, ``mmlens.studies``,
``mmlens.viz``, ``mmlens.data``, ``mmlens.zoo``.
"""

from mmlens.errors import (
    BoxOutsideImageError,
    CheckpointMismatchError,
    ContextLengthError,
    CorruptFileError,
    EmptyGroupError,
    EmptyTokenGroupError,
    ForeignGroupError,
    HookReturnError,
    ImageTokenMismatchError,
    InvalidInputError,
    LayerOutOfRangeError,
    MissingImageSlotError,
    MMLensError,
    ProcessorUnavailableError,
    UnknownCacheKeyError,
    UnknownHookError,
    UnknownNameError,
    UnknownWordError,
    UnsupportedArchitectureError,
)
from mmlens.inputs import MMInputs, TokenGroups, sample_inputs
from mmlens.models import HookedDecoder, HookedVLM

__all__ = [
    "BoxOutsideImageError",
    "CheckpointMismatchError",
    "ContextLengthError",
    "CorruptFileError",
    "EmptyGroupError",
    "EmptyTokenGroupError",
    "ForeignGroupError",
    "HookReturnError",
    "HookedDecoder",
    "HookedVLM",
    "ImageTokenMismatchError",
    "InvalidInputError",
    "LayerOutOfRangeError",
    "MMInputs",
    "MMLensError",
    "MissingImageSlotError",
    "ProcessorUnavailableError",
    "TokenGroups",
    "UnknownCacheKeyError",
    "UnknownHookError",
    "UnknownNameError",
    "UnknownWordError",
    "UnsupportedArchitectureError",
    "sample_inputs",
]
