"""Qwen2-VL inputs at the model: image-token counts of packed images and M-RoPE positions."""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

from mmlens.components.mrope import mrope_positions
from mmlens.config import VLMConfig
from mmlens.errors import MMLensError, UnsupportedArchitectureError


def image_token_counts(image_grid_thw: Int[Tensor, "n_img 3"] | None, merge_size: int) -> list[int]:
    """Image tokens of every packed image: its ``t · h · w`` patches over ``merge_size²``.

    Raises:
        MMLensError: no ``image_grid_thw``.
    """
    if image_grid_thw is None:
        raise MMLensError(
            "packed pixel_values (Qwen2-VL) need image_grid_thw, the patch grid of every image: pass the "
            "processor's image_grid_thw, or use model.prepare(images, text)."
        )
    return (torch.as_tensor(image_grid_thw).prod(-1) // merge_size**2).tolist()


def multimodal_positions(
    cfg: VLMConfig,
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Tensor | None,
    image_grid_thw: Int[Tensor, "n_img 3"] | None,
) -> Int[Tensor, "3 batch pos"] | None:
    """A prefill's M-RoPE positions ``[3, batch, pos]`` (Hugging Face's ``get_rope_index``), or None
    where the decoder's own rule applies: a 1-D rotary model, or a prompt without images (its
    three rows would be equal: 0 at each row's first real token)."""
    if cfg.decoder.mrope_section is None or image_grid_thw is None:
        return None
    return mrope_positions(input_ids, attention_mask, torch.as_tensor(image_grid_thw), cfg.image_token_index,
                           cfg.vision.merge_size)


def refuse_videos(pixel_values_videos: Tensor | None, video_grid_thw: Tensor | None) -> None:
    """Raise for Qwen2-VL's video inputs: mmlens implements images only.

    Raises:
        UnsupportedArchitectureError: either is given.
    """
    if pixel_values_videos is not None or video_grid_thw is not None:
        raise UnsupportedArchitectureError(
            "mmlens runs images only, not videos (pixel_values_videos / video_grid_thw): pass the frames as "
            "images, or use the Hugging Face model for videos."
        )
