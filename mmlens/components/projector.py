"""The LLaVA multimodal projector: vision features → decoder embeddings (two-layer MLP or one linear)."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor, nn

from mmlens.components.activations import get_activation
from mmlens.config import ProjectorConfig
from mmlens.errors import UnsupportedArchitectureError
from mmlens.hooks import HookPoint


class Projector(nn.Module):
    """``linear_2(act(linear_1(features)))``; hooks ``hook_pre`` / ``hook_post`` around the activation.

    A ``kind="linear"`` projector (LLaVA-v0, Shikra) is ``linear_1`` alone and has no hooks of
    its own: its input is ``vision_encoder.hook_features`` and its output ``hook_image_embed``.
    """

    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        if cfg.kind not in ("mlp", "linear"):
            raise UnsupportedArchitectureError(
                f"projector kind {cfg.kind!r} is not implemented; supported: 'mlp' (linear, activation, "
                "linear) and 'linear'."
            )
        self.linear_1 = nn.Linear(cfg.d_in, cfg.d_out, bias=cfg.bias)
        if cfg.kind == "mlp":
            self.linear_2 = nn.Linear(cfg.d_out, cfg.d_out, bias=cfg.bias)
            self.act = get_activation(cfg.act_fn)
            self.hook_pre = HookPoint()  # [n_img, n_patch, d_model]
            self.hook_post = HookPoint()  # [n_img, n_patch, d_model]

    def forward(self, features: Float[Tensor, "n_img n_patch d_vision"]) -> Float[Tensor, "n_img n_patch d_model"]:
        x = self.linear_1(features)
        if not hasattr(self, "linear_2"):
            return x
        return self.linear_2(self.hook_post(self.act(self.hook_pre(x))))
