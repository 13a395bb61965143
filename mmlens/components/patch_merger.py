"""Qwen2-VL's patch merger: norm every patch, concatenate each ``m × m`` block, two-layer MLP.

The packed tower output keeps each ``m × m`` block of neighbouring patches contiguous
(:mod:`mmlens.components.packed_vision`), so merging is a reshape: ``m²`` consecutive patches
become one image token of ``m² · d_vision`` channels. Unlike InternVL's pixel shuffle the norm
acts on each patch before the concatenation, and the first linear keeps the merged width.
"""

from __future__ import annotations

import einops
from jaxtyping import Float
from torch import Tensor, nn

from mmlens.components.activations import get_activation
from mmlens.components.norms import NORMS
from mmlens.config import ProjectorConfig
from mmlens.errors import MMLensError
from mmlens.hooks import HookPoint


class PatchMerger(nn.Module):
    """``linear_2(act(linear_1(concat_m²(ln(features)))))`` (Qwen2-VL / Qwen2.5-VL ``visual.merger``).

    Hooks: ``ln.hook_scale|normalized`` (per patch), ``hook_merged`` (``[1, n_tokens, m²·d_vision]``,
    the concatenated blocks), ``hook_pre`` / ``hook_post`` around the activation. Its input,
    ``vision_encoder.hook_features``, keeps one row per patch; its output is ``hook_image_embed``.
    """

    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.group = cfg.pixel_shuffle**2
        d_merged = cfg.d_in * self.group
        self.ln = NORMS[cfg.ln_type](cfg.d_in, cfg.ln_eps)
        self.hook_merged = HookPoint()  # [1, n_tokens, d_merged]
        self.linear_1 = nn.Linear(d_merged, d_merged, bias=cfg.bias)
        self.act = get_activation(cfg.act_fn)
        self.linear_2 = nn.Linear(d_merged, cfg.d_out, bias=cfg.bias)
        self.hook_pre = HookPoint()  # [1, n_tokens, d_merged]
        self.hook_post = HookPoint()  # [1, n_tokens, d_merged]

    def forward(self, features: Float[Tensor, "1 v_pos d_vision"]) -> Float[Tensor, "1 n_tokens d_model"]:
        """Merge every ``m²`` consecutive packed patches into one image token.

        Raises:
            MMLensError: the patch count is not a multiple of ``m²``.
        """
        if features.shape[1] % self.group:
            raise MMLensError(
                f"the patch merger joins {self.group} patches per image token but got {features.shape[1]} patches: "
                "each image's patch grid must be a multiple of spatial_merge_size on each side (use the processor)."
            )
        x = einops.rearrange(self.ln(features), "n (t g) d -> n t (g d)", g=self.group)
        x = self.hook_merged(x)
        return self.linear_2(self.hook_post(self.act(self.hook_pre(self.linear_1(x)))))
