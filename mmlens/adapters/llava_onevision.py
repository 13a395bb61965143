"""LLaVA-OneVision checkpoints: ``LlavaOnevisionForConditionalGeneration``.

SigLIP tower (all patches, last layer by default), two-layer projector, Qwen2 decoder, and the
anyres layout of LLaVA-NeXT with one addition: ``vision_aspect_ratio="anyres_max_N"`` shrinks
a large un-padded tile grid to about N views' worth of patches.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from mmlens.adapters.llava_next import LlavaNextAdapter
from mmlens.adapters.registry import VLM_ADAPTERS, register
from mmlens.config import VLMConfig
from mmlens.errors import UnsupportedArchitectureError

ANYRES_MAX = re.compile(r"anyres_max_(\d+)")


@register(VLM_ADAPTERS, "LlavaOnevisionForConditionalGeneration")
class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-NeXT's layout and weights plus the ``anyres_max_N`` patch budget (images only)."""

    # Videos are not supported, so the video placeholder id never matters.
    fields = LlavaNextAdapter.fields | {"vision_aspect_ratio", "video_token_index", "video_token_id"}

    def config(self, hf_config: Any) -> VLMConfig:
        aspect = getattr(hf_config, "vision_aspect_ratio", "anyres_max_9")
        match = ANYRES_MAX.fullmatch(str(aspect))
        if match is None or int(match.group(1)) < 1:
            raise UnsupportedArchitectureError(
                f"llava_onevision: vision_aspect_ratio={aspect!r} is not supported; mmlens implements "
                "'anyres_max_N' (N >= 1), the value every released OneVision checkpoint uses."
            )
        return replace(super().config(hf_config), anyres_max_patches=int(match.group(1)),
                       architecture="LlavaOnevisionForConditionalGeneration")
