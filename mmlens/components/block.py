"""A pre-norm transformer block with TransformerLens' residual-stream hooks."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor, nn

from mmlens.components.attention import Attention, AttentionMask
from mmlens.components.mlp import MLP, GatedMLP
from mmlens.components.norms import NORMS
from mmlens.config import TowerConfig
from mmlens.hooks import HookPoint


class Block(nn.Module):
    """``resid_mid = resid_pre + attn(ln1(resid_pre))``; ``resid_post = resid_mid + mlp(ln2(resid_mid))``."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.ln1 = NORMS[cfg.normalization_type](cfg.d_model, cfg.eps)
        self.attn = Attention(cfg)
        self.ln2 = NORMS[cfg.normalization_type](cfg.d_model, cfg.eps)
        self.mlp = GatedMLP(cfg) if cfg.gated_mlp else MLP(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        mask: AttentionMask,
        rotary: tuple[Tensor, Tensor] | None = None,
        past_kv: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Float[Tensor, "batch pos d_model"], tuple[Tensor, Tensor]]:
        resid = self.hook_resid_pre(resid)
        attn_out, kv = self.attn(self.ln1(resid), mask, rotary, past_kv)
        resid = self.hook_resid_mid(resid + self.hook_attn_out(attn_out))
        resid = self.hook_resid_post(resid + self.hook_mlp_out(self.mlp(self.ln2(resid))))
        return resid, kv
