"""Tiny random LLaVA checkpoints in Hugging Face format, for tests, demos and benchmarks.

Built from ``transformers`` config classes with random weights, so parity tests compare mmlens
against the real Hugging Face implementation without downloading anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

from mmlens.zoo.tiny_parts import DECODER_CONFIGS, decoder_config, randomise

__all__ = [
    "DECODER_CONFIGS", "IMAGE_TOKEN_ID", "MODEL_CLASSES", "ONEVISION_PINPOINTS", "VISION_CONFIGS", "save_tiny_checkpoint",
    "tiny_internvl_config", "tiny_llava", "tiny_llava_config", "tiny_llava_next_config", "tiny_onevision_config",
]

IMAGE_TOKEN_ID = 4  # "<image>" in the zoo's word-level tokenizer

VISION_CONFIGS = {
    "clip": transformers.CLIPVisionConfig,
    "siglip": transformers.SiglipVisionConfig,
}


def tiny_llava_config(
    decoder: str = "llama",
    vision: str = "clip",
    *,
    vocab_size: int = 128,
    d_model: int = 64,
    n_layers: int = 3,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    d_mlp: int = 128,
    vision_d_model: int = 48,
    vision_layers: int = 3,
    vision_heads: int = 4,
    image_size: int = 32,
    patch_size: int = 8,
    vision_feature_layer: int | list[int] = -2,
    select_strategy: str = "default",
    image_token_index: int | None = None,
    tie_word_embeddings: bool = False,
    **decoder_kwargs: Any,
) -> transformers.LlavaConfig:
    """A ``LlavaConfig`` small enough to run in milliseconds on a CPU."""
    text = decoder_config(decoder, vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                          n_kv_heads=n_kv_heads, d_mlp=d_mlp, tie_word_embeddings=tie_word_embeddings, **decoder_kwargs)
    vis = VISION_CONFIGS[vision](
        hidden_size=vision_d_model,
        intermediate_size=2 * vision_d_model,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    n_tokens = (image_size // patch_size) ** 2 + int(vision == "clip") - int(select_strategy == "default")
    return transformers.LlavaConfig(
        vision_config=vis,
        text_config=text,
        image_token_index=IMAGE_TOKEN_ID if image_token_index is None else image_token_index,
        image_seq_length=n_tokens,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=select_strategy,
        tie_word_embeddings=tie_word_embeddings,
    )


def _anyres_config(config_class: type, pinpoints, base: transformers.LlavaConfig, **extra: Any):
    """``config_class`` (an anyres LLaVA config) over ``base``'s towers, tiled over ``pinpoints``."""
    return config_class(
        vision_config=base.vision_config,
        text_config=base.text_config,
        image_token_index=base.image_token_id,
        image_grid_pinpoints=[list(p) for p in pinpoints],
        vision_feature_layer=base.vision_feature_layer,
        vision_feature_select_strategy=base.vision_feature_select_strategy,
        **extra,
    )


def tiny_llava_next_config(pinpoints=((32, 64), (64, 32), (64, 64)), **kwargs: Any) -> transformers.LlavaNextConfig:
    """A tiny ``LlavaNextConfig`` (anyres tiling over ``pinpoints`` of the vision tower's tiles)."""
    base = tiny_llava_config(**kwargs)
    return _anyres_config(transformers.LlavaNextConfig, pinpoints, base, tie_word_embeddings=base.tie_word_embeddings)


ONEVISION_PINPOINTS = ((32, 64), (64, 32), (64, 64), (96, 32))
"""(height, width) grids of a tiny OneVision model, in units of its 32-px tower tiles."""


def tiny_onevision_config(
    aspect: str = "anyres_max_9", pinpoints=ONEVISION_PINPOINTS, **kwargs: Any
) -> transformers.LlavaOnevisionConfig:
    """A tiny ``LlavaOnevisionConfig``: SigLIP tower (all patches, last layer), Qwen2 decoder, anyres
    tiling over ``pinpoints`` with ``vision_aspect_ratio=aspect``."""
    kwargs = {"decoder": "qwen2", "vision": "siglip", "select_strategy": "full", "vision_feature_layer": -1} | kwargs
    return _anyres_config(transformers.LlavaOnevisionConfig, pinpoints, tiny_llava_config(**kwargs), vision_aspect_ratio=aspect)


def tiny_internvl_config(
    decoder: str = "qwen2",
    *,
    vocab_size: int = 128,
    d_model: int = 64,
    n_layers: int = 3,
    n_heads: int = 4,
    n_kv_heads: int | None = 2,
    d_mlp: int = 128,
    vision_d_model: int = 48,
    vision_layers: int = 3,
    vision_heads: int = 4,
    image_size: int = 32,
    patch_size: int = 8,
    vision_feature_layer: int = -1,
    use_qk_norm: bool = False,
    norm_type: str = "layer_norm",
    attention_bias: bool = True,
    tie_word_embeddings: bool = False,
    **decoder_kwargs: Any,
) -> transformers.InternVLConfig:
    """A tiny ``InternVLConfig``: InternViT tower, 2×2 pixel shuffle, Qwen2 (or Llama) decoder.

    A 32-px tile of 8-px patches is a 4×4 grid, so each tile (and the thumbnail) gives 4 image
    tokens. The image token is ``<IMG_CONTEXT>`` of :mod:`mmlens.zoo.internvl_processor`.
    """
    from mmlens.zoo.internvl_processor import IMAGE_TOKEN_ID as INTERNVL_IMAGE_TOKEN_ID

    text = decoder_config(decoder, vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                          n_kv_heads=n_kv_heads, d_mlp=d_mlp, tie_word_embeddings=tie_word_embeddings, **decoder_kwargs)
    vis = transformers.InternVLVisionConfig(
        hidden_size=vision_d_model,
        intermediate_size=2 * vision_d_model,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        use_qk_norm=use_qk_norm,
        norm_type=norm_type,
        attention_bias=attention_bias,
    )
    return transformers.InternVLConfig(
        vision_config=vis,
        text_config=text,
        image_token_id=INTERNVL_IMAGE_TOKEN_ID,
        image_seq_length=(image_size // patch_size) ** 2 // 4,
        vision_feature_layer=vision_feature_layer,
        tie_word_embeddings=tie_word_embeddings,
    )


MODEL_CLASSES = {
    transformers.LlavaConfig: transformers.LlavaForConditionalGeneration,
    transformers.LlavaNextConfig: transformers.LlavaNextForConditionalGeneration,
    transformers.LlavaOnevisionConfig: transformers.LlavaOnevisionForConditionalGeneration,
    transformers.InternVLConfig: transformers.InternVLForConditionalGeneration,
}


def tiny_llava(config: transformers.PretrainedConfig, seed: int = 0) -> transformers.PreTrainedModel:
    """A randomly initialised model; weights are rescaled (:func:`~mmlens.zoo.tiny_parts.randomise`) so
    activations are not vanishingly small."""
    torch.manual_seed(seed)
    return randomise(MODEL_CLASSES[type(config)](config).eval())


def save_tiny_checkpoint(directory: str | Path, config: transformers.PretrainedConfig | None = None, seed: int = 0) -> Path:
    """Write a tiny random checkpoint (config + safetensors) to ``directory`` and return it.

    CLIP checkpoints with the ``default`` strategy also get the zoo's word-level tokenizer and a
    LLaVA processor (vocabulary of the shapes world), so ``model.prepare`` works on them; InternVL
    checkpoints get an ``InternVLProcessor`` over the same words (tiles of the tower's size, up to 6).
    """
    from mmlens.data.shapes import VOCAB_WORDS
    from mmlens.zoo.tokenizer import save_tokenizer_and_processor

    directory = Path(directory)
    config = config or tiny_llava_config()
    tiny_llava(config, seed).save_pretrained(directory)
    vc = config.vision_config
    if isinstance(config, transformers.LlavaConfig) and vc.model_type == "clip_vision_model" and config.vision_feature_select_strategy == "default":
        save_tokenizer_and_processor(directory, VOCAB_WORDS, vc.image_size, vc.patch_size)
    if isinstance(config, transformers.InternVLConfig):
        from mmlens.zoo.internvl_processor import save_internvl_processor

        save_internvl_processor(directory, VOCAB_WORDS, vc.image_size[0], config.image_seq_length)
    return directory
