"""Llama / Vicuna decoders (LLaVA-1.5, Llama-3-LLaVA-NeXT)."""

from __future__ import annotations

from typing import Any

from mmlens.adapters.decoder_common import decoder_config, decoder_weights
from mmlens.adapters.registry import DECODER_ADAPTERS, StateDict, register
from mmlens.config import DecoderConfig


@register(DECODER_ADAPTERS, "llama")
class LlamaAdapter:
    def config(self, hf_config: Any, **_: Any) -> DecoderConfig:
        bias = bool(getattr(hf_config, "attention_bias", False))
        return decoder_config(hf_config, "llama", qkv_bias=bias, o_bias=bias, sliding_window=None,
                              fields=frozenset({"attention_bias"}))

    def weights(self, hf_state: StateDict, cfg: DecoderConfig) -> StateDict:
        return decoder_weights(hf_state, cfg)
