"""Packed variable-size images (Qwen2-VL's tower): 2-D rotary positions, per-image and per-window attention.

The processor cuts every image into its own ``T × H × W`` grid of patches (``image_grid_thw``)
and lays the patches of all images one after another, each ``m × m`` block of neighbouring
patches (``m = merge_size``) contiguous, blocks row-major, so the merger can concatenate every
``m²`` consecutive patches into one image token. The tower runs on that one packed sequence;
attention stays inside an image (Qwen2.5-VL: inside a window of image tokens on most layers).
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from mmlens.components.attention import AttentionMask


def patch_coordinates(grid_thw: Int[Tensor, "n_img 3"], merge_size: int) -> Int[Tensor, "v_pos 4"]:
    """``(image, t, row, col)`` of every packed patch, in the processor's order.

    Within an image: frames in order; within a frame, ``m × m`` blocks row-major and the patches of a
    block row-major (Hugging Face's ``get_vision_position_ids``).
    """
    rows = []
    for n, (t, h, w) in enumerate(grid_thw.tolist()):
        tt, bi, bj, a, c = torch.meshgrid(
            torch.arange(t), torch.arange(h // merge_size), torch.arange(w // merge_size),
            torch.arange(merge_size), torch.arange(merge_size), indexing="ij",
        )
        row, col = bi * merge_size + a, bj * merge_size + c
        rows.append(torch.stack([torch.full_like(tt, n), tt, row, col], dim=-1).reshape(-1, 4))
    return torch.cat(rows).to(grid_thw.device)


def window_ids(
    coords: Int[Tensor, "v_pos 4"], grid_thw: Int[Tensor, "n_img 3"], merge_size: int, window: int
) -> Int[Tensor, " v_pos"]:
    """Qwen2.5-VL's attention window of every patch: squares of ``window × window`` image tokens
    (``window · merge_size`` patches a side), one set per frame, cut from the top-left corner.
    """
    side = window * merge_size
    n_cols = (grid_thw[:, 2] + side - 1) // side  # windows per row, per image
    n_rows = (grid_thw[:, 1] + side - 1) // side
    per_frame = n_rows * n_cols
    first = torch.cumsum(per_frame * grid_thw[:, 0], 0) - per_frame * grid_thw[:, 0]
    img, t, row, col = coords.unbind(-1)
    return first[img] + t * per_frame[img] + (row // side) * n_cols[img] + col // side


def same_group_mask(groups: Int[Tensor, " v_pos"]) -> AttentionMask:
    """Bidirectional attention among positions with the same group id (``[1, 1, v_pos, v_pos]``)."""
    allowed: Bool[Tensor, "1 1 v_pos v_pos"] = (groups[:, None] == groups[None, :])[None, None]
    return AttentionMask(allowed=allowed)


class VisionRotary2D(nn.Module):
    """2-D rotary of a vision head: the first quarter of the frequencies' angles (and of their
    copies) come from the patch's row, the second from its column (Qwen2-VL's vision rotary)."""

    def __init__(self, d_head: int, theta: float):
        super().__init__()
        # Frequencies are made at each call (no buffer): models are built on the meta device.
        self.d_head, self.theta = d_head, theta

    def forward(
        self, row: Int[Tensor, " v_pos"], col: Int[Tensor, " v_pos"], dtype: torch.dtype
    ) -> tuple[Float[Tensor, "1 v_pos d_head"], Float[Tensor, "1 v_pos d_head"]]:
        half = self.d_head // 2
        inv = 1.0 / (self.theta ** (torch.arange(0, half, 2, dtype=torch.float, device=row.device) / half))
        angles = torch.cat([row[:, None].float() * inv, col[:, None].float() * inv], dim=-1)
        emb = torch.cat([angles, angles], dim=-1)[None]
        return emb.cos().to(dtype), emb.sin().to(dtype)
