"""InstructBLIP's Q-Former block: BERT-style post-norm layers over query and instruction tokens.

The sequence is ``[queries ; instruction]``. Self-attention mixes both; in every
``cross_attention_frequency``-th layer the query positions alone then cross-attend to the
vision features; the feed-forward is separate for the two parts (``mlp_query`` for the queries,
``mlp`` for the instruction). Every sub-layer is post-norm: ``x = LN(x + f(x))``.

References: "InstructBLIP" (instruction-aware Q-Former); "BLIP-2" (the Q-Former).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from mmlens.components.attention import Attention, AttentionMask
from mmlens.components.mlp import MLP
from mmlens.components.norms import LayerNorm
from mmlens.config import QFormerConfig
from mmlens.hooks import HookPoint


class CrossAttention(Attention):
    """Attention whose queries come from ``x`` and whose keys and values come from ``source``
    (of width ``d_encoder``), with no mask; the same hooks as :class:`Attention`
    (``hook_pattern`` is ``[batch, head_index, query_pos, v_pos]``)."""

    def __init__(self, cfg: QFormerConfig):
        super().__init__(cfg)
        self.k_proj = nn.Linear(cfg.d_encoder, cfg.n_heads * cfg.d_head, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_encoder, cfg.n_heads * cfg.d_head, bias=cfg.qkv_bias)

    def forward(  # type: ignore[override]
        self, x: Float[Tensor, "batch pos d_model"], source: Float[Tensor, "batch v_pos d_encoder"]
    ) -> Float[Tensor, "batch pos d_model"]:
        cfg = self.cfg
        b, p, _ = x.shape
        q = self.hook_q(self.q_proj(x).view(b, p, cfg.n_heads, cfg.d_head))
        k = self.hook_k(self.k_proj(source).view(b, source.shape[1], cfg.n_heads, cfg.d_head))
        v = self.hook_v(self.v_proj(source).view(b, source.shape[1], cfg.n_heads, cfg.d_head))
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        mask = AttentionMask()
        z = self._explicit(qh, kh, vh, mask) if self.needs_pattern() else self._fused(qh, kh, vh, mask)
        z = self.hook_z(z.transpose(1, 2))
        return self.o_proj(z.reshape(b, p, cfg.n_heads * cfg.d_head))


class QFormerBlock(nn.Module):
    """One Q-Former layer (``n_queries`` query positions first, then the instruction).

    ``resid_mid = ln1(resid_pre + attn(resid_pre))``; for the queries of a cross-attention layer
    ``resid_cross = ln_cross(resid_mid[:q] + cross_attn(resid_mid[:q], image))``; then
    ``resid_post = [ln2_query(r_q + mlp_query(r_q)) ; ln2(r_t + mlp(r_t))]``.
    """

    def __init__(self, cfg: QFormerConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.attn = Attention(cfg)
        self.ln1 = LayerNorm(cfg.d_model, cfg.eps)
        self.has_cross_attention = cfg.has_cross_attention(layer)
        if self.has_cross_attention:
            self.cross_attn = CrossAttention(cfg)
            self.ln_cross = LayerNorm(cfg.d_model, cfg.eps)
            self.hook_cross_attn_out = HookPoint()  # [batch, n_query, d_model]
            self.hook_resid_cross = HookPoint()  # [batch, n_query, d_model]
        self.mlp_query = MLP(cfg)
        self.ln2_query = LayerNorm(cfg.d_model, cfg.eps)
        self.mlp = MLP(cfg)
        self.ln2 = LayerNorm(cfg.d_model, cfg.eps)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        mask: AttentionMask,
        image: Float[Tensor, "batch v_pos d_encoder"],
    ) -> Float[Tensor, "batch pos d_model"]:
        n_q = self.cfg.n_queries
        resid = self.hook_resid_pre(resid)
        attn_out, _ = self.attn(resid, mask)
        resid = self.hook_resid_mid(self.ln1(resid + self.hook_attn_out(attn_out)))
        queries, text = resid[:, :n_q], resid[:, n_q:]
        if self.has_cross_attention:
            cross = self.hook_cross_attn_out(self.cross_attn(queries, image))
            queries = self.hook_resid_cross(self.ln_cross(queries + cross))
        mlp_out = self.hook_mlp_out(torch.cat([self.mlp_query(queries), self.mlp(text)], dim=1))
        out = torch.cat([self.ln2_query(queries + mlp_out[:, :n_q]), self.ln2(text + mlp_out[:, n_q:])], dim=1)
        return self.hook_resid_post(out)
