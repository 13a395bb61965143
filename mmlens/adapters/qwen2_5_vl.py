"""Qwen2.5-VL checkpoints: ``Qwen2_5_VLForConditionalGeneration``.

Qwen2-VL's design (:mod:`mmlens.adapters.qwen2_vl`) with another vision tower: RMSNorm and SwiGLU
blocks, window attention (windows of ``window_size`` pixels, i.e. ``window_size / (patch_size ·
spatial_merge_size)`` image tokens a side) except on the ``fullatt_block_indexes`` layers, and an
RMSNorm in the merger. The decoder (Qwen2 with M-RoPE) and the prompt layout are Qwen2-VL's.
"""

from __future__ import annotations

from typing import Any

from mmlens.adapters.qwen2_vl import Qwen2VLAdapter, packed_vision_config, packed_vision_weights
from mmlens.adapters.registry import VISION_ADAPTERS, VLM_ADAPTERS, StateDict, register
from mmlens.config import VisionConfig
from mmlens.errors import UnsupportedArchitectureError


@register(VISION_ADAPTERS, "qwen2_5_vl")
class Qwen25VisionAdapter:
    """Qwen2.5-VL's tower: RMSNorm blocks with a biased SwiGLU MLP, windowed attention."""

    # tokens_per_second only spaces the temporal positions of videos (refused).
    fields = frozenset({
        "depth", "hidden_size", "hidden_act", "intermediate_size", "num_heads", "in_channels", "patch_size",
        "spatial_merge_size", "temporal_patch_size", "tokens_per_second", "window_size", "out_hidden_size",
        "fullatt_block_indexes", "rope_parameters",
    })

    def config(self, hf_config: Any, **_: Any) -> VisionConfig:
        """Raises:
        UnsupportedArchitectureError: as Qwen2-VL's tower, or a ``window_size`` that is not a whole
            number of image tokens.
        """
        d = hf_config.hidden_size
        unit = hf_config.spatial_merge_size * (hf_config.patch_size if isinstance(hf_config.patch_size, int)
                                               else hf_config.patch_size[0])
        window = hf_config.window_size // unit
        if window < 1:
            raise UnsupportedArchitectureError(
                f"qwen2.5-vl vision tower: window_size={hf_config.window_size} px is less than one image token "
                f"({unit} px): windows would be empty."
            )
        return packed_vision_config(
            hf_config, self.fields, "qwen2.5-vl vision tower",
            d_model=d, d_head=d // hf_config.num_heads, d_mlp=hf_config.intermediate_size,
            act_fn=hf_config.hidden_act, normalization_type="RMS", gated_mlp=True, family="qwen2_5_vl",
            window=window, full_attention_layers=tuple(hf_config.fullatt_block_indexes),
        )

    def weights(self, hf_state: StateDict, cfg: VisionConfig) -> StateDict:
        return packed_vision_weights(hf_state, cfg)


@register(VLM_ADAPTERS, "Qwen2_5_VLForConditionalGeneration")
class Qwen25VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: Qwen2-VL's model adapter with the windowed tower and an RMSNorm merger."""

    vision_adapter = "qwen2_5_vl"
    merger_norm = "RMS"
    architecture = "Qwen2_5_VLForConditionalGeneration"
