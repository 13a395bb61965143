"""The hooked Qwen2-VL / Qwen2.5-VL vision tower: images of any size packed into one sequence."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from mmlens.components.block import Block
from mmlens.components.packed_vision import VisionRotary2D, patch_coordinates, same_group_mask, window_ids
from mmlens.config import VisionConfig
from mmlens.errors import MMLensError
from mmlens.hooks import HookPoint


class HookedPackedVisionEncoder(nn.Module):
    """Patch embedding → blocks with 2-D rotary → ``hook_features`` (the last block's output).

    Every image's patches run in one sequence ``[1, v_pos, d_model]`` (``v_pos`` = all patches
    of all images, in the processor's order); a block-diagonal mask keeps attention inside each
    image (and each frame), and on Qwen2.5-VL's window layers inside each window. Hugging Face
    reorders the patches window by window for its kernels and back after the merger; attention
    inside a window does not depend on the order, so here they keep the processor's order at every
    layer and the masks do the windowing.

    Hooks: ``hook_embed`` (patch embeddings), ``blocks.{l}.*`` (the decoder's grammar, with
    ``attn.hook_rot_q|rot_k`` for the 2-D rotary), ``hook_features``.
    """

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        d_patch = 3 * cfg.temporal_patch_size * cfg.patch_size**2
        # Hugging Face's Conv3d with stride = kernel over one flattened patch is this linear map.
        self.patch_embed = nn.Linear(d_patch, cfg.d_model, bias=cfg.patch_bias)
        self.rotary = VisionRotary2D(cfg.d_head, cfg.rotary_theta)
        self.hook_embed = HookPoint()  # [1, v_pos, d_model]
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.hook_features = HookPoint()  # [1, v_pos, d_model]

    def forward(
        self, pixel_values: Float[Tensor, "v_pos d_patch"], image_grid_thw: Int[Tensor, "n_img 3"] | None = None
    ) -> Float[Tensor, "1 v_pos d_model"]:
        """Run the packed patches of every image.

        Raises:
            MMLensError: no ``image_grid_thw``, or ``pixel_values`` that do not match it.
        """
        cfg = self.cfg
        if image_grid_thw is None:
            raise MMLensError(
                "Qwen2-VL's vision tower needs image_grid_thw (the patch grid of every image) with its packed "
                "pixel_values: pass the processor's image_grid_thw, or use model.prepare(images, text)."
            )
        grid = torch.as_tensor(image_grid_thw).long()
        n_patches = int(grid.prod(-1).sum())
        if pixel_values.dim() != 2 or pixel_values.shape != (n_patches, self.patch_embed.in_features):
            raise MMLensError(
                f"pixel_values {tuple(pixel_values.shape)} do not match image_grid_thw {grid.tolist()}: the "
                f"processor's packed patches are [{n_patches}, {self.patch_embed.in_features}] here "
                "(3 x temporal_patch_size x patch_size² values per patch)."
            )
        coords = patch_coordinates(grid.cpu(), cfg.merge_size).to(pixel_values.device)
        frame = coords[:, 0] * (int(grid[:, 0].max()) + 1) + coords[:, 1]
        full = same_group_mask(frame)
        window = full if cfg.window is None else same_group_mask(window_ids(coords, grid.to(coords.device), cfg.merge_size, cfg.window))
        x = self.hook_embed(self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))[None])
        rotary = self.rotary(coords[:, 2], coords[:, 3], x.dtype)
        for layer, block in enumerate(self.blocks):
            mask = full if cfg.window is None or layer in cfg.full_attention_layers else window
            x, _ = block(x, mask, rotary)
        return self.hook_features(x)
