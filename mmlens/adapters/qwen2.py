"""Qwen2 decoders: biased q/k/v projections, optional sliding window on every layer."""

from __future__ import annotations

from typing import Any

from mmlens.adapters.decoder_common import decoder_config, decoder_weights
from mmlens.adapters.registry import DECODER_ADAPTERS, StateDict, register
from mmlens.config import DecoderConfig
from mmlens.errors import UnsupportedArchitectureError


@register(DECODER_ADAPTERS, "qwen2")
class Qwen2Adapter:
    def config(self, hf_config: Any, **_: Any) -> DecoderConfig:
        layer_types = set(getattr(hf_config, "layer_types", None) or ["full_attention"])
        if layer_types == {"full_attention"}:
            window = None
        elif layer_types == {"sliding_attention"}:
            window = hf_config.sliding_window
        else:
            raise UnsupportedArchitectureError(
                "qwen2: checkpoints mixing sliding and full attention layers are not supported yet."
            )
        # use_sliding_window and max_window_layers only serve to fill layer_types.
        fields = frozenset({"layer_types", "sliding_window", "use_sliding_window", "max_window_layers"})
        return decoder_config(hf_config, "qwen2", qkv_bias=True, o_bias=False, sliding_window=window, fields=fields)

    def weights(self, hf_state: StateDict, cfg: DecoderConfig) -> StateDict:
        return decoder_weights(hf_state, cfg)
