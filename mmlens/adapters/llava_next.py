"""LLaVA-NeXT (LLaVA-1.6, Llama-3-LLaVA-NeXT) checkpoints: ``LlavaNextForConditionalGeneration``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mmlens.adapters.llava import LlavaAdapter
from mmlens.adapters.registry import VLM_ADAPTERS, StateDict, register
from mmlens.config import VLMConfig
from mmlens.errors import UnsupportedArchitectureError


@register(VLM_ADAPTERS, "LlavaNextForConditionalGeneration")
class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-1.5's towers and projector plus anyres tiling and the learned ``image_newline``."""

    fields = LlavaAdapter.fields | {"image_grid_pinpoints"}
    # The llava-hf short prompt: the chat template differs between NeXT checkpoints (Vicuna, Mistral,
    # Llama-3; OneVision, which inherits this, Qwen2), so the family default is the one prompt with no
    # model-specific tokens.
    template = "llava_hf"

    def config(self, hf_config: Any) -> VLMConfig:
        pinpoints = tuple(tuple(int(v) for v in p) for p in hf_config.image_grid_pinpoints)
        cfg = super().config(hf_config)
        if cfg.image_seq_length != cfg.vision.n_patches:
            # Tiles are laid out as patch grids: a kept CLS or a dropped first SigLIP patch breaks that.
            raise UnsupportedArchitectureError(
                f"{type(self).__name__}: vision_feature_select_strategy="
                f"{hf_config.vision_feature_select_strategy!r} with a {cfg.vision.family} tower gives "
                f"{cfg.image_seq_length} features per view, not a {cfg.vision.grid}x{cfg.vision.grid} "
                "grid; anyres needs 'default' for CLIP towers and 'full' for SigLIP towers."
            )
        return replace(cfg, image_grid_pinpoints=pinpoints, architecture="LlavaNextForConditionalGeneration")

    def weights(self, hf_state: StateDict, cfg: VLMConfig) -> StateDict:
        out = super().weights(hf_state, cfg)
        out["image_newline"] = hf_state["model.image_newline"]
        return out
