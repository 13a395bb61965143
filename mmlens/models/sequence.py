"""What the decoder's blocks run on: the key/value cache, the sequence state, the pruning-plan
protocol, rotary positions from the padding mask, and the attention mask.

Kept apart from :mod:`mmlens.models.decoder` so code that reruns part of a forward (knockout
sweeps, patching, pruning policies) reads these types without the model class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from mmlens.components.attention import AttentionMask
from mmlens.errors import MMLensError
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

    def to(self, device: torch.device) -> SeqState:
        """Every field on ``device`` (itself when already there): the hop to the next block's device."""
        if self.resid.device == device:
            return self
        return SeqState(self.resid.to(device), (self.rotary[0].to(device), self.rotary[1].to(device)),
                        self.valid.to(device), self.visible.to(device), self.kept.to(device),
                        self.image.to(device), self.instruction.to(device), self.newline.to(device))


@runtime_checkable
class LayerPlan(Protocol):
    """What the decoder asks of one forward's token-pruning plan (see :mod:`mmlens.pruning`).

    A policy's ``plan(n_layers)`` makes one; the caller may keep it to read what was kept.
    """

    def wants_pattern(self, layer: int) -> bool: ...

    def observe(self, layer: int, pattern: Tensor) -> None: ...

    def before_block(self, layer: int, state: SeqState) -> SeqState: ...


def as_plan(prune: Any, n_layers: int) -> LayerPlan | None:
    """A forward's pruning plan: ``prune`` itself when it is one, else ``prune.plan(n_layers)``.

    Raises:
        MMLensError: ``prune`` is neither a plan nor a policy (see :mod:`mmlens.pruning`).
    """
    if prune is None or isinstance(prune, LayerPlan):
        return prune
    if hasattr(prune, "plan"):
        return prune.plan(n_layers)
    raise MMLensError(
        f"prune takes a pruning policy (FastV, HiMAP, Truncate from mmlens.pruning) or its plan "
        f"(policy.plan(n_layers)), not {type(prune).__name__}."
    )


def positions_from_mask(attention_mask: TokenMask) -> Int[Tensor, "batch pos"]:
    """Rotary positions that ignore left padding: 0 at each row's first real token."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)


def build_mask(
    key_valid: Bool[Tensor, "batch key_pos"],
    q_len: int,
    sliding_window: int | None,
    hidden_self: Bool[Tensor, "batch query_pos"] | None = None,
) -> AttentionMask:
    """Causal (+ padding, + sliding window) visibility of keys for the last ``q_len`` positions.

    Every position always sees itself, so padding rows stay finite and never produce NaN, except
    the ``hidden_self`` positions (pruned tokens under the released code's mask), which do not see
    their own key unless they could see nothing else.
    """
    k_len = key_valid.shape[1]
    past = k_len - q_len
    q_idx = torch.arange(past, k_len, device=key_valid.device)[:, None]
    k_idx = torch.arange(k_len, device=key_valid.device)[None, :]
    allowed = k_idx <= q_idx
    if sliding_window is not None:
        allowed = allowed & (q_idx - k_idx < sliding_window)
    allowed = allowed[None, None] & key_valid[:, None, None, :]
    own = (k_idx == q_idx)[None, None]
    if hidden_self is not None:
        others = (allowed & ~own).any(-1, keepdim=True)
        own = own & ~(hidden_self[:, None, :, None] & others)
    allowed = allowed | own
    causal_only = past == 0 and bool(key_valid.all()) and (sliding_window is None or sliding_window >= k_len)
    return AttentionMask(allowed=allowed, causal_only=causal_only)
