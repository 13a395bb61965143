"""The hooked models: vision encoder → projector → merge → decoder, with TransformerLens hook names."""

from mmlens.models.anyres import pack_image
from mmlens.models.decoder import HookedDecoder, KVCache, LayerPlan, SeqState, as_plan
from mmlens.models.generate import greedy_generate
from mmlens.models.vision_encoder import HookedVisionEncoder
from mmlens.models.vlm import HookedVLM

__all__ = [
    "HookedDecoder",
    "HookedVLM",
    "HookedVisionEncoder",
    "KVCache",
    "LayerPlan",
    "SeqState",
    "as_plan",
    "greedy_generate",
    "pack_image",
]
