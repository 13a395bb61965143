"""The documented shape of every hook point, and the generator of ``docs/hook_names.md``."""

from __future__ import annotations

import re

# (name pattern with {l} for the layer, shape, meaning); the vision tower repeats the block grammar.
_BLOCK = [
    ("hook_resid_pre", "{b} {p} d_model", "residual stream entering the block"),
    ("ln1.hook_scale", "{b} {p} 1", "norm scale sqrt(mean(x²)+eps) (LayerNorm: of the centred x)"),
    ("ln1.hook_normalized", "{b} {p} d_model", "normalised input before the norm weight"),
    ("attn.q_norm.hook_scale", "{b} {p} 1", "QK-norm scale of the queries, all heads together (InternViT)"),
    ("attn.q_norm.hook_normalized", "{b} {p} d_q", "normalised queries before the norm weight (InternViT)"),
    ("attn.k_norm.hook_scale", "{b} {p} 1", "QK-norm scale of the keys (InternViT)"),
    ("attn.k_norm.hook_normalized", "{b} {p} d_k", "normalised keys before the norm weight (InternViT)"),
    ("attn.hook_q", "{b} {p} head_index d_head", "queries"),
    ("attn.hook_k", "{b} {p} kv_head d_head", "keys (grouped-query: one per key/value head)"),
    ("attn.hook_v", "{b} {p} kv_head d_head", "values"),
    ("attn.hook_rot_q", "{b} {p} head_index d_head", "queries after rotary (decoder only)"),
    ("attn.hook_rot_k", "{b} {p} kv_head d_head", "keys after rotary (decoder only)"),
    ("attn.hook_attn_scores", "{b} head_index query_pos key_pos", "pre-softmax scores, scaled and masked"),
    ("attn.hook_pattern", "{b} head_index query_pos key_pos", "post-softmax attention pattern"),
    ("attn.hook_z", "{b} {p} head_index d_head", "pattern-weighted values, before the output projection"),
    ("hook_attn_out", "{b} {p} d_model", "attention output added to the residual stream"),
    ("hook_resid_mid", "{b} {p} d_model", "residual stream between attention and MLP"),
    ("ln2.hook_scale", "{b} {p} 1", "norm scale before the MLP"),
    ("ln2.hook_normalized", "{b} {p} d_model", "normalised MLP input (the Grad-CAM features of the decoder)"),
    ("mlp.hook_pre", "{b} {p} d_mlp", "gate pre-activation (decoder) / fc1 output (vision)"),
    ("mlp.hook_pre_linear", "{b} {p} d_mlp", "up projection (gated MLPs only)"),
    ("mlp.hook_post", "{b} {p} d_mlp", "activation (times up projection when gated)"),
    ("hook_mlp_out", "{b} {p} d_model", "MLP output added to the residual stream"),
    ("hook_resid_post", "{b} {p} d_model", "residual stream leaving the block"),
]

# InstructBLIP's Q-Former block: post-norm, [queries ; instruction] positions, cross-attention in
# every cross_attention_frequency-th layer (queries only, keys are the vision positions).
_QFORMER_BLOCK = [
    ("hook_resid_pre", "n_img qf_pos d_qformer", "Q-Former stream entering the block (queries, then instruction)"),
    ("attn.hook_q", "n_img qf_pos head_index d_head", "self-attention queries"),
    ("attn.hook_k", "n_img qf_pos head_index d_head", "self-attention keys"),
    ("attn.hook_v", "n_img qf_pos head_index d_head", "self-attention values"),
    ("attn.hook_attn_scores", "n_img head_index qf_pos qf_pos", "self-attention scores (instruction padding masked)"),
    ("attn.hook_pattern", "n_img head_index qf_pos qf_pos", "self-attention pattern over queries and instruction"),
    ("attn.hook_z", "n_img qf_pos head_index d_head", "self-attention pattern-weighted values"),
    ("hook_attn_out", "n_img qf_pos d_qformer", "self-attention output"),
    ("ln1.hook_scale", "n_img qf_pos 1", "post-norm scale after self-attention"),
    ("ln1.hook_normalized", "n_img qf_pos d_qformer", "post-norm output before weight"),
    ("hook_resid_mid", "n_img qf_pos d_qformer", "LN(resid_pre + attn_out)"),
    ("cross_attn.hook_q", "n_img n_query head_index d_head", "cross-attention queries (query tokens)"),
    ("cross_attn.hook_k", "n_img v_pos head_index d_head", "cross-attention keys (vision positions, CLS first)"),
    ("cross_attn.hook_v", "n_img v_pos head_index d_head", "cross-attention values"),
    ("cross_attn.hook_attn_scores", "n_img head_index n_query v_pos", "cross-attention scores"),
    ("cross_attn.hook_pattern", "n_img head_index n_query v_pos", "cross-attention pattern: query token → vision positions"),
    ("cross_attn.hook_z", "n_img n_query head_index d_head", "cross-attention pattern-weighted values"),
    ("hook_cross_attn_out", "n_img n_query d_qformer", "cross-attention output"),
    ("ln_cross.hook_scale", "n_img n_query 1", "post-norm scale after cross-attention"),
    ("ln_cross.hook_normalized", "n_img n_query d_qformer", "post-norm output before weight"),
    ("hook_resid_cross", "n_img n_query d_qformer", "query stream after cross-attention"),
    ("mlp_query.hook_pre", "n_img n_query d_mlp", "query feed-forward fc1 output"),
    ("mlp_query.hook_post", "n_img n_query d_mlp", "query feed-forward activation"),
    ("mlp.hook_pre", "n_img q_pos d_mlp", "instruction feed-forward fc1 output (last layer: reaches no output)"),
    ("mlp.hook_post", "n_img q_pos d_mlp", "instruction feed-forward activation"),
    ("hook_mlp_out", "n_img qf_pos d_qformer", "feed-forward outputs (query part, then instruction part)"),
    ("ln2_query.hook_scale", "n_img n_query 1", "post-norm scale after the query feed-forward"),
    ("ln2_query.hook_normalized", "n_img n_query d_qformer", "post-norm output before weight"),
    ("ln2.hook_scale", "n_img q_pos 1", "post-norm scale after the instruction feed-forward"),
    ("ln2.hook_normalized", "n_img q_pos d_qformer", "post-norm output before weight"),
    ("hook_resid_post", "n_img qf_pos d_qformer", "Q-Former stream leaving the block"),
]

HOOKS: list[tuple[str, str, str]] = (
    [
        ("vision_encoder.hook_embed", "n_img v_pos d_vision", "patch (and CLS) embeddings"),
        ("vision_encoder.hook_pos_embed", "1 v_pos d_vision", "learned position embeddings"),
        ("vision_encoder.ln_pre.hook_scale", "n_img v_pos 1", "CLIP pre-layernorm scale"),
        ("vision_encoder.ln_pre.hook_normalized", "n_img v_pos d_vision", "CLIP pre-layernorm output before weight"),
    ]
    + [(f"vision_encoder.blocks.{{l}}.{n}", s.format(b="n_img", p="v_pos").replace("d_model", "d_vision"), m) for n, s, m in _BLOCK]
    + [
        ("vision_encoder.ln_post.hook_scale", "n_img v_pos 1", "BLIP post-layernorm scale (InstructBLIP)"),
        ("vision_encoder.ln_post.hook_normalized", "n_img v_pos d_vision", "BLIP post-layernorm output before weight"),
        ("vision_encoder.hook_features", "n_img n_patch d_feat", "what the projector consumes: selected layer(s), CLS dropped"),
        ("qformer.ln_embed.hook_scale", "n_img qf_pos 1", "Q-Former embedding LayerNorm scale (InstructBLIP)"),
        ("qformer.ln_embed.hook_normalized", "n_img qf_pos d_qformer", "Q-Former embedding LayerNorm output before weight"),
        ("qformer.hook_embed", "n_img qf_pos d_qformer", "[query tokens ; instruction embeddings + positions], normalised"),
    ]
    + [(f"qformer.blocks.{{l}}.{n}", s, m) for n, s, m in _QFORMER_BLOCK]
    + [
        ("qformer.hook_queries", "n_img n_query d_qformer", "final query states: what the projector consumes"),
        ("vision_projector.hook_shuffled", "n_img n_tokens d_shuffled", "pixel-shuffled features: s×s patches per token (InternVL)"),
        ("vision_projector.ln.hook_scale", "n_img n_tokens 1", "projector LayerNorm scale (InternVL)"),
        ("vision_projector.ln.hook_normalized", "n_img n_tokens d_shuffled", "projector LayerNorm output before weight (InternVL)"),
        ("vision_projector.hook_merged", "n_img n_tokens d_merged", "m×m neighbouring patches concatenated per image token, after the norm (Qwen2-VL merger; n_img = 1: all images packed)"),
        ("vision_projector.hook_pre", "n_img n_patch d_model", "first projector linear"),
        ("vision_projector.hook_post", "n_img n_patch d_model", "after the projector activation"),
        ("hook_image_embed", "n_img n_patch d_model", "projector output, written into the image slots"),
        ("hook_embed", "batch pos d_model", "token embeddings (image slots hold the placeholder's embedding)"),
        ("hook_merged_embed", "batch pos d_model", "token embeddings with image embeddings merged in"),
    ]
    + [(f"blocks.{{l}}.{n}", s.format(b="batch", p="pos"), m) for n, s, m in _BLOCK]
    + [
        ("ln_final.hook_scale", "batch pos 1", "final norm scale"),
        ("ln_final.hook_normalized", "batch pos d_model", "final norm output before weight"),
    ]
)


def template(name: str) -> str:
    """``blocks.3.attn.hook_q`` → ``blocks.{l}.attn.hook_q``."""
    return re.sub(r"blocks\.\d+\.", "blocks.{l}.", name)


SHAPES = {name: shape for name, shape, _ in HOOKS}


def render_hook_names(model) -> str:
    """Markdown listing every hook template of ``model`` with its shape and meaning (``docs/hook_names.md``)."""
    present = {template(n) for n in model.hook_dict}
    lines = [
        "# Hook names",
        "",
        "Generated by `render_hook_names(model)` (`mmlens/models/hook_shapes.py`); a test keeps it current.",
        "`{l}` is the layer. Dimensions are defined in `mmlens/typing.py`.",
        "",
        "| hook | shape | what it holds |",
        "|---|---|---|",
    ]
    lines += [f"| `{n}` | `[{s.replace(' ', ', ')}]` | {m} |" for n, s, m in HOOKS if n in present]
    return "\n".join(lines) + "\n"

