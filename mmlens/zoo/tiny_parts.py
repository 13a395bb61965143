"""What the tiny-checkpoint builders share: decoder configs, weight randomisation, word-level tokenizers.

The builders (:mod:`~mmlens.zoo.tiny`, :mod:`~mmlens.zoo.tiny_blip`, :mod:`~mmlens.zoo.tiny_original`,
:mod:`~mmlens.zoo.tiny_qwen_vl`, :mod:`~mmlens.zoo.internvl_processor`, :mod:`~mmlens.zoo.tokenizer`)
each add their family's towers, special tokens and processor around these parts.

Example:
    >>> decoder_config("llama", vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=None, d_mlp=32).num_key_value_heads
    2
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

DECODER_CONFIGS = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "qwen2": transformers.Qwen2Config,
}
"""Decoder family → its Hugging Face config class."""


def decoder_config(
    decoder: str,
    *,
    vocab_size: int,
    d_model: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int | None,
    d_mlp: int,
    max_position_embeddings: int = 2048,
    **extra: Any,
) -> transformers.PretrainedConfig:
    """A tiny decoder config of family ``decoder`` (``n_kv_heads=None``: as many as query heads).

    Args:
        decoder: ``"llama"``, ``"mistral"`` or ``"qwen2"``.
        vocab_size, d_model, n_layers, n_heads, n_kv_heads, d_mlp: Sizes, TransformerLens names.
        max_position_embeddings: The context.
        **extra: Further config fields (``tie_word_embeddings``, ``sliding_window``...).
    """
    return DECODER_CONFIGS[decoder](
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads or n_heads,
        max_position_embeddings=max_position_embeddings,
        **extra,
    )


def randomise(module: torch.nn.Module) -> torch.nn.Module:
    """Redraw weights in place at a size that keeps a random tiny model's activations far from zero.

    Matrices (not embeddings) get standard deviation ``1/sqrt(fan_in)``, other non-embedding
    tensors of rank ≥ 3 0.05; norm weights and layer-scale ``lambda`` vectors U(0.5, 1.5); other
    vectors N(0, 0.1); embeddings N(0, 1). Draws follow ``named_parameters`` order, so a seed set
    before gives the same weights every time.
    """
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2 and "embed" not in name:
                p.normal_(0.0, p.shape[-1] ** -0.5 if p.ndim == 2 else 0.05)
            elif p.ndim == 1 and ("norm" in name and name.endswith("weight") or "lambda" in name):
                p.uniform_(0.5, 1.5)
            elif p.ndim == 1:
                p.normal_(0.0, 0.1)
            else:
                p.normal_(0.0, 1.0)
    return module


def word_level_backend(tokens: Sequence[str], unk: str = "<unk>") -> Tokenizer:
    """A word-level ``tokenizers`` backend over ``tokens`` (ids in order, duplicates dropped).

    Text is split on whitespace, then every punctuation character is its own token, so
    ``"colour?"`` is ``["colour", "?"]``; unknown words map to ``unk``.
    """
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    return backend
