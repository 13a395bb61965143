"""CLIP vision towers (LLaVA-1.5, LLaVA-NeXT): CLS token, pre-layernorm, bias-free patch conv."""

from __future__ import annotations

from typing import Any

from mmlens.adapters.registry import VISION_ADAPTERS, StateDict, register
from mmlens.adapters.vision_common import vit_config, vit_weights
from mmlens.config import VisionConfig


@register(VISION_ADAPTERS, "clip_vision_model")
class ClipVisionAdapter:
    def config(self, hf_config: Any, *, n_layers: int, **_: Any) -> VisionConfig:
        # The projection to CLIP's joint space is not part of the vision tower LLaVA reads.
        return vit_config(hf_config, n_layers, "clip", has_cls=True, ln_pre=True, patch_bias=False,
                          unused=frozenset({"projection_dim"}))

    def weights(self, hf_state: StateDict, cfg: VisionConfig) -> StateDict:
        return vit_weights(hf_state, cfg)
