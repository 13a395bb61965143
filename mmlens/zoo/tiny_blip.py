"""Tiny random InstructBLIP checkpoints in Hugging Face format, for tests.

``InstructBlipForConditionalGeneration`` with a BLIP vision tower, a Q-Former and a Llama
(Vicuna) decoder, all small enough to run in milliseconds on a CPU; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

from mmlens.zoo.tiny_parts import decoder_config

IMAGE_TOKEN_ID = 4  # "<image>" in the zoo's word-level tokenizer, as for the LLaVA checkpoints


def tiny_instructblip_config(
    *,
    vocab_size: int = 128,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    d_mlp: int = 128,
    vision_d_model: int = 48,
    vision_layers: int = 2,
    vision_heads: int = 4,
    image_size: int = 32,
    patch_size: int = 8,
    qkv_bias: bool = True,
    qformer_d_model: int = 32,
    qformer_layers: int = 3,
    qformer_heads: int = 4,
    qformer_vocab_size: int = 96,
    cross_attention_frequency: int = 2,
    num_query_tokens: int = 6,
    **decoder_kwargs: Any,
) -> transformers.InstructBlipConfig:
    """An ``InstructBlipConfig`` with a Llama decoder; 3 Q-Former layers with cross-attention in
    layers 0 and 2 (``cross_attention_frequency=2``), so both kinds of Q-Former layer are tested."""
    text = decoder_config("llama", vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                          n_kv_heads=n_kv_heads, d_mlp=d_mlp, **decoder_kwargs)
    vision = transformers.InstructBlipVisionConfig(
        hidden_size=vision_d_model,
        intermediate_size=2 * vision_d_model,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        qkv_bias=qkv_bias,
    )
    qformer = transformers.InstructBlipQFormerConfig(
        vocab_size=qformer_vocab_size,
        hidden_size=qformer_d_model,
        num_hidden_layers=qformer_layers,
        num_attention_heads=qformer_heads,
        intermediate_size=2 * qformer_d_model,
        max_position_embeddings=64,
        cross_attention_frequency=cross_attention_frequency,
    )
    return transformers.InstructBlipConfig(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=num_query_tokens,
        image_token_index=IMAGE_TOKEN_ID,
    )


def tiny_instructblip(config: transformers.InstructBlipConfig | None = None, seed: int = 0):
    """A randomly initialised ``InstructBlipForConditionalGeneration``; weights rescaled (as in
    :func:`mmlens.zoo.tiny.tiny_llava`) so activations are not vanishingly small."""
    torch.manual_seed(seed)
    model = transformers.InstructBlipForConditionalGeneration(config or tiny_instructblip_config()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.normal_(0.0, p.shape[-1] ** -0.5)
            elif p.ndim == 1 and ("norm" in name.lower() and name.endswith("weight")):
                p.uniform_(0.5, 1.5)
            elif p.ndim == 1:
                p.normal_(0.0, 0.1)
            else:
                p.normal_(0.0, 1.0 if p.ndim < 4 else 0.05)
    return model


def save_tiny_instructblip(directory: str | Path, config: transformers.InstructBlipConfig | None = None, seed: int = 0) -> Path:
    """Write a tiny random InstructBLIP checkpoint (config + safetensors) and its processor
    (:func:`build_instructblip_processor`) to ``directory``."""
    directory = Path(directory)
    model = tiny_instructblip(config, seed)
    model.save_pretrained(directory)
    build_instructblip_processor(model.config.vision_config.image_size, model.config.num_query_tokens).save_pretrained(directory)
    return directory


def build_instructblip_processor(image_size: int, num_query_tokens: int):
    """An ``InstructBlipProcessor`` over the shapes-world words (zoo tokenizer for both the
    decoder and the Q-Former) and a BLIP image processor resizing to ``image_size``."""
    from transformers import InstructBlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    from mmlens.data.shapes import VOCAB_WORDS
    from mmlens.zoo.tokenizer import CLIP_MEAN, CLIP_STD, build_tokenizer

    image_processor = BlipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)
    )
    return InstructBlipProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(VOCAB_WORDS),
        qformer_tokenizer=build_tokenizer(VOCAB_WORDS),
        num_query_tokens=num_query_tokens,
    )
