"""The hooked language decoder (Llama / Mistral / Qwen2 family) with TransformerLens hook names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

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
from mmlens.typing import TokenMask


@dataclass
class KVCache:
    """Keys/values of the positions seen so far, for incremental decoding.

    Layers may hold different numbers of positions (after token pruning), so validity is kept
    per layer.

    Attributes:
        kv: Per layer ``(k, v)``, each ``[batch, key_pos, kv_head, d_head]`` (keys rotated); None
            for layers a partial run did not compute.
        valid: Per layer ``[batch, key_pos]``: False at padding and at keys hidden by pruning.
        next_pos: ``[batch]`` rotary position of the next token of each row.
    """

    kv: list = field(default_factory=list)
    valid: list = field(default_factory=list)
    next_pos: Tensor | None = None

    @classmethod
    def prefix(cls, kv: list, key_valid: Tensor) -> KVCache:
        """A cache of the same ``key_valid`` positions in every layer."""
        return cls(kv=kv, valid=[key_valid] * len(kv))

    @property
    def has_past(self) -> bool:
        return any(v is not None and v.shape[1] > 0 for v in self.valid)


@dataclass
class SeqState:
    """The sequence a block runs on, as token pruning may reshape it between blocks.

    Attributes:
        resid: ``[batch, pos, d_model]``.
        rotary: ``(cos, sin)`` for the current positions.
        valid: ``[batch, pos]`` real (non-padding) positions.
        visible: ``[batch, pos]`` positions other positions may attend to (False once pruned in
            mask mode).
        kept: ``[batch, pos]`` original index of each current position.
        image: ``[batch, pos]`` image positions.
        instruction: ``[batch, pos]`` positions after the image (the instruction).
        newline: ``[batch, pos]`` anyres ``image_newline`` slots (a subset of ``image``).
    """

    resid: Tensor
    rotary: tuple[Tensor, Tensor]
    valid: Tensor
    visible: Tensor
    kept: Tensor
    image: Tensor
    instruction: Tensor
    newline: Tensor

    def gather(self, index: Tensor) -> SeqState:
        """Keep positions ``index`` (``[batch, n]``, increasing) of every field."""

        def take(x: Tensor) -> Tensor:
            return torch.gather(x, 1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:]))

        return SeqState(take(self.resid), (take(self.rotary[0]), take(self.rotary[1])), take(self.valid),
                        take(self.visible), take(self.kept), take(self.image), take(self.instruction),
                        take(self.newline))


@runtime_checkable
class LayerPlan(Protocol):
    """What the decoder asks of a token-pruning policy (see :mod:`mmlens.pruning`)."""

    def wants_pattern(self, layer: int) -> bool: ...

    def observe(self, layer: int, pattern: Tensor) -> None: ...

    def before_block(self, layer: int, state: SeqState) -> SeqState: ...


def positions_from_mask(attention_mask: TokenMask) -> Int[Tensor, "batch pos"]:
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
        attention_mask: TokenMask | None = None,
        position_ids: Int[Tensor, "batch pos"] | None = None,
        cache: KVCache | None = None,
        start_layer: int = 0,
        *,
        plan: LayerPlan | None = None,
        image: Tensor | None = None,
        newline: Tensor | None = None,
    ) -> Float[Tensor, "batch kept_pos d_vocab"]:
        """Run blocks ``start_layer..`` on a residual stream, then the final norm and unembedding.

        Args:
            resid: Input to block ``start_layer`` (merged embeddings when ``start_layer == 0``).
            attention_mask: 1 for real tokens, 0 for (left) padding, over the new positions.
            position_ids: Rotary positions; derived from ``attention_mask`` when omitted.
            cache: Past keys/values; updated in place with the new positions when given.
            start_layer: First block to run (earlier blocks are assumed already applied).
            plan: A token-pruning plan consulted before every block (prefill only).
            image: ``[batch, pos]`` image positions, for the plan.
            newline: ``[batch, pos]`` anyres newline slots among them, for the plan.

        Returns:
            Logits of the positions that remain (all of them unless ``plan`` drops some).
        """
        b, p, _ = resid.shape
        valid = torch.ones(b, p, dtype=torch.bool, device=resid.device) if attention_mask is None else attention_mask.bool()
        past = cache is not None and cache.has_past
        if position_ids is None:
            offset = cache.next_pos[:, None] if past and cache.next_pos is not None else 0
            position_ids = offset + positions_from_mask(valid)
        image = torch.zeros_like(valid) if image is None else image
        newline = torch.zeros_like(valid) if newline is None else newline
        after_image = torch.cumsum(image.int().flip(-1), -1).flip(-1) == 0
        state = SeqState(resid, self.rotary(position_ids, resid.dtype), valid, valid,
                         torch.arange(p, device=resid.device).expand(b, p), image,
                         after_image & image.any(-1, keepdim=True) & valid, newline)
        new_kv: list = [None] * self.cfg.n_layers
        new_valid: list = [None] * self.cfg.n_layers
        masks: dict[tuple[int, int], AttentionMask] = {}
        for layer in range(start_layer, self.cfg.n_layers):
            if plan is not None:
                state = plan.before_block(layer, state)
            key_valid = state.visible if not past else torch.cat([cache.valid[layer], state.visible], dim=1)
            key = (id(key_valid), state.resid.shape[1])
            if key not in masks:
                masks = {key: build_mask(key_valid, state.resid.shape[1], self.cfg.sliding_window)}
            past_kv = cache.kv[layer] if past else None
            block = self.blocks[layer]
            if plan is not None and plan.wants_pattern(layer):
                handle = block.attn.hook_pattern.add_hook(lambda x, hook, layer=layer: plan.observe(layer, x))
                try:
                    state.resid, new_kv[layer] = block(state.resid, masks[key], state.rotary, past_kv)
                finally:
                    handle.hook.remove()
                    block.attn.hook_pattern.fwd_hooks.remove(handle)
            else:
                state.resid, new_kv[layer] = block(state.resid, masks[key], state.rotary, past_kv)
            new_valid[layer] = key_valid
        if cache is not None:
            cache.kv, cache.valid = new_kv, new_valid
            cache.next_pos = position_ids[:, -1] + 1
        return self.unembed(self.ln_final(state.resid))

    def forward(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: TokenMask | None = None,
        position_ids: Int[Tensor, "batch pos"] | None = None,
        cache: KVCache | None = None,
    ) -> Float[Tensor, "batch kept_pos d_vocab"]:
        """Logits of a text-only forward."""
        resid = self.hook_embed(self.embed(input_ids))
        return self.decode_blocks(resid, attention_mask, position_ids, cache)
