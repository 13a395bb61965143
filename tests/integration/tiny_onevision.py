"""Tiny random LLaVA-OneVision checkpoints for the parity and prepare tests (no downloads)."""

from __future__ import annotations

from typing import Any

import torch
import transformers

from mmlens.zoo.tiny import tiny_llava_config

PINPOINTS = ((32, 64), (64, 32), (64, 64), (96, 32))  # (height, width); the tower's tiles are 32 px


def tiny_onevision_config(aspect: str = "anyres_max_9", **kwargs: Any) -> transformers.LlavaOnevisionConfig:
    """A ``LlavaOnevisionConfig`` with a SigLIP tower and a Qwen2 decoder, small enough for a CPU."""
    kwargs = {"decoder": "qwen2", "vision": "siglip", "select_strategy": "full", "vision_feature_layer": -1} | kwargs
    base = tiny_llava_config(**kwargs)
    return transformers.LlavaOnevisionConfig(
        vision_config=base.vision_config,
        text_config=base.text_config,
        image_token_index=base.image_token_id,
        image_grid_pinpoints=[list(p) for p in PINPOINTS],
        vision_feature_layer=base.vision_feature_layer,
        vision_feature_select_strategy=base.vision_feature_select_strategy,
        vision_aspect_ratio=aspect,
    )


def random_onevision(config: transformers.LlavaOnevisionConfig, seed: int = 0) -> transformers.PreTrainedModel:
    """The Hugging Face model with unit-scale random weights (activations far from zero)."""
    torch.manual_seed(seed)
    model = transformers.LlavaOnevisionForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5)
            elif "norm" in name and name.endswith("weight"):
                p.uniform_(0.6, 1.4)
            else:
                p.normal_(0.0, 0.2)
    return model
