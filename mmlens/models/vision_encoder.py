"""The hooked vision tower (CLIP / SigLIP ViT) up to the layer LLaVA reads its features from."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from mmlens.components.attention import AttentionMask
from mmlens.components.block import Block
from mmlens.components.norms import LayerNorm
from mmlens.config import VisionConfig, feature_indices
from mmlens.errors import MMLensError
from mmlens.hooks import HookPoint


class HookedVisionEncoder(nn.Module):
    """Patch embedding → (CLIP: ``ln_pre``) → blocks → selected hidden states.

    Only the blocks up to the deepest selected feature layer are built and run: with LLaVA's
    default ``vision_feature_layer=-2`` the tower's last block (and its post-layernorm) never
    influence the model, so they are not part of the hooked model.
    """

    def __init__(self, cfg: VisionConfig, feature_layers: tuple[int, ...], select_strategy: str):
        super().__init__()
        self.cfg = cfg
        self.feature_layers = feature_indices(feature_layers, cfg.n_layers_total or cfg.n_layers)
        self.select_strategy = select_strategy
        self.patch_embed = nn.Conv2d(3, cfg.d_model, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)
        self.class_embedding = nn.Parameter(torch.zeros(cfg.d_model)) if cfg.has_cls else None
        self.W_pos = nn.Parameter(torch.zeros(cfg.n_patches + int(cfg.has_cls), cfg.d_model))
        self.hook_embed = HookPoint()  # [n_img, v_pos, d_model] patch (+CLS) embeddings
        self.hook_pos_embed = HookPoint()  # [1, v_pos, d_model]
        self.ln_pre = LayerNorm(cfg.d_model, cfg.eps) if cfg.ln_pre else None
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_post = LayerNorm(cfg.d_model, cfg.eps) if cfg.ln_post else None
        self.hook_features = HookPoint()  # [n_img, n_patch, d_vision * n_feature_layers]

    def forward(self, pixel_values: Float[Tensor, "n_views 3 height width"]) -> Float[Tensor, "n_img n_patch d_feat"]:
        """Return exactly what the projector consumes: selected layer(s), CLS dropped if asked."""
        cfg = self.cfg
        if pixel_values.shape[-2:] != (cfg.image_size, cfg.image_size):
            raise MMLensError(
                f"pixel_values are {tuple(pixel_values.shape[-2:])} but the vision tower takes "
                f"{cfg.image_size}x{cfg.image_size}: preprocess images with the model's processor "
                "(model.prepare) or resize them."
            )
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)
        if self.class_embedding is not None:
            x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        x = self.hook_embed(x) + self.hook_pos_embed(self.W_pos[None])
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        hidden = [x]
        mask = AttentionMask()
        for block in self.blocks:
            x, _ = block(x, mask)
            hidden.append(x)
        if self.ln_post is not None:
            # BLIP's post-layernorm: part of the last hidden state InstructBLIP's Q-Former reads.
            hidden[-1] = self.ln_post(x)
        selected = [hidden[i] for i in self.feature_layers]
        if self.select_strategy == "default":
            selected = [h[:, 1:] for h in selected]
        return self.hook_features(torch.cat(selected, dim=-1))
