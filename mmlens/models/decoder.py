"""The hooked language decoder (Llama / Mistral / Qwen2 family) with TransformerLens hook names."""

from __future__ import annotations

from contextlib import nullcontext
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from mmlens.adapters import load_decoder_checkpoint
from mmlens.components.attention import AttentionMask
from mmlens.components.block import Block
from mmlens.components.embed import Embed, Unembed
from mmlens.components.norms import NORMS
from mmlens.components.mrope import MRotary
from mmlens.components.rotary import Rotary
from mmlens.config import DecoderConfig
from mmlens.errors import MMLensError
from mmlens.hooks import HookPoint
from mmlens.inputs.tokens import running_on
from mmlens.models.checks import check_attention_mask, check_context, check_token_ids
from mmlens.models.placement import execution_device, place
from mmlens.models.root import HookedRoot
from mmlens.models.sequence import KVCache, LayerPlan, SeqState, as_plan, build_mask, positions_from_mask
from mmlens.models.tl_compat import TransformerLensCompat
from mmlens.typing import TokenMask

# The sequence types live in mmlens.models.sequence; importers of this module keep working.
__all__ = ["HookedDecoder", "KVCache", "LayerPlan", "SeqState", "as_plan", "build_mask", "positions_from_mask"]


def _observer(plan: LayerPlan, layer: int) -> Callable[..., None]:
    """A hook handing layer ``layer``'s attention pattern to ``plan``."""

    def observe(pattern: Tensor, hook: Any) -> None:
        plan.observe(layer, pattern)

    return observe


def _stop_layer(stop_at_layer: int, n_layers: int) -> int:
    """``stop_at_layer`` as a block index in ``0..n_layers`` (negative counts from the end).

    Raises:
        MMLensError: out of range.
    """
    stop = stop_at_layer + n_layers if stop_at_layer < 0 else stop_at_layer
    if not 0 <= stop <= n_layers:
        raise MMLensError(
            f"stop_at_layer={stop_at_layer} is out of range for {n_layers} blocks: pass 0..{n_layers} "
            f"(or -{n_layers}..-1 from the end); 0 returns the embeddings."
        )
    return stop


def _to(x: Any, device: torch.device | None) -> Any:
    """A tensor or a tuple of tensors on ``device`` (unchanged when None or already there)."""
    if device is None or x is None:
        return x
    if isinstance(x, tuple):
        return tuple(t.to(device) for t in x)
    return x.to(device)


class HookedDecoder(TransformerLensCompat, HookedRoot):
    """A decoder-only language model with TransformerLens hook names (no prefix).

    ``hook_embed`` → ``blocks.{l}.hook_resid_pre|mid|post`` (with ``ln1``/``attn``/``ln2``/``mlp``
    hooks) → ``ln_final.hook_scale|normalized`` → logits.
    """

    def __init__(self, cfg: DecoderConfig, *, setup: bool = True):
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        inv_freq = torch.tensor(cfg.rotary_inv_freq)
        # Qwen2-VL: multimodal rotary, positions [3, batch, pos] (t, h, w).
        self.rotary = (Rotary(inv_freq, cfg.rotary_attention_scaling) if cfg.mrope_section is None
                       else MRotary(inv_freq, cfg.mrope_section, cfg.rotary_attention_scaling))
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

    @classmethod
    def from_pretrained(cls, path_or_model: Any, *, dtype: torch.dtype | str = torch.float32,
                        device: str | torch.device = "cpu", device_map: str | dict | None = None,
                        max_memory: dict | None = None, offload_folder: str | Path | None = None) -> HookedDecoder:
        """Load a text-only Llama / Mistral / Qwen2 checkpoint (``LlamaForCausalLM`` etc.).

        Args:
            path_or_model: A local directory in Hugging Face format or a loaded ``transformers``
                ``*ForCausalLM`` model.
            dtype: Parameter dtype (fp32, bf16 or fp16), or its name (``"float16"``).
            device: Where the model lives (without ``device_map``).
            device_map: ``"auto"`` or module name → device: blocks across devices with CPU/disk
                offload (:mod:`mmlens.models.placement`).
            max_memory: Memory per device for ``device_map="auto"`` (``{0: "20GiB", "cpu": "60GiB"}``).
            offload_folder: Directory for the weights of modules mapped to ``"disk"``.

        Raises:
            UnsupportedArchitectureError: no decoder adapter for the checkpoint's ``model_type``,
                or a config option mmlens does not implement.

        Example:
            >>> model = HookedDecoder.from_pretrained(LlamaForCausalLM(LlamaConfig(...)))  # doctest: +SKIP
            >>> logits, cache = model.run_with_cache(input_ids)  # doctest: +SKIP
        """
        cfg, state_dict = load_decoder_checkpoint(path_or_model, dtype=dtype)
        with torch.device("meta"):
            model = cls(cfg)
        model.load_state_dict(state_dict, strict=True, assign=True)
        model.rotary.inv_freq = torch.tensor(cfg.rotary_inv_freq, dtype=torch.float32)
        return place(model, device, device_map, max_memory, offload_folder)

    def decode_blocks(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        attention_mask: TokenMask | None = None,
        position_ids: Int[Tensor, "*three batch pos"] | None = None,
        cache: KVCache | None = None,
        start_layer: int = 0,
        *,
        plan: LayerPlan | None = None,
        image: Bool[Tensor, "batch pos"] | None = None,
        newline: Bool[Tensor, "batch pos"] | None = None,
        stop_at_layer: int | None = None,
    ) -> Float[Tensor, "batch kept_pos d_out"]:
        """Run blocks ``start_layer..`` on a residual stream, then the final norm and unembedding.

        Args:
            resid: Input to block ``start_layer`` (merged embeddings when ``start_layer == 0``).
            attention_mask: 1 for real tokens, 0 for (left) padding, over the new positions.
            position_ids: Rotary positions; derived from ``attention_mask`` when omitted. M-RoPE
                decoders (Qwen2-VL) also take ``[3, batch, pos]`` (temporal, height, width).
            cache: Past keys/values; updated in place with the new positions when given.
            start_layer: First block to run (earlier blocks are assumed already applied).
            plan: A token-pruning plan consulted before every block (prefill only).
            image: ``[batch, pos]`` image positions, for the plan.
            newline: ``[batch, pos]`` anyres newline slots among them, for the plan.
            stop_at_layer: Stop before this block (exclusive; negative counts from the end, as
                TransformerLens) and return the residual stream entering it, ``d_out = d_model``;
                None runs every block.

        Returns:
            Logits (``d_out = d_vocab``) of the positions that remain (all of them unless
            ``plan`` drops some), or the residual stream when ``stop_at_layer`` is given.
        """
        stop = self.cfg.n_layers if stop_at_layer is None else _stop_layer(stop_at_layer, self.cfg.n_layers)
        past = cache is not None and cache.has_past
        state, position_ids = self._initial_state(resid, attention_mask, position_ids, cache if past else None,
                                                  image, newline)
        state, new_kv, new_valid = self._run_blocks(state, start_layer, cache if past else None, plan, stop)
        if cache is not None:
            cache.kv, cache.valid = new_kv, new_valid
            # M-RoPE: the next token follows the largest position any of the three rows used.
            cache.next_pos = (position_ids[:, -1] if position_ids.dim() == 2 else position_ids.amax(dim=(0, 2))) + 1
        if stop_at_layer is not None:
            return state.resid
        resid = _to(state.resid, execution_device(self.ln_final)) if hasattr(self, "hf_device_map") else state.resid
        return self.unembed(self.ln_final(resid))

    def _initial_state(
        self,
        resid: Tensor,
        attention_mask: Tensor | None,
        position_ids: Tensor | None,
        past: KVCache | None,
        image: Tensor | None,
        newline: Tensor | None,
    ) -> tuple[SeqState, Tensor]:
        """The sequence entering the first block, and its rotary positions (continuing ``past``)."""
        b, p, _ = resid.shape
        device = resid.device
        if attention_mask is None:
            valid = torch.ones(b, p, dtype=torch.bool, device=device)
        else:
            valid = attention_mask.bool().to(device)
        if position_ids is None:
            offset = past.next_pos[:, None].to(device) if past is not None and past.next_pos is not None else 0
            position_ids = offset + positions_from_mask(valid)
        position_ids = position_ids.to(device)
        check_context(position_ids, self.cfg)
        image = torch.zeros_like(valid) if image is None else image.to(device)
        newline = torch.zeros_like(valid) if newline is None else newline.to(device)
        after_image = torch.cumsum(image.int().flip(-1), -1).flip(-1) == 0
        state = SeqState(resid, self.rotary(position_ids, resid.dtype), valid, valid,
                         torch.arange(p, device=resid.device).expand(b, p), image,
                         after_image & image.any(-1, keepdim=True) & valid, newline)
        return state, position_ids

    def _run_blocks(
        self, state: SeqState, start_layer: int, past: KVCache | None, plan: LayerPlan | None, stop: int | None = None
    ) -> tuple[SeqState, list, list]:
        """Blocks ``start_layer..stop-1`` on ``state``: the sequence leaving the last block (the
        plan may have reshaped it) and, per layer, the new keys/values and the validity of every key.

        Under a device map the sequence moves to each block's device before the block runs (after
        the plan, which works on the device of the pattern it observed).
        """
        new_kv: list = [None] * self.cfg.n_layers
        new_valid: list = [None] * self.cfg.n_layers
        mask: AttentionMask | None = None
        dispatched = hasattr(self, "hf_device_map")
        for layer in range(start_layer, self.cfg.n_layers if stop is None else stop):
            if plan is not None:
                state = plan.before_block(layer, state)
            device = execution_device(self.blocks[layer]) if dispatched else None
            if device is not None and device != state.resid.device:
                state, mask = state.to(device), None
            hide_self = bool(getattr(plan, "hide_self", False))
            new_valid[layer], mask = self._keys_and_mask(layer, state, past, new_valid[layer - 1], mask, hide_self)
            observe = plan is not None and plan.wants_pattern(layer)
            hooks = [(f"blocks.{layer}.attn.hook_pattern", _observer(plan, layer))] if observe else []
            past_kv = None if past is None else _to(past.kv[layer], state.resid.device)
            with self.hooks(fwd_hooks=hooks):
                state.resid, new_kv[layer] = self.blocks[layer](state.resid, mask, state.rotary, past_kv)
        return state, new_kv, new_valid

    def _keys_and_mask(
        self,
        layer: int,
        state: SeqState,
        past: KVCache | None,
        previous_valid: Tensor | None,
        previous_mask: AttentionMask | None,
        hide_self: bool = False,
    ) -> tuple[Tensor, AttentionMask]:
        """The keys block ``layer`` attends over (its cached ones, then the current positions):
        ``[batch, key_pos]`` validity and the attention mask built from it.

        Layers share one mask until pruning or the cache changes which keys are visible, so the
        previous layer's mask is reused when its key validity is equal in value. ``hide_self``
        (prefill only): positions hidden by pruning do not read their own key either.
        """
        key_valid = state.visible if past is None else torch.cat([past.valid[layer].to(state.visible.device),
                                                                  state.visible], dim=1)
        if previous_mask is not None and torch.equal(key_valid, previous_valid):
            return key_valid, previous_mask
        hidden = state.valid & ~state.visible if hide_self and past is None else None
        return key_valid, build_mask(key_valid, state.resid.shape[1], self.cfg.sliding_window, hidden)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Int[Tensor, "batch pos"] | None = None,
        cache: KVCache | None = None,
        *,
        stop_at_layer: int | None = None,
    ) -> Float[Tensor, "batch kept_pos d_out"]:
        """Logits of a text-only forward (the residual stream entering block ``stop_at_layer``
        when given, as TransformerLens).

        Raises:
            InvalidInputError: ``input_ids`` not a ``[batch, pos]`` integer tensor inside the vocabulary,
                or an ``attention_mask`` of another shape.
            ContextLengthError: positions past the decoder's context.
        """
        check_token_ids(input_ids, self.cfg.d_vocab)
        check_attention_mask(attention_mask, input_ids)
        with nullcontext() if cache is not None and cache.has_past else running_on(input_ids):
            resid = self.hook_embed(self.embed(input_ids))
            return self.decode_blocks(resid, attention_mask, position_ids, cache, stop_at_layer=stop_at_layer)
