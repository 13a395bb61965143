"""SigLIP vision towers (LLaVA-OneVision): no CLS, no pre-layernorm, biased patch conv."""

from __future__ import annotations

from typing import Any

from mmlens.adapters.registry import VISION_ADAPTERS, StateDict, register
from mmlens.adapters.vision_common import vit_config, vit_weights
from mmlens.config import VisionConfig


@register(VISION_ADAPTERS, "siglip_vision_model")
class SiglipVisionAdapter:
    def config(self, hf_config: Any, *, n_layers: int, **_: Any) -> VisionConfig:
        # The attention-pooling head is not part of what LLaVA reads (hidden states only).
        return vit_config(hf_config, n_layers, "siglip", has_cls=False, ln_pre=False, patch_bias=True,
                          unused=frozenset({"vision_use_head"}))

    def weights(self, hf_state: StateDict, cfg: VisionConfig) -> StateDict:
        return vit_weights(hf_state, cfg)
