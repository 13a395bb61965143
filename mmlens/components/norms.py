"""RMSNorm and LayerNorm with TransformerLens' ``hook_scale`` / ``hook_normalized``.

Both compute their statistics in fp32 and cast back, as the Hugging Face implementations do, so
bf16/fp16 models match them.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from mmlens.hooks import HookPoint


class RMSNorm(nn.Module):
    """``w * x / sqrt(mean(x²) + eps)`` (Llama, Mistral, Qwen2)."""

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        dtype = x.dtype
        x = x.float()
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized((x / scale).to(dtype))
        return self.w * x


class LayerNorm(nn.Module):
    """``w * (x - mean) / sqrt(var + eps) + b`` (CLIP and SigLIP towers)."""

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        dtype = x.dtype
        x = x.float()
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized((x / scale).to(dtype))
        return self.w * x + self.b


NORMS = {"RMS": RMSNorm, "LN": LayerNorm}
