"""Shared conversion for Llama-layout decoders (Llama, Vicuna, Mistral, Qwen2)."""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from mmlens.adapters.registry import StateDict, rename_block, require_defaults
from mmlens.config import DecoderConfig
from mmlens.errors import UnsupportedArchitectureError

# Fields of a Llama-layout text config that decoder_config translates.
DECODER_FIELDS = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
    "tie_word_embeddings", "rope_parameters", "mlp_bias",
})

# Rope variants whose frequencies are fixed at load time (dynamic ones change with length).
STATIC_ROPE_TYPES = {"default", "linear", "llama3", "yarn", "longrope"}

LAYER_KEYS = {
    "input_layernorm.weight": "ln1.w",
    "post_attention_layernorm.weight": "ln2.w",
    "self_attn.q_proj.weight": "attn.q_proj.weight",
    "self_attn.q_proj.bias": "attn.q_proj.bias",
    "self_attn.k_proj.weight": "attn.k_proj.weight",
    "self_attn.k_proj.bias": "attn.k_proj.bias",
    "self_attn.v_proj.weight": "attn.v_proj.weight",
    "self_attn.v_proj.bias": "attn.v_proj.bias",
    "self_attn.o_proj.weight": "attn.o_proj.weight",
    "self_attn.o_proj.bias": "attn.o_proj.bias",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.gate_proj.bias": "mlp.gate_proj.bias",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.up_proj.bias": "mlp.up_proj.bias",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
    "mlp.down_proj.bias": "mlp.down_proj.bias",
}


def rope_frequencies(hf_config: Any) -> tuple[tuple[float, ...], float]:
    """Inverse frequencies and attention scaling, from Hugging Face's own rope initialisers."""
    params = getattr(hf_config, "rope_parameters", None) or {"rope_type": "default"}
    rope_type = params.get("rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        raise UnsupportedArchitectureError(
            f"config field rope_parameters: rope_type {rope_type!r} is not supported (supported: "
            f"{sorted(STATIC_ROPE_TYPES)}; dynamic ones change the frequencies with the sequence length)."
        )
    if rope_type == "default":
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
        base = params["rope_theta"]
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        scaling = 1.0
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, torch.device("cpu"))
    return tuple(inv_freq.tolist()), float(scaling)


def decoder_config(
    hf_config: Any,
    family: str,
    *,
    qkv_bias: bool,
    o_bias: bool,
    sliding_window: int | None,
    fields: frozenset[str] = frozenset(),
) -> DecoderConfig:
    """Build a :class:`DecoderConfig` from a Llama-layout Hugging Face text config.

    Args:
        fields: Config fields the family's adapter reads itself (beyond :data:`DECODER_FIELDS`);
            every other field must hold its default.

    Raises:
        UnsupportedArchitectureError: a field outside the allow-list differs from its default,
            or a rope type mmlens does not implement.
    """
    require_defaults(hf_config, DECODER_FIELDS | fields, family)
    n_heads = hf_config.num_attention_heads
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_heads
    inv_freq, scaling = rope_frequencies(hf_config)
    return DecoderConfig(
        d_model=hf_config.hidden_size,
        n_layers=hf_config.num_hidden_layers,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=hf_config.intermediate_size,
        act_fn=hf_config.hidden_act,
        n_key_value_heads=getattr(hf_config, "num_key_value_heads", None) or n_heads,
        normalization_type="RMS",
        eps=hf_config.rms_norm_eps,
        gated_mlp=True,
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
        positional_embedding_type="rotary",
        sliding_window=sliding_window,
        d_vocab=hf_config.vocab_size,
        n_ctx=hf_config.max_position_embeddings,
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        rotary_inv_freq=inv_freq,
        rotary_attention_scaling=scaling,
        family=family,
    )


def decoder_weights(hf_state: StateDict, cfg: DecoderConfig) -> StateDict:
    """Convert ``language_model.*`` weights (prefix removed) plus ``lm_head.weight``."""
    out = rename_block(hf_state, "layers.", LAYER_KEYS, cfg.n_layers)
    out["embed.W_E"] = hf_state["embed_tokens.weight"]
    out["ln_final.w"] = hf_state["norm.weight"]
    out["unembed.weight"] = hf_state.get("lm_head.weight", hf_state["embed_tokens.weight"])
    return out
