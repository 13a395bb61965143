"""Token embedding and unembedding (TransformerLens' ``W_E`` / ``W_U``)."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


class Embed(nn.Module):
    def __init__(self, d_vocab: int, d_model: int):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(d_vocab, d_model))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self.W_E[tokens]


class Unembed(nn.Module):
    """Logits ``x @ W_U``. The weight keeps the ``[d_vocab, d_model]`` layout of Hugging Face's
    ``lm_head`` (so tied embeddings share one tensor); ``W_U`` is its transpose."""

    def __init__(self, d_vocab: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_vocab, d_model))

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.weight.T

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return nn.functional.linear(x, self.weight)
