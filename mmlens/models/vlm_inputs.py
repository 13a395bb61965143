"""HookedVLM's keyword plumbing: one set of tensors from MMInputs, a positional tensor or keywords."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mmlens.errors import InvalidInputError
from mmlens.inputs import MMInputs
from mmlens.models.checks import check_attention_mask, check_pixel_values


def unpack_inputs(
    inputs: Any,
    input_ids: Any,
    pixel_values: Any,
    attention_mask: Any,
    image_sizes: Tensor | None,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """``(input_ids, pixel_values, attention_mask, image_sizes)`` from :class:`MMInputs`, a
    positional ``input_ids`` tensor, or the keyword tensors.

    Raises:
        InvalidInputError: no ``input_ids`` in any form (also when ``pixel_values`` were given), or
            tensors of the wrong kind, rank or dtype.
    """
    if isinstance(inputs, MMInputs):
        return inputs.input_ids, inputs.pixel_values, inputs.attention_mask, inputs.image_sizes
    if inputs is not None and input_ids is not None:
        raise InvalidInputError("input_ids given twice (positionally and as input_ids=): pass it once.")
    if inputs is not None:
        input_ids = inputs
    if input_ids is None and pixel_values is not None:
        raise InvalidInputError(
            "no input_ids: pixel_values were given without input_ids, but the model also needs the prompt's token ids, with "
            "one image token per image feature; model.prepare(images, text) makes both."
        )
    if input_ids is None:
        raise InvalidInputError(
            "no input_ids: call model(inputs) with MMInputs from model.prepare(images, text), or "
            "model(input_ids=..., pixel_values=..., attention_mask=...)."
        )
    if not isinstance(input_ids, Tensor):
        raise InvalidInputError(
            f"the model takes MMInputs or a tensor of token ids, not a {type(input_ids).__name__}: build "
            "inputs with model.prepare(images, text) and call model(inputs)."
        )
    check_pixel_values(pixel_values)
    check_attention_mask(attention_mask, input_ids)
    return input_ids, pixel_values, attention_mask, image_sizes


def extra_image_inputs(
    inputs: MMInputs | Tensor | None, ids: Tensor | None, mask: Tensor | None, grid_thw: Tensor | None
) -> dict[str, Tensor | None]:
    """The image inputs beyond ``pixel_values`` from :class:`MMInputs` or the keyword tensors: the
    Q-Former's instruction (InstructBLIP) and the patch grid of every image (Qwen2-VL)."""
    if isinstance(inputs, MMInputs):
        ids, mask, grid_thw = inputs.qformer_input_ids, inputs.qformer_attention_mask, inputs.image_grid_thw
    return {"qformer_input_ids": ids, "qformer_attention_mask": mask, "image_grid_thw": grid_thw}
