"""InternVL checkpoints: ``InternVLForConditionalGeneration`` (InternVL 2.5 / 3 in Hugging Face format).

InternViT tower → pixel shuffle (each image token covers ``s × s`` patches, ``s = 1 /
downsample_ratio``) → LayerNorm + two-layer MLP → Qwen2 or Llama decoder. The processor cuts
each image into tiles plus a thumbnail; the model runs every view alike and concatenates their
tokens, so it needs no layout (``VLMConfig.tiled_views``).
"""

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
    require_defaults,
    select,
)
from mmlens.config import ProjectorConfig, VLMConfig, feature_indices
from mmlens.errors import UnsupportedArchitectureError


@register(VLM_ADAPTERS, "InternVLForConditionalGeneration")
class InternVLAdapter:
    """InternViT + pixel-shuffle MLP projector + decoder; image features scattered into ``<IMG_CONTEXT>`` slots."""

    # image_seq_length only tells the processor how many placeholders to write per tile.
    fields = frozenset({
        "text_config", "vision_config", "image_token_id", "image_seq_length", "downsample_ratio",
        "projector_hidden_act", "vision_feature_layer", "vision_feature_select_strategy", "tie_word_embeddings",
    })
    template = "internvl"  # the OpenGVLab/InternVL*-hf chat template

    def config(self, hf_config: Any) -> VLMConfig:
        """Translate the config.

        Raises:
            UnsupportedArchitectureError: a field outside the allow-list differs from its default; a
                list of feature layers (Hugging Face's InternVL takes one); a strategy other than
                ``"default"`` (a kept CLS breaks the square grid pixel shuffle needs); a
                ``downsample_ratio`` that is not ``1 / s`` for an integer ``s``.
        """
        require_defaults(hf_config, self.fields, type(hf_config).__name__)
        layer = hf_config.vision_feature_layer
        if not isinstance(layer, int):
            raise UnsupportedArchitectureError(
                f"internvl: vision_feature_layer={layer!r}; InternVL reads one layer (an int)."
            )
        if hf_config.vision_feature_select_strategy != "default":
            raise UnsupportedArchitectureError(
                f"internvl: vision_feature_select_strategy={hf_config.vision_feature_select_strategy!r}; "
                "pixel shuffle needs the square patch grid, so only 'default' (CLS dropped) is supported."
            )
        factor = round(1 / hf_config.downsample_ratio)
        if factor < 1 or abs(factor * hf_config.downsample_ratio - 1) > 1e-9:
            raise UnsupportedArchitectureError(
                f"internvl: downsample_ratio={hf_config.downsample_ratio!r} is not 1/s for an integer s "
                "(InternVL uses 0.5: 2x2 patches per token)."
            )
        vc = hf_config.vision_config
        n_needed = max(feature_indices((layer,), vc.num_hidden_layers))
        vision = lookup(VISION_ADAPTERS, vc.model_type, "vision tower").config(vc, n_layers=n_needed)
        if vision.grid % factor:
            raise UnsupportedArchitectureError(
                f"internvl: a {vision.grid}x{vision.grid} patch grid cannot be pixel-shuffled by {factor}."
            )
        text = hf_config.text_config
        decoder = lookup(DECODER_ADAPTERS, text.model_type, "decoder").config(text)
        projector = ProjectorConfig(
            d_in=vision.d_model,
            d_out=decoder.d_model,
            act_fn=hf_config.projector_hidden_act,
            kind="pixel_shuffle_mlp",
            pixel_shuffle=factor,
        )
        return VLMConfig(
            decoder=decoder,
            vision=vision,
            projector=projector,
            vision_feature_layer=(layer,),
            vision_feature_select_strategy="default",
            image_token_index=hf_config.image_token_id,
            architecture="InternVLForConditionalGeneration",
            eos_token_id=_first(getattr(text, "eos_token_id", None)),
            pad_token_id=_first(getattr(text, "pad_token_id", None)),
            tiled_views=True,
            template=self.template,
        )

    def weights(self, hf_state: StateDict, cfg: VLMConfig) -> StateDict:
        text = language_model_state(hf_state, "model.language_model.")
        out = lookup(DECODER_ADAPTERS, cfg.decoder.family, "decoder").weights(text, cfg.decoder)
        out |= lookup(VISION_ADAPTERS, "internvl_vision", "vision tower").weights(
            select(hf_state, "model.vision_tower."), cfg.vision
        )
        projector = select(hf_state, "model.multi_modal_projector.")
        out["vision_projector.ln.w"] = projector["layer_norm.weight"]
        out["vision_projector.ln.b"] = projector["layer_norm.bias"]
        for name in ("linear_1", "linear_2"):
            for p in ("weight", "bias"):
                out[f"vision_projector.{name}.{p}"] = projector[f"{name}.{p}"]
        return out


def _first(token_id: int | list[int] | None) -> int | None:
    return token_id[0] if isinstance(token_id, (list, tuple)) else token_id
