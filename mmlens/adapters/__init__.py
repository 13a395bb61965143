"""Checkpoint adapters: the only place that knows Hugging Face names.

Importing this package registers every family (one module each); :func:`load_checkpoint`
turns a registered name, a directory or a loaded ``transformers`` model into mmlens' config
and state dict, and :func:`load_decoder_checkpoint` does the same for a text-only decoder.
"""

# Importing the family modules registers them.
from mmlens.adapters import clip, llama, llava, llava_next, llava_onevision, mistral, qwen2, siglip  # noqa: F401
from mmlens.adapters import internvit, internvl  # noqa: F401
from mmlens.adapters import instructblip  # noqa: F401
from mmlens.adapters import qwen2_vl, qwen2_5_vl  # noqa: F401
from mmlens.adapters.loader import as_dtype, load_checkpoint, load_decoder_checkpoint
from mmlens.adapters.processors import load_processor
from mmlens.adapters.registry import DECODER_ADAPTERS, VISION_ADAPTERS, VLM_ADAPTERS

__all__ = [
    "DECODER_ADAPTERS",
    "VISION_ADAPTERS",
    "VLM_ADAPTERS",
    "as_dtype",
    "load_checkpoint",
    "load_decoder_checkpoint",
    "load_processor",
]
