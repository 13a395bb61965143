"""InternViT vision towers (InternVL): CLS + learned positions, layer scale, optional QK-norm.

Layer scale multiplies each block's attention and MLP output by learned per-channel vectors
(``lambda_1``, ``lambda_2``). They are folded into the output projections at load time
(``λ ⊙ (W z + b) = (diag(λ) W) z + λ ⊙ b``), so ``attn.o_proj`` / ``mlp.fc2`` hold the scaled
weights: ``hook_attn_out`` and ``hook_mlp_out`` are what the residual stream receives, and a
head's contribution is still ``z @ W_O``.
"""

from __future__ import annotations

from typing import Any

from mmlens.adapters.registry import VISION_ADAPTERS, StateDict, register, rename_block, require_defaults
from mmlens.config import VisionConfig
from mmlens.errors import UnsupportedArchitectureError

NORM_TYPES = {"layer_norm": "LN", "rms_norm": "RMS"}

# Fields vit translates. layer_scale_init_value only initialises lambda_1/2 (the checkpoint holds
# them); use_mask_token adds a token used only with bool_masked_pos, which InternVL never passes;
# the dropouts are inactive in eval.
FIELDS = frozenset({
    "hidden_size", "num_hidden_layers", "num_attention_heads", "attention_bias", "use_qk_norm",
    "intermediate_size", "hidden_act", "norm_type", "layer_norm_eps", "image_size", "patch_size",
    "layer_scale_init_value", "use_mask_token", "hidden_dropout_prob", "projection_dropout",
})

LAYER_KEYS = {
    f"attention.{hf}.{p}": f"attn.{ours}.{p}"
    for hf, ours in [("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj")]
    for p in ("weight", "bias")
} | {
    "attention.q_norm.weight": "attn.q_norm.w",
    "attention.k_norm.weight": "attn.k_norm.w",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
} | {
    f"{hf}.{p}": f"{ours}.{q}"
    for hf, ours in [("layernorm_before", "ln1"), ("layernorm_after", "ln2")]
    for p, q in [("weight", "w"), ("bias", "b")]
}


def _square(value: Any, field: str) -> int:
    sides = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
    if len(set(sides)) != 1:
        raise UnsupportedArchitectureError(
            f"internvl vision tower: {field}={value!r} is not square; mmlens implements square tiles and patches."
        )
    return int(sides[0])


@register(VISION_ADAPTERS, "internvl_vision")
class InternVitAdapter:
    def config(self, hf_config: Any, *, n_layers: int, **_: Any) -> VisionConfig:
        """Run ``n_layers`` blocks of the tower.

        Raises:
            UnsupportedArchitectureError: a field outside the allow-list differs from its default
                (e.g. ``use_mean_pooling=False``, ``use_absolute_position_embeddings=False``), an
                unknown ``norm_type``, or non-square tiles.
        """
        require_defaults(hf_config, FIELDS, "internvl vision tower")
        if hf_config.norm_type not in NORM_TYPES:
            raise UnsupportedArchitectureError(
                f"internvl vision tower: norm_type={hf_config.norm_type!r}; supported: {sorted(NORM_TYPES)}."
            )
        n_heads = hf_config.num_attention_heads
        return VisionConfig(
            d_model=hf_config.hidden_size,
            n_layers=n_layers,
            n_heads=n_heads,
            d_head=hf_config.hidden_size // n_heads,
            d_mlp=hf_config.intermediate_size,
            act_fn=hf_config.hidden_act,
            normalization_type=NORM_TYPES[hf_config.norm_type],
            eps=hf_config.layer_norm_eps,
            gated_mlp=False,
            qkv_bias=bool(hf_config.attention_bias),
            o_bias=True,
            mlp_bias=True,
            positional_embedding_type="none",
            qk_norm=bool(hf_config.use_qk_norm),
            # InternVLVisionRMSNorm's default epsilon; the config's layer_norm_eps is not passed to it.
            qk_norm_eps=1e-6,
            image_size=_square(hf_config.image_size, "image_size"),
            patch_size=_square(hf_config.patch_size, "patch_size"),
            has_cls=True,
            ln_pre=False,
            patch_bias=True,
            n_layers_total=hf_config.num_hidden_layers,
            family="internvl",
        )

    def weights(self, hf_state: StateDict, cfg: VisionConfig) -> StateDict:
        """Convert ``vision_tower.*`` (prefix removed), folding layer scale into the output projections."""
        out = rename_block(hf_state, "encoder.layer.", LAYER_KEYS, cfg.n_layers)
        for i in range(cfg.n_layers):
            hf = f"encoder.layer.{i}."
            lam1, lam2 = hf_state[hf + "lambda_1"], hf_state[hf + "lambda_2"]
            out[f"blocks.{i}.attn.o_proj.weight"] = lam1[:, None] * hf_state[hf + "attention.projection_layer.weight"]
            out[f"blocks.{i}.attn.o_proj.bias"] = lam1 * hf_state[hf + "attention.projection_layer.bias"]
            out[f"blocks.{i}.mlp.fc2.weight"] = lam2[:, None] * hf_state[hf + "mlp.fc2.weight"]
            out[f"blocks.{i}.mlp.fc2.bias"] = lam2 * hf_state[hf + "mlp.fc2.bias"]
        out = {f"vision_encoder.{k}": v for k, v in out.items()}
        out["vision_encoder.patch_embed.weight"] = hf_state["embeddings.patch_embeddings.projection.weight"]
        out["vision_encoder.patch_embed.bias"] = hf_state["embeddings.patch_embeddings.projection.bias"]
        out["vision_encoder.class_embedding"] = hf_state["embeddings.cls_token"].reshape(-1)
        out["vision_encoder.W_pos"] = hf_state["embeddings.position_embeddings"][0]
        return out
