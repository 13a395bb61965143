"""Qwen2-VL checkpoints: ``Qwen2VLForConditionalGeneration``.

Packed vision tower (images of any size; 2-D rotary; attention within each image) → patch merger
(2×2 neighbouring patches per image token) → Qwen2 decoder with multimodal rotary positions
(M-RoPE, :mod:`mmlens.components.mrope`). Qwen2.5-VL (:mod:`mmlens.adapters.qwen2_5_vl`) reuses
this file's decoder and model adapters with its own vision tower.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mmlens.adapters.qwen2 import Qwen2Adapter
from mmlens.adapters.registry import (
    DECODER_ADAPTERS,
    VISION_ADAPTERS,
    VLM_ADAPTERS,
    StateDict,
    language_model_state,
    lookup,
    register,
    rename_block,
    require_defaults,
    select,
)
from mmlens.config import DecoderConfig, ProjectorConfig, VisionConfig, VLMConfig
from mmlens.errors import UnsupportedArchitectureError

# Hugging Face's default split of a 128-wide head's 64 frequencies into temporal/height/width.
DEFAULT_MROPE_SECTION = (16, 24, 24)

VISION_LAYER_KEYS = {
    f"{hf}.{p}": f"{ours}.{q}"
    for hf, ours in [("norm1", "ln1"), ("norm2", "ln2")]
    for p, q in [("weight", "w"), ("bias", "b")]
} | {
    f"{hf}.{p}": f"{ours}.{p}"
    for hf, ours in [
        ("attn.proj", "attn.o_proj"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"),
        ("mlp.gate_proj", "mlp.gate_proj"), ("mlp.up_proj", "mlp.up_proj"), ("mlp.down_proj", "mlp.down_proj"),
    ]
    for p in ("weight", "bias")
}


@register(DECODER_ADAPTERS, "qwen2_vl_text", "qwen2_5_vl_text")
class Qwen2VLTextAdapter:
    """The Qwen2 decoder with M-RoPE: Qwen2's config and weights plus ``mrope_section``."""

    def config(self, hf_config: Any, **_: Any) -> DecoderConfig:
        """Raises:
        UnsupportedArchitectureError: as Qwen2's, or an ``mrope_section`` that does not split
            ``d_head / 2`` frequencies into three parts.
        """
        cfg = Qwen2Adapter().config(hf_config)
        params = getattr(hf_config, "rope_parameters", None) or {}
        section = tuple(params.get("mrope_section", DEFAULT_MROPE_SECTION))
        if len(section) != 3 or sum(section) != cfg.d_head // 2:
            raise UnsupportedArchitectureError(
                f"{hf_config.model_type}: mrope_section={list(section)} must be three numbers adding up to "
                f"d_head / 2 = {cfg.d_head // 2} (one section each for the temporal, height and width positions)."
            )
        return replace(cfg, mrope_section=section, family=hf_config.model_type)

    def weights(self, hf_state: StateDict, cfg: DecoderConfig) -> StateDict:
        return Qwen2Adapter().weights(hf_state, cfg)


def packed_vision_config(hf_config: Any, fields: frozenset[str], what: str, **kwargs: Any) -> VisionConfig:
    """The :class:`VisionConfig` shared by Qwen2-VL's and Qwen2.5-VL's towers (``kwargs``: what differs).

    Raises:
        UnsupportedArchitectureError: a field outside ``fields`` differs from its default, a rope type
            other than ``axial``, an input that is not RGB, or a non-square patch.
    """
    require_defaults(hf_config, fields, what)
    params = hf_config.rope_parameters or {}
    if params.get("rope_type", "axial") != "axial" or hf_config.in_channels != 3:
        raise UnsupportedArchitectureError(
            f"{what}: rope_parameters={params!r}, in_channels={hf_config.in_channels}; mmlens implements the "
            "axial 2-D rotary on RGB patches."
        )
    patch = hf_config.patch_size
    if isinstance(patch, (list, tuple)):
        if len(set(patch)) != 1:
            raise UnsupportedArchitectureError(f"{what}: patch_size={patch!r} is not square.")
        patch = patch[0]
    return VisionConfig(
        n_layers=hf_config.depth,
        n_heads=hf_config.num_heads,
        positional_embedding_type="rotary",
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        eps=1e-6,
        # Images come at any size; the smallest is one image token (merge_size² patches).
        image_size=int(patch) * hf_config.spatial_merge_size,
        patch_size=int(patch),
        has_cls=False,
        ln_pre=False,
        patch_bias=False,
        n_layers_total=hf_config.depth,
        packed=True,
        temporal_patch_size=int(hf_config.temporal_patch_size),
        merge_size=hf_config.spatial_merge_size,
        rotary_theta=float(params.get("rope_theta", 10000.0)),
        **kwargs,
    )


def packed_vision_weights(hf_state: StateDict, cfg: VisionConfig) -> StateDict:
    """Convert ``visual.*`` (prefix removed) less the merger: the fused ``qkv`` split into q/k/v."""
    out = rename_block(hf_state, "blocks.", VISION_LAYER_KEYS, cfg.n_layers)
    for i in range(cfg.n_layers):
        for p in ("weight", "bias"):
            q, k, v = hf_state[f"blocks.{i}.attn.qkv.{p}"].chunk(3, dim=0)
            out |= {f"blocks.{i}.attn.q_proj.{p}": q, f"blocks.{i}.attn.k_proj.{p}": k, f"blocks.{i}.attn.v_proj.{p}": v}
    out = {f"vision_encoder.{k}": v for k, v in out.items()}
    conv = hf_state["patch_embed.proj.weight"]  # [d_model, 3, temporal, patch, patch]
    out["vision_encoder.patch_embed.weight"] = conv.reshape(conv.shape[0], -1)
    return out


@register(VISION_ADAPTERS, "qwen2_vl")
class Qwen2VisionAdapter:
    """Qwen2-VL's tower: LayerNorm blocks with a ``fc1``/``fc2`` MLP (``mlp_ratio``)."""

    fields = frozenset({
        "depth", "embed_dim", "hidden_size", "hidden_act", "mlp_ratio", "num_heads", "in_channels",
        "patch_size", "spatial_merge_size", "temporal_patch_size", "rope_parameters",
    })

    def config(self, hf_config: Any, **_: Any) -> VisionConfig:
        d = hf_config.embed_dim
        return packed_vision_config(
            hf_config, self.fields, "qwen2-vl vision tower",
            d_model=d, d_head=d // hf_config.num_heads, d_mlp=int(d * hf_config.mlp_ratio),
            act_fn=hf_config.hidden_act, normalization_type="LN", gated_mlp=False, family="qwen2_vl",
        )

    def weights(self, hf_state: StateDict, cfg: VisionConfig) -> StateDict:
        return packed_vision_weights(hf_state, cfg)


@register(VLM_ADAPTERS, "Qwen2VLForConditionalGeneration")
class Qwen2VLAdapter:
    """Packed tower + patch merger + Qwen2 decoder with M-RoPE; image features fill the ``<|image_pad|>`` slots."""

    # vision_start/end_token_id only mark the image in the prompt (the processor writes them);
    # video_token_id: videos are refused at the forward (only images are implemented).
    fields = frozenset({
        "text_config", "vision_config", "image_token_id", "video_token_id", "vision_start_token_id",
        "vision_end_token_id", "tie_word_embeddings",
    })
    vision_adapter = "qwen2_vl"
    merger_norm = "LN"
    architecture = "Qwen2VLForConditionalGeneration"
    template = "qwen2_vl"  # the Qwen/Qwen2-VL-*-Instruct chat template (also Qwen2.5-VL's)

    def config(self, hf_config: Any) -> VLMConfig:
        """Translate the config.

        Raises:
            UnsupportedArchitectureError: a field outside the allow-list differs from its default, or
                a sub-config mmlens does not implement.
        """
        require_defaults(hf_config, self.fields, type(hf_config).__name__)
        vision = lookup(VISION_ADAPTERS, self.vision_adapter, "vision tower").config(hf_config.vision_config)
        decoder = lookup(DECODER_ADAPTERS, hf_config.text_config.model_type, "decoder").config(hf_config.text_config)
        projector = ProjectorConfig(
            d_in=vision.d_model,
            d_out=decoder.d_model,
            act_fn="gelu",
            kind="patch_merger",
            pixel_shuffle=vision.merge_size,
            ln_eps=1e-6,
            ln_type=self.merger_norm,
        )
        text = hf_config.text_config
        return VLMConfig(
            decoder=decoder,
            vision=vision,
            projector=projector,
            vision_feature_layer=(-1,),
            vision_feature_select_strategy="full",
            image_token_index=hf_config.image_token_id,
            architecture=self.architecture,
            eos_token_id=_first(getattr(text, "eos_token_id", None)),
            pad_token_id=_first(getattr(text, "pad_token_id", None)),
            template=self.template,
        )

    def weights(self, hf_state: StateDict, cfg: VLMConfig) -> StateDict:
        text = language_model_state(hf_state, "model.language_model.")
        out = lookup(DECODER_ADAPTERS, cfg.decoder.family, "decoder").weights(text, cfg.decoder)
        visual = select(hf_state, "model.visual.")
        out |= lookup(VISION_ADAPTERS, self.vision_adapter, "vision tower").weights(visual, cfg.vision)
        merger = select(visual, "merger.")
        out["vision_projector.ln.w"] = merger["ln_q.weight"]
        if "ln_q.bias" in merger:
            out["vision_projector.ln.b"] = merger["ln_q.bias"]
        for ours, hf in (("linear_1", "mlp.0"), ("linear_2", "mlp.2")):
            for p in ("weight", "bias"):
                out[f"vision_projector.{ours}.{p}"] = merger[f"{hf}.{p}"]
        return out


def _first(token_id: int | list[int] | None) -> int | None:
    return token_id[0] if isinstance(token_id, (list, tuple)) else token_id
