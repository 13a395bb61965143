"""LLaVA-1.5 style checkpoints: ``LlavaForConditionalGeneration``."""

from __future__ import annotations

from typing import Any

from mmlens.adapters.registry import (
    language_model_state,
    DECODER_ADAPTERS,
    VISION_ADAPTERS,
    VLM_ADAPTERS,
    StateDict,
    lookup,
    register,
    reject,
    require_defaults,
    select,
)
from mmlens.config import ProjectorConfig, VLMConfig, feature_indices


@register(VLM_ADAPTERS, "LlavaForConditionalGeneration")
class LlavaAdapter:
    """Vision tower + two-layer projector + decoder, image features scattered into placeholders."""

    # Top-level config fields this adapter translates; any other must hold its default.
    fields = frozenset({
        "text_config", "vision_config", "image_token_index", "image_token_id", "image_seq_length",
        "projector_hidden_act", "vision_feature_select_strategy", "vision_feature_layer",
        "multimodal_projector_bias", "tie_word_embeddings",
    })
    # The prompt template ``prepare`` uses by default (mmlens.inputs.templates): LLaVA-1.5's conversation.
    template = "vicuna_v1"

    def config(self, hf_config: Any) -> VLMConfig:
        require_defaults(hf_config, self.fields, type(hf_config).__name__)
        reject(hf_config, {"vision_feature_select_strategy": lambda v: v in ("default", "full")}, "llava")
        layers = hf_config.vision_feature_layer
        layers = (layers,) if isinstance(layers, int) else tuple(layers)
        vc = hf_config.vision_config
        n_needed = max(feature_indices(layers, vc.num_hidden_layers))
        vision = lookup(VISION_ADAPTERS, vc.model_type, "vision tower").config(vc, n_layers=n_needed)
        decoder = lookup(DECODER_ADAPTERS, hf_config.text_config.model_type, "decoder").config(hf_config.text_config)
        projector = ProjectorConfig(
            d_in=vision.d_model * len(layers),
            d_out=decoder.d_model,
            act_fn=hf_config.projector_hidden_act,
            bias=bool(getattr(hf_config, "multimodal_projector_bias", True)),
        )
        return VLMConfig(
            decoder=decoder,
            vision=vision,
            projector=projector,
            vision_feature_layer=layers,
            vision_feature_select_strategy=hf_config.vision_feature_select_strategy,
            image_token_index=hf_config.image_token_id,
            architecture="LlavaForConditionalGeneration",
            eos_token_id=_first(getattr(hf_config.text_config, "eos_token_id", None)),
            pad_token_id=_first(getattr(hf_config.text_config, "pad_token_id", None)),
            template=self.template,
        )

    def weights(self, hf_state: StateDict, cfg: VLMConfig) -> StateDict:
        text = language_model_state(hf_state, "model.language_model.")
        out = lookup(DECODER_ADAPTERS, cfg.decoder.family, "decoder").weights(text, cfg.decoder)
        vision = select(hf_state, "model.vision_tower.")
        out |= lookup(VISION_ADAPTERS, f"{cfg.vision.family}_vision_model", "vision tower").weights(vision, cfg.vision)
        for i in (1, 2):
            for p in ("weight", "bias"):
                key = f"model.multi_modal_projector.linear_{i}.{p}"
                if key in hf_state:
                    out[f"vision_projector.linear_{i}.{p}"] = hf_state[key]
        return out


def _first(token_id: int | list[int] | None) -> int | None:
    return token_id[0] if isinstance(token_id, (list, tuple)) else token_id
