"""InstructBLIP checkpoints: ``InstructBlipForConditionalGeneration`` with a Llama/Vicuna decoder.

BLIP vision tower (pre-norm ViT, CLS kept, post-layernorm) → Q-Former (learned queries that
read the instruction and cross-attend to every vision position) → linear projection → decoder,
the projected queries written into the ``<image>`` slots. Flan-T5 variants (encoder–decoder
language models) are not supported.
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
    rename_block,
    require_defaults,
    select,
)
from mmlens.config import ProjectorConfig, QFormerConfig, VisionConfig, VLMConfig
from mmlens.errors import UnsupportedArchitectureError

VISION_FIELDS = frozenset({
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
    "patch_size", "hidden_act", "layer_norm_eps", "qkv_bias",
})
# chunk_size_feed_forward only splits the feed-forward into chunks (same values); the dropouts are
# inactive in eval; pad_token_id only sets the embedding's padding_idx (gradients, not values).
QFORMER_FIELDS = frozenset({
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "max_position_embeddings", "layer_norm_eps", "cross_attention_frequency",
    "encoder_hidden_size", "hidden_dropout_prob", "attention_probs_dropout_prob",
})

VISION_LAYER_KEYS = {
    f"{hf}.{p}": f"{ours}.{q}"
    for hf, ours in [("self_attn.projection", "attn.o_proj"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]
    for p, q in [("weight", "weight"), ("bias", "bias")]
} | {
    f"{hf}.{p}": f"{ours}.{q}"
    for hf, ours in [("layer_norm1", "ln1"), ("layer_norm2", "ln2")]
    for p, q in [("weight", "w"), ("bias", "b")]
}


def _linear(hf: str, ours: str) -> dict[str, str]:
    return {f"{hf}.weight": f"{ours}.weight", f"{hf}.bias": f"{ours}.bias"}


def _norm(hf: str, ours: str) -> dict[str, str]:
    return {f"{hf}.weight": f"{ours}.w", f"{hf}.bias": f"{ours}.b"}


def _attention(hf: str, ours: str, norm: str) -> dict[str, str]:
    return (_linear(f"{hf}.attention.query", f"{ours}.q_proj") | _linear(f"{hf}.attention.key", f"{ours}.k_proj")
            | _linear(f"{hf}.attention.value", f"{ours}.v_proj") | _linear(f"{hf}.output.dense", f"{ours}.o_proj")
            | _norm(f"{hf}.output.LayerNorm", norm))


QFORMER_LAYER_KEYS = (
    _attention("attention", "attn", "ln1")
    | _attention("crossattention", "cross_attn", "ln_cross")
    | _linear("intermediate.dense", "mlp.fc1") | _linear("output.dense", "mlp.fc2") | _norm("output.LayerNorm", "ln2")
    | _linear("intermediate_query.dense", "mlp_query.fc1") | _linear("output_query.dense", "mlp_query.fc2")
    | _norm("output_query.LayerNorm", "ln2_query")
)


@register(VISION_ADAPTERS, "instructblip_vision_model")
class BlipVisionAdapter:
    """BLIP's ViT: biased patch conv, CLS, no pre-layernorm, fused ``qkv`` (q and v biases), post-layernorm."""

    def config(self, hf_config: Any, *, n_layers: int, **_: Any) -> VisionConfig:
        require_defaults(hf_config, VISION_FIELDS, "instructblip vision tower")
        if isinstance(hf_config.image_size, (list, tuple)) or isinstance(hf_config.patch_size, (list, tuple)):
            raise UnsupportedArchitectureError(
                f"instructblip vision tower: image_size={hf_config.image_size!r}, patch_size={hf_config.patch_size!r}; "
                "mmlens implements square images and patches given as one int."
            )
        n_heads = hf_config.num_attention_heads
        return VisionConfig(
            d_model=hf_config.hidden_size, n_layers=n_layers, n_heads=n_heads,
            d_head=hf_config.hidden_size // n_heads, d_mlp=hf_config.intermediate_size,
            act_fn=hf_config.hidden_act, normalization_type="LN", eps=hf_config.layer_norm_eps,
            gated_mlp=False, qkv_bias=bool(hf_config.qkv_bias), o_bias=True, mlp_bias=True,
            positional_embedding_type="none", image_size=hf_config.image_size,
            patch_size=hf_config.patch_size, has_cls=True, ln_pre=False, patch_bias=True,
            n_layers_total=hf_config.num_hidden_layers, family="blip", ln_post=True,
        )

    def weights(self, hf_state: StateDict, cfg: VisionConfig) -> StateDict:
        """Convert ``vision_model.*`` (prefix removed); the fused ``qkv`` is split into q/k/v."""
        out = rename_block(hf_state, "encoder.layers.", VISION_LAYER_KEYS, cfg.n_layers)
        for i in range(cfg.n_layers):
            hf = f"encoder.layers.{i}.self_attn.qkv."
            parts = ["weight"] + (["bias"] if cfg.qkv_bias else [])
            for p in parts:
                for name, tensor in zip(("q_proj", "k_proj", "v_proj"), hf_state[hf + p].chunk(3, dim=0)):
                    out[f"blocks.{i}.attn.{name}.{p}"] = tensor
        out = {f"vision_encoder.{k}": v for k, v in out.items()}
        out["vision_encoder.patch_embed.weight"] = hf_state["embeddings.patch_embedding.weight"]
        out["vision_encoder.patch_embed.bias"] = hf_state["embeddings.patch_embedding.bias"]
        out["vision_encoder.class_embedding"] = hf_state["embeddings.class_embedding"].reshape(-1)
        out["vision_encoder.W_pos"] = hf_state["embeddings.position_embedding"][0]
        out["vision_encoder.ln_post.w"] = hf_state["post_layernorm.weight"]
        out["vision_encoder.ln_post.b"] = hf_state["post_layernorm.bias"]
        return out


@register(VLM_ADAPTERS, "InstructBlipForConditionalGeneration")
class InstructBlipAdapter:
    """BLIP tower + Q-Former + linear projection + decoder-only language model."""

    fields = frozenset({
        "vision_config", "qformer_config", "text_config", "num_query_tokens", "image_token_index",
        "image_token_id", "use_decoder_only_language_model", "initializer_factor",
    })
    template = "instructblip"  # LAVIS: the query embeddings, then the instruction alone

    def config(self, hf_config: Any) -> VLMConfig:
        """Translate the config.

        Raises:
            UnsupportedArchitectureError: an encoder–decoder language model (Flan-T5 variants), or a
                field outside the allow-list that differs from its default.
        """
        if not hf_config.use_decoder_only_language_model:
            raise UnsupportedArchitectureError(
                f"instructblip: the language model is {hf_config.text_config.model_type!r}, an encoder-decoder "
                "(Flan-T5 variants); mmlens supports InstructBLIP with a decoder-only model (Vicuna/Llama)."
            )
        require_defaults(hf_config, self.fields, type(hf_config).__name__)
        vc, qc, text = hf_config.vision_config, hf_config.qformer_config, hf_config.text_config
        require_defaults(qc, QFORMER_FIELDS, "instructblip q-former")
        vision = lookup(VISION_ADAPTERS, vc.model_type, "vision tower").config(vc, n_layers=vc.num_hidden_layers)
        decoder = lookup(DECODER_ADAPTERS, text.model_type, "decoder").config(text)
        n_heads = qc.num_attention_heads
        qformer = QFormerConfig(
            d_model=qc.hidden_size, n_layers=qc.num_hidden_layers, n_heads=n_heads,
            d_head=qc.hidden_size // n_heads, d_mlp=qc.intermediate_size, act_fn=qc.hidden_act,
            normalization_type="LN", eps=qc.layer_norm_eps, gated_mlp=False, qkv_bias=True, o_bias=True,
            mlp_bias=True, positional_embedding_type="none", n_queries=hf_config.num_query_tokens,
            d_vocab=qc.vocab_size, n_ctx=qc.max_position_embeddings, d_encoder=vision.d_model,
            cross_attention_frequency=qc.cross_attention_frequency,
        )
        return VLMConfig(
            decoder=decoder,
            vision=vision,
            projector=ProjectorConfig(d_in=qformer.d_model, d_out=decoder.d_model, kind="linear"),
            vision_feature_layer=(-1,),
            vision_feature_select_strategy="full",
            image_token_index=hf_config.image_token_index,
            architecture="InstructBlipForConditionalGeneration",
            eos_token_id=_first(getattr(text, "eos_token_id", None)),
            pad_token_id=_first(getattr(text, "pad_token_id", None)),
            qformer=qformer,
            template=self.template,
        )

    def weights(self, hf_state: StateDict, cfg: VLMConfig) -> StateDict:
        text = language_model_state(hf_state, "language_model.model.", "language_model.lm_head.weight")
        out = lookup(DECODER_ADAPTERS, cfg.decoder.family, "decoder").weights(text, cfg.decoder)
        out |= BlipVisionAdapter().weights(select(hf_state, "vision_model."), cfg.vision)
        qformer = select(hf_state, "qformer.")
        blocks = rename_block(qformer, "encoder.layer.", QFORMER_LAYER_KEYS, cfg.qformer.n_layers)
        out |= {f"qformer.{k}": v for k, v in blocks.items()}
        out["qformer.query_tokens"] = hf_state["query_tokens"].reshape(cfg.qformer.n_queries, -1)
        out["qformer.embed.W_E"] = qformer["embeddings.word_embeddings.weight"]
        out["qformer.W_pos"] = qformer["embeddings.position_embeddings.weight"]
        out["qformer.ln_embed.w"] = qformer["embeddings.layernorm.weight"]
        out["qformer.ln_embed.b"] = qformer["embeddings.layernorm.bias"]
        out["vision_projector.linear_1.weight"] = hf_state["language_projection.weight"]
        out["vision_projector.linear_1.bias"] = hf_state["language_projection.bias"]
        return out


def _first(token_id: int | list[int] | None) -> int | None:
    return token_id[0] if isinstance(token_id, (list, tuple)) else token_id
