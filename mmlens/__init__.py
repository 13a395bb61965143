"""mmlens: the TransformerLens of multimodal LLMs."""

from mmlens.errors import (
    BoxOutsideImageError,
    EmptyTokenGroupError,
    ImageTokenMismatchError,
    LayerOutOfRangeError,
    MissingImageSlotError,
    MMLensError,
    ProcessorUnavailableError,
    UnknownHookError,
    UnknownNameError,
    UnsupportedArchitectureError,
)
from mmlens.models.decoder import HookedDecoder
from mmlens.models.vlm import HookedVLM

__all__ = [
    "BoxOutsideImageError",
    "EmptyTokenGroupError",
    "HookedDecoder",
    "HookedVLM",
    "ImageTokenMismatchError",
    "LayerOutOfRangeError",
    "MMLensError",
    "MissingImageSlotError",
    "ProcessorUnavailableError",
    "UnknownHookError",
    "UnknownNameError",
    "UnsupportedArchitectureError",
]
