"""Multi-head / grouped-query self-attention with TransformerLens hooks.

One class serves both towers: the decoder (causal, rotary, optional GQA and biases) and the
vision encoder (bidirectional, biased, no rotary). Two numerically equivalent paths:

* the *explicit* path materialises ``hook_attn_scores`` (pre-softmax, masked) and
  ``hook_pattern`` (post-softmax) so hooks can read or edit them;
* the *fused* path calls :func:`torch.nn.functional.scaled_dot_product_attention` and runs
  whenever no hook is attached to either of those two points.
"""

from __future__ import annotations

from dataclasses import dataclass

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from mmlens.components.norms import RMSNorm
from mmlens.components.rotary import apply_rotary
from mmlens.config import TowerConfig
from mmlens.hooks import HookPoint


@dataclass(frozen=True)
class AttentionMask:
    """Which keys each query may read, shared by every layer of one forward.

    Attributes:
        allowed: ``[batch, 1, query_pos, key_pos]``, True where attention is allowed; None means
            every key is visible (bidirectional, no padding).
        causal_only: ``allowed`` is exactly the square causal mask, so the fused path may use
            ``is_causal=True`` instead of a materialised mask (what Hugging Face's SDPA does).
    """

    allowed: Bool[Tensor, "batch 1 query_pos key_pos"] | None = None
    causal_only: bool = False


class Attention(nn.Module):
    """Self-attention. Weights keep the Hugging Face ``nn.Linear`` layout; TransformerLens-style
    ``W_Q`` / ``W_K`` / ``W_V`` / ``W_O`` views are available as properties."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        h, kv, dh, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model
        self.q_proj = nn.Linear(d, h * dh, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, kv * dh, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, kv * dh, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(h * dh, d, bias=cfg.o_bias)
        # InternViT's QK-norm: one RMSNorm over all heads' queries (keys), before the heads split.
        self.q_norm = RMSNorm(h * dh, cfg.qk_norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(kv * dh, cfg.qk_norm_eps) if cfg.qk_norm else nn.Identity()
        self.hook_q = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, kv_head, d_head]
        if cfg.positional_embedding_type == "rotary":
            self.hook_rot_q = HookPoint()
            self.hook_rot_k = HookPoint()
        self.hook_attn_scores = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head_index, d_head]

    # --- TransformerLens-style weight views -------------------------------------------------
    @property
    def W_Q(self) -> Float[Tensor, "head_index d_model d_head"]:
        return einops.rearrange(self.q_proj.weight, "(h dh) d -> h d dh", h=self.cfg.n_heads)

    @property
    def W_K(self) -> Float[Tensor, "kv_head d_model d_head"]:
        return einops.rearrange(self.k_proj.weight, "(h dh) d -> h d dh", h=self.cfg.n_kv_heads)

    @property
    def W_V(self) -> Float[Tensor, "kv_head d_model d_head"]:
        return einops.rearrange(self.v_proj.weight, "(h dh) d -> h d dh", h=self.cfg.n_kv_heads)

    @property
    def W_O(self) -> Float[Tensor, "head_index d_head d_model"]:
        return einops.rearrange(self.o_proj.weight, "d (h dh) -> h dh d", h=self.cfg.n_heads)

    def needs_pattern(self) -> bool:
        """True when a hook reads or edits scores or pattern, so the explicit path must run."""
        return self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks()

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        mask: AttentionMask,
        rotary: tuple[Tensor, Tensor] | None = None,
        past_kv: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Float[Tensor, "batch pos d_model"], tuple[Tensor, Tensor]]:
        """Attend and return the output with this call's ``(k, v)`` (rotated, past included).

        Args:
            x: Normalised input.
            mask: Visibility of keys (past keys included) for each query.
            rotary: ``(cos, sin)`` for the positions of ``x``, when the tower uses rotary.
            past_kv: Keys and values of earlier positions, ``[batch, key_pos, kv_head, d_head]``.
        """
        b, p, _ = x.shape
        cfg = self.cfg
        q = self.hook_q(self.q_norm(self.q_proj(x)).view(b, p, cfg.n_heads, cfg.d_head))
        k = self.hook_k(self.k_norm(self.k_proj(x)).view(b, p, cfg.n_kv_heads, cfg.d_head))
        v = self.hook_v(self.v_proj(x).view(b, p, cfg.n_kv_heads, cfg.d_head))
        if rotary is not None:
            q = self.hook_rot_q(apply_rotary(q, *rotary))
            k = self.hook_rot_k(apply_rotary(k, *rotary))
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=1)
            v = torch.cat([past_kv[1], v], dim=1)
        # [batch, head, pos, d_head] for the matmuls; kv heads repeated for grouped-query attention.
        qh = q.transpose(1, 2)
        groups = cfg.n_heads // cfg.n_kv_heads
        kh = k.transpose(1, 2).repeat_interleave(groups, dim=1) if groups > 1 else k.transpose(1, 2)
        vh = v.transpose(1, 2).repeat_interleave(groups, dim=1) if groups > 1 else v.transpose(1, 2)
        if self.needs_pattern():
            z = self._explicit(qh, kh, vh, mask)
        else:
            z = self._fused(qh, kh, vh, mask)
        z = self.hook_z(z.transpose(1, 2))
        return self.o_proj(z.reshape(b, p, cfg.n_heads * cfg.d_head)), (k, v)

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask) -> Tensor:
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.cfg.scale
        if mask.allowed is not None:
            # finfo.min rather than -inf keeps fully masked rows (left padding) finite.
            scores = scores.masked_fill(~mask.allowed, torch.finfo(scores.dtype).min)
        scores = self.hook_attn_scores(scores)
        pattern = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        pattern = self.hook_pattern(pattern)
        return torch.matmul(pattern, v)

    def _fused(self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask) -> Tensor:
        if mask.causal_only and q.shape[2] > 1:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.cfg.scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.allowed, scale=self.cfg.scale)
