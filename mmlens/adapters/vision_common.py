"""Shared conversion for ViT towers in the CLIP encoder layout (CLIP, SigLIP)."""

from __future__ import annotations

from typing import Any

from mmlens.adapters.registry import StateDict, rename_block, require_defaults
from mmlens.config import VisionConfig

LAYER_KEYS = {
    f"{hf}.{p}": f"{ours}.{q}"
    for hf, ours in [
        ("self_attn.q_proj", "attn.q_proj"),
        ("self_attn.k_proj", "attn.k_proj"),
        ("self_attn.v_proj", "attn.v_proj"),
        ("self_attn.out_proj", "attn.o_proj"),
        ("mlp.fc1", "mlp.fc1"),
        ("mlp.fc2", "mlp.fc2"),
    ]
    for p, q in [("weight", "weight"), ("bias", "bias")]
} | {
    f"{hf}.{p}": f"{ours}.{q}"
    for hf, ours in [("layer_norm1", "ln1"), ("layer_norm2", "ln2")]
    for p, q in [("weight", "w"), ("bias", "b")]
}


# Fields of a CLIP-layout vision config that vit_config translates.
VIT_FIELDS = frozenset({
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
    "layer_norm_eps", "image_size", "patch_size",
})


def vit_config(
    hf_config: Any,
    n_layers: int,
    family: str,
    *,
    has_cls: bool,
    ln_pre: bool,
    patch_bias: bool,
    unused: frozenset[str] = frozenset(),
) -> VisionConfig:
    """A :class:`VisionConfig` running ``n_layers`` of the tower's blocks.

    Args:
        unused: Fields of parts of the Hugging Face model LLaVA never runs (a projection or
            pooling head); every other field outside :data:`VIT_FIELDS` must hold its default.

    Raises:
        UnsupportedArchitectureError: a field outside the allow-list differs from its default.
    """
    require_defaults(hf_config, VIT_FIELDS | unused, f"{family} vision tower")
    n_heads = hf_config.num_attention_heads
    return VisionConfig(
        d_model=hf_config.hidden_size,
        n_layers=n_layers,
        n_heads=n_heads,
        d_head=hf_config.hidden_size // n_heads,
        d_mlp=hf_config.intermediate_size,
        act_fn=hf_config.hidden_act,
        normalization_type="LN",
        eps=hf_config.layer_norm_eps,
        gated_mlp=False,
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        positional_embedding_type="none",
        image_size=hf_config.image_size,
        patch_size=hf_config.patch_size,
        has_cls=has_cls,
        ln_pre=ln_pre,
        patch_bias=patch_bias,
        n_layers_total=hf_config.num_hidden_layers,
        family=family,
    )


def vit_weights(hf_state: StateDict, cfg: VisionConfig) -> StateDict:
    """Convert tower weights (prefix removed); blocks past ``cfg.n_layers`` are dropped."""
    out = {f"vision_encoder.{k}": v for k, v in rename_block(hf_state, "encoder.layers.", LAYER_KEYS, cfg.n_layers).items()}
    out["vision_encoder.patch_embed.weight"] = hf_state["embeddings.patch_embedding.weight"]
    if cfg.patch_bias:
        out["vision_encoder.patch_embed.bias"] = hf_state["embeddings.patch_embedding.bias"]
    if cfg.has_cls:
        out["vision_encoder.class_embedding"] = hf_state["embeddings.class_embedding"]
    out["vision_encoder.W_pos"] = hf_state["embeddings.position_embedding.weight"]
    if cfg.ln_pre:
        out["vision_encoder.ln_pre.w"] = hf_state["pre_layrnorm.weight"]
        out["vision_encoder.ln_pre.b"] = hf_state["pre_layrnorm.bias"]
    return out
