"""The LLaVA multimodal projector: a two-layer MLP from vision features to decoder embeddings."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor, nn

from mmlens.components.activations import get_activation
from mmlens.config import ProjectorConfig
from mmlens.hooks import HookPoint


class Projector(nn.Module):
    """``linear_2(act(linear_1(features)))``; hooks ``hook_pre`` / ``hook_post`` around the activation."""

    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.linear_1 = nn.Linear(cfg.d_in, cfg.d_out, bias=cfg.bias)
        self.linear_2 = nn.Linear(cfg.d_out, cfg.d_out, bias=cfg.bias)
        self.act = get_activation(cfg.act_fn)
        self.hook_pre = HookPoint()  # [n_img, n_patch, d_model]
        self.hook_post = HookPoint()  # [n_img, n_patch, d_model]

    def forward(self, features: Float[Tensor, "n_img n_patch d_vision"]) -> Float[Tensor, "n_img n_patch d_model"]:
        return self.linear_2(self.hook_post(self.act(self.hook_pre(self.linear_1(features)))))
