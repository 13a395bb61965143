"""Tiny random Qwen2-VL and Qwen2.5-VL checkpoints, with a locally built processor.

A 4-px patch, 2 frames per temporal patch and 2×2 merging: an image resized to ``H × W`` pixels
(multiples of 8) gives ``(H/4) × (W/4)`` patches and ``(H/8) · (W/8)`` image tokens. The
tokenizer speaks the shapes vocabulary plus Qwen2-VL's chat and vision tokens, ids 0 to 7 in
:data:`SPECIAL_TOKENS` order; nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, no_type_check

import torch
import transformers
from transformers import PreTrainedTokenizerFast, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from mmlens.zoo.tiny_parts import word_level_backend
from mmlens.zoo.tokenizer import CLIP_MEAN, CLIP_STD

IMAGE_PAD = "<|image_pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (
    "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", IMAGE_PAD,
    "<|video_pad|>",
)
"""Special tokens, ids 0 to 7 in this order (``<|image_pad|>`` is 6)."""

IMAGE_TOKEN_ID = SPECIAL_TOKENS.index(IMAGE_PAD)
CHAT_WORDS = ("system", "user", "assistant", "You", "are", "a", "helpful", ".")
"""Words of the chat template's default system turn and roles, added after the caller's."""
PATCH, MERGE, TEMPORAL = 4, 2, 2

# The chat template of the Qwen/Qwen2-VL-*-Instruct checkpoints, images only (default system turn).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen2_vl_config(
    *,
    vocab_size: int = 128,
    d_model: int = 64,
    n_layers: int = 3,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 128,
    vision_d_model: int = 32,
    vision_layers: int = 3,
    vision_heads: int = 4,
    mrope_section: Sequence[int] = (2, 3, 3),
    tie_word_embeddings: bool = False,
) -> transformers.Qwen2VLConfig:
    """A tiny ``Qwen2VLConfig``: 4-px patches merged 2×2, a Qwen2 decoder with M-RoPE (d_head 16)."""
    vision = dict(depth=vision_layers, embed_dim=vision_d_model, hidden_size=d_model, num_heads=vision_heads,
                  patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL)
    return transformers.Qwen2VLConfig(
        text_config=_text(vocab_size, d_model, n_layers, n_heads, n_kv_heads, d_mlp, mrope_section, tie_word_embeddings),
        vision_config=vision, **_token_ids(), tie_word_embeddings=tie_word_embeddings,
    )


def tiny_qwen2_5_vl_config(
    *,
    vocab_size: int = 128,
    d_model: int = 64,
    n_layers: int = 3,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 128,
    vision_d_model: int = 32,
    vision_layers: int = 3,
    vision_heads: int = 4,
    window_tokens: int = 2,
    full_attention_layers: Sequence[int] = (1,),
    mrope_section: Sequence[int] = (2, 3, 3),
    tie_word_embeddings: bool = False,
) -> transformers.Qwen2_5_VLConfig:
    """A tiny ``Qwen2_5_VLConfig``: RMSNorm/SwiGLU tower with windows of ``window_tokens²`` image
    tokens except on ``full_attention_layers``, RMSNorm merger, the same decoder as Qwen2-VL's."""
    vision = dict(depth=vision_layers, hidden_size=vision_d_model, intermediate_size=2 * vision_d_model,
                  out_hidden_size=d_model, num_heads=vision_heads, patch_size=PATCH, spatial_merge_size=MERGE,
                  temporal_patch_size=TEMPORAL, window_size=window_tokens * MERGE * PATCH,
                  fullatt_block_indexes=list(full_attention_layers))
    return transformers.Qwen2_5_VLConfig(
        text_config=_text(vocab_size, d_model, n_layers, n_heads, n_kv_heads, d_mlp, mrope_section, tie_word_embeddings),
        vision_config=vision, **_token_ids(), tie_word_embeddings=tie_word_embeddings,
    )


def _text(vocab: int, d: int, layers: int, heads: int, kv: int, mlp: int, section: Sequence[int], tie: bool) -> dict:
    return dict(vocab_size=vocab, hidden_size=d, intermediate_size=mlp, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(section)},
                tie_word_embeddings=tie, eos_token_id=SPECIAL_TOKENS.index("<|im_end|>"),
                pad_token_id=SPECIAL_TOKENS.index("<|endoftext|>"), bos_token_id=None)


def _token_ids() -> dict[str, int]:
    return dict(image_token_id=IMAGE_TOKEN_ID, video_token_id=SPECIAL_TOKENS.index("<|video_pad|>"),
                vision_start_token_id=SPECIAL_TOKENS.index("<|vision_start|>"),
                vision_end_token_id=SPECIAL_TOKENS.index("<|vision_end|>"))


MODEL_CLASSES = {
    transformers.Qwen2VLConfig: transformers.Qwen2VLForConditionalGeneration,
    transformers.Qwen2_5_VLConfig: transformers.Qwen2_5_VLForConditionalGeneration,
}


def tiny_qwen_vl(config: transformers.PretrainedConfig, seed: int = 0) -> transformers.PreTrainedModel:
    """A randomly initialised model, weights rescaled (as :func:`mmlens.zoo.tiny.tiny_llava`) so
    activations are not vanishingly small."""
    torch.manual_seed(seed)
    model = MODEL_CLASSES[type(config)](config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "embed_tokens" not in name:
                p.normal_(0.0, p[0].numel() ** -0.5)
            elif p.ndim == 1 and ("norm" in name or "ln_q" in name) and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.ndim == 1:
                p.normal_(0.0, 0.1)
            else:
                p.normal_(0.0, 1.0)
    return model


class Qwen2VLImagesProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without its video processor (which needs torchvision): images and text only."""

    # transformers reads the accepted settings off ``__init__.__code__``; keep it unwrapped.
    @no_type_check
    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def build_qwen_vl_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over ``words`` with Qwen2-VL's special tokens (left padding, no BOS)."""
    backend = word_level_backend([*SPECIAL_TOKENS, *words, *CHAT_WORDS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": IMAGE_PAD, "video_token": "<|video_pad|>"}, padding_side="left",
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|vision_start|>", "<|vision_end|>"]})
    return tok


def build_qwen_vl_processor(words: Sequence[str], *, min_tokens: int = 4, max_tokens: int = 64) -> Qwen2VLImagesProcessor:
    """The tokenizer plus Qwen2-VL's (PIL) image processor: images resized to multiples of 8 px
    holding between ``min_tokens`` and ``max_tokens`` image tokens."""
    unit = PATCH * MERGE
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": min_tokens * unit * unit, "longest_edge": max_tokens * unit * unit},
        patch_size=PATCH, temporal_patch_size=TEMPORAL, merge_size=MERGE,
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
    )
    return Qwen2VLImagesProcessor(image_processor=image_processor, tokenizer=build_qwen_vl_tokenizer(words),
                                  chat_template=CHAT_TEMPLATE)


def save_tiny_qwen_vl(directory: str | PathLike[str], config: transformers.PretrainedConfig | None = None,
                      seed: int = 0) -> Path:
    """Write a tiny random checkpoint (default: Qwen2-VL) and its processor to ``directory``."""
    from mmlens.data.shapes import VOCAB_WORDS

    directory = Path(directory)
    config = config or tiny_qwen2_vl_config()
    tiny_qwen_vl(config, seed).save_pretrained(directory)
    build_qwen_vl_processor(VOCAB_WORDS).save_pretrained(str(directory))
    # Name the class a released checkpoint names, so loading goes the way it does for one.
    name = "Qwen2_5_VLProcessor" if isinstance(config, transformers.Qwen2_5_VLConfig) else "Qwen2VLProcessor"
    saved = directory / "processor_config.json"
    saved.write_text(json.dumps(json.loads(saved.read_text()) | {"processor_class": name}, indent=2))
    return directory
