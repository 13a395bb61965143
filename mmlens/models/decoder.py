"""The hooked language decoder (Llama / Mistral / Qwen2 family) with TransformerLens hook names."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from mmlens.components.attention import AttentionMask
from mmlens.components.block import Block
from mmlens.components.embed import Embed, Unembed
from mmlens.components.norms import NORMS
from mmlens.components.rotary import Rotary
from mmlens.config import DecoderConfig
from mmlens.hooks import HookPoint
from mmlens.models.root import HookedRoot


@dataclass
class KVCache:
    """Keys/values of the positions seen so far, for incremental decoding.

    Attributes:
        kv: Per layer ``(k, v)``, each ``[batch, key_pos, kv_head, d_head]`` (keys rotated); None
            for layers a partial run did not compute.
        key_valid: ``[batch, key_pos]``, False at padding.
        next_pos: ``[batch]`` rotary position of the next token of each row.
    """

    kv: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    key_valid: Tensor | None = None
    next_pos: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.key_valid is None else self.key_valid.shape[1]


def positions_from_mask(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Rotary positions that ignore left padding: 0 at each row's first real token."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)


def build_mask(
    key_valid: Bool[Tensor, "batch key_pos"], q_len: int, sliding_window: int | None
) -> AttentionMask:
    """Causal (+ padding, + sliding window) visibility of keys for the last ``q_len`` positions.

    Every position always sees itself, so padding rows stay finite and never produce NaN.
    """
    k_len = key_valid.shape[1]
    past = k_len - q_len
    q_idx = torch.arange(past, k_len, device=key_valid.device)[:, None]
    k_idx = torch.arange(k_len, device=key_valid.device)[None, :]
    allowed = k_idx <= q_idx
    if sliding_window is not None:
        allowed = allowed & (q_idx - k_idx < sliding_window)
    allowed = (allowed[None, None] & key_valid[:, None, None, :]) | (k_idx == q_idx)[None, None]
    causal_only = past == 0 and bool(key_valid.all()) and (sliding_window is None or sliding_window >= k_len)
    return AttentionMask(allowed=allowed, causal_only=causal_only)


class HookedDecoder(HookedRoot):
    """A decoder-only language model with TransformerLens hook names (no prefix).

    ``hook_embed`` → ``blocks.{l}.hook_resid_pre|mid|post`` (with ``ln1``/``attn``/``ln2``/``mlp``
    hooks) → ``ln_final.hook_scale|normalized`` → logits.
    """

    def __init__(self, cfg: DecoderConfig, *, setup: bool = True):
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.rotary = Rotary(torch.tensor(cfg.rotary_inv_freq), cfg.rotary_attention_scaling)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = NORMS[cfg.normalization_type](cfg.d_model, cfg.eps)
        self.unembed = Unembed(cfg.d_vocab, cfg.d_model)
        if setup:
            self.setup()

    # TransformerLens-style accessors used by ActivationCache helpers and analyses.
    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.unembed.W_U

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    def tokens_to_residual_directions(self, tokens: Int[Tensor, "..."]) -> Float[Tensor, "... d_model"]:
        return self.unembed.weight[tokens]

    def decode_blocks(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        position_ids: Int[Tensor, "batch pos"] | None = None,
        cache: KVCache | None = None,
        start_layer: int = 0,
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """Run blocks ``start_layer..`` on a residual stream, then the final norm and unembedding.

        Args:
            resid: Input to block ``start_layer`` (merged embeddings when ``start_layer == 0``).
            attention_mask: 1 for real tokens, 0 for (left) padding, over the new positions.
            position_ids: Rotary positions; derived from ``attention_mask`` when omitted.
            cache: Past keys/values; updated in place with the new positions when given.
            start_layer: First block to run (earlier blocks are assumed already applied).
        """
        b, p, _ = resid.shape
        new_valid = (
            torch.ones(b, p, dtype=torch.bool, device=resid.device)
            if attention_mask is None
            else attention_mask.bool()
        )
        past_len = cache.length if cache is not None else 0
        if position_ids is None:
            if cache is not None and cache.next_pos is not None:
                position_ids = cache.next_pos[:, None] + positions_from_mask(new_valid)
            else:
                position_ids = positions_from_mask(new_valid)
        key_valid = new_valid if past_len == 0 else torch.cat([cache.key_valid, new_valid], dim=1)
        mask = build_mask(key_valid, p, self.cfg.sliding_window)
        rotary = self.rotary(position_ids, resid.dtype)
        new_kv: list = [None] * self.cfg.n_layers
        for layer in range(start_layer, self.cfg.n_layers):
            past_kv = cache.kv[layer] if (cache is not None and past_len > 0) else None
            resid, new_kv[layer] = self.blocks[layer](resid, mask, rotary, past_kv)
        if cache is not None:
            cache.kv = new_kv
            cache.key_valid = key_valid
            cache.next_pos = position_ids[:, -1] + 1
        return self.unembed(self.ln_final(resid))

    def forward(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        position_ids: Int[Tensor, "batch pos"] | None = None,
        cache: KVCache | None = None,
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits of a text-only forward."""
        resid = self.hook_embed(self.embed(input_ids))
        return self.decode_blocks(resid, attention_mask, position_ids, cache)
