"""Mistral decoders: Llama layout plus an optional sliding attention window."""

from __future__ import annotations

from typing import Any

from mmlens.adapters.decoder_common import decoder_config, decoder_weights
from mmlens.adapters.registry import DECODER_ADAPTERS, StateDict, register
from mmlens.config import DecoderConfig


@register(DECODER_ADAPTERS, "mistral")
class MistralAdapter:
    def config(self, hf_config: Any, **_: Any) -> DecoderConfig:
        return decoder_config(
            hf_config, "mistral", qkv_bias=False, o_bias=False, sliding_window=getattr(hf_config, "sliding_window", None),
            fields=frozenset({"sliding_window"}),
        )

    def weights(self, hf_state: StateDict, cfg: DecoderConfig) -> StateDict:
        return decoder_weights(hf_state, cfg)
