"""Multimodal rotary positions (M-RoPE, Qwen2-VL): temporal, height and width rotations in one head.

Every token has three positions ``(t, h, w)``. Text tokens have three equal positions, so for
them M-RoPE is the ordinary 1-D rotary; an image token's are its place in the image-token grid,
offset to follow the text before it. The ``d_head / 2`` rotary frequencies are cut into three
sections (``mrope_section``, e.g. 16/24/24): the first rotates by ``t``, the second by ``h``, the
third by ``w``. Text after an image continues from the largest position the image used, plus one.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from mmlens.errors import ImageTokenMismatchError


class MRotary(nn.Module):
    """``cos``/``sin`` tables for ``[3, batch, pos]`` positions (``[batch, pos]``: the same on all three).

    The result has the shape of 1-D rotary's (``[batch, pos, d_head]``), so the attention and every
    consumer of the tables (pruning gathers them per position) work unchanged.
    """

    def __init__(self, inv_freq: Tensor, sections: tuple[int, ...], attention_scaling: float = 1.0):
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.sections = tuple(sections)
        self.attention_scaling = attention_scaling

    def forward(
        self, position_ids: Int[Tensor, "*three batch pos"], dtype: torch.dtype
    ) -> tuple[Float[Tensor, "batch pos d_head"], Float[Tensor, "batch pos d_head"]]:
        if position_ids.dim() == 2:
            position_ids = position_ids.expand(3, *position_ids.shape)
        # [3, batch, pos, d_head / 2]: every frequency at each of the three positions.
        freqs = position_ids[..., None].float() * self.inv_freq.to(position_ids.device)
        # Section i of the frequencies takes its angle from position row i (t, h, w).
        freqs = torch.cat([part[i % 3] for i, part in enumerate(freqs.split(self.sections, dim=-1))], dim=-1)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(dtype), (emb.sin() * self.attention_scaling).to(dtype)


def mrope_positions(
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None,
    image_grid_thw: Int[Tensor, "n_img 3"] | None,
    image_token_id: int,
    merge_size: int,
) -> Int[Tensor, "3 batch pos"]:
    """M-RoPE positions of prompts whose image placeholders are expanded (Hugging Face's ``get_rope_index``).

    Counting starts at each row's first real token (left padding gets 0). A run of image tokens
    takes the grid of its image (the next row of ``image_grid_thw``, in prompt order): token
    ``(t, i, j)`` of a ``T × H × W`` patch grid merged by ``merge_size`` gets ``(s + t, s + i,
    s + j)``, with ``s`` the position after the text before it; the text after it continues at
    ``s + max(H, W) / merge_size``.

    Raises:
        ImageTokenMismatchError: the image-token runs and ``image_grid_thw`` do not match (count
            or length).
    """
    b, p = input_ids.shape
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    grids = [] if image_grid_thw is None else [tuple(int(v) for v in g) for g in image_grid_thw.tolist()]
    out = torch.zeros(3, b, p, dtype=torch.long, device=input_ids.device)
    used = 0
    for r in range(b):
        ids = input_ids[r][valid[r]].tolist()
        rows: list[Tensor] = []
        start, i = 0, 0
        while i < len(ids):
            if ids[i] != image_token_id:
                rows.append(torch.full((3, 1), start, dtype=torch.long))
                start, i = start + 1, i + 1
                continue
            if used >= len(grids):
                raise ImageTokenMismatchError(
                    f"the prompt has more image-token runs than image_grid_thw has images ({len(grids)}): pass the "
                    "processor's image_grid_thw for every image (model.prepare does)."
                )
            t, h, w = grids[used]
            used += 1
            gh, gw = h // merge_size, w // merge_size
            tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(gh), torch.arange(gw), indexing="ij")
            grid = torch.stack([tt, hh, ww]).reshape(3, -1) + start
            run = ids[i : i + grid.shape[1]]
            if len(run) != grid.shape[1] or any(tok != image_token_id for tok in run):
                raise ImageTokenMismatchError(
                    f"image {used - 1} has a {t}x{h}x{w} patch grid, so {grid.shape[1]} image tokens, but the prompt "
                    "has another number there: build prompts with model.prepare() or the checkpoint's processor."
                )
            rows.append(grid)
            start, i = start + max(gh, gw), i + grid.shape[1]
        if rows:
            out[:, r, valid[r]] = torch.cat(rows, dim=1).to(out.device)
    if used != len(grids):
        raise ImageTokenMismatchError(
            f"image_grid_thw has {len(grids)} images but the prompts have {used} image-token runs: each image "
            "needs its run of image tokens (model.prepare builds both)."
        )
    return out
