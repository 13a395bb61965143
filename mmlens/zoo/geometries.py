"""Configs of real checkpoints (geometry only, no weights), e.g. for FLOPs accounting."""

from __future__ import annotations

import transformers


def llava15_config(size: str = "7b") -> transformers.LlavaConfig:
    """LLaVA-1.5-7B or -13B: CLIP ViT-L/14-336 tower, two-layer GELU projector, Vicuna decoder."""
    text = {
        "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
        "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40),
    }[size]
    return transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            image_size=336, patch_size=14, hidden_act="quick_gelu", projection_dim=768,
        ),
        text_config=transformers.LlamaConfig(vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5, **text),
        image_token_index=32000,
        image_seq_length=576,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
