"""Checks at the models' public entry points: input tensors, hook return values, cache keys.

Without them a bad input surfaces as a raw torch error deep in the forward (an index error in the
embedding, a shape error in a matmul), or not at all: a hook returning the wrong shape breaks a
later layer with no mention of the hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mmlens.errors import ContextLengthError, HookReturnError, InvalidInputError, UnknownCacheKeyError, closest
from mmlens.hooks import ActivationCache


def check_token_ids(input_ids: Any, d_vocab: int) -> Tensor:
    """``input_ids`` as given, after checking it is a ``[batch, pos]`` integer tensor inside the vocabulary.

    Raises:
        InvalidInputError: not a tensor, wrong rank or dtype, empty, or an id outside ``[0, d_vocab)``.
    """
    if not isinstance(input_ids, Tensor):
        raise InvalidInputError(
            f"input_ids must be a torch tensor [batch, pos] of token ids, not a {type(input_ids).__name__}: "
            "use model.prepare(images, text), or torch.tensor([ids])."
        )
    if input_ids.dim() != 2:
        raise InvalidInputError(
            f"input_ids must have rank 2 [batch, pos], got shape {tuple(input_ids.shape)}"
            + (": add the batch dimension with input_ids[None]." if input_ids.dim() == 1 else ".")
        )
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.dtype.is_complex:
        raise InvalidInputError(f"input_ids must hold integer token ids (torch.long), not {input_ids.dtype}.")
    if input_ids.numel() == 0:
        raise InvalidInputError(f"input_ids is empty (shape {tuple(input_ids.shape)}): give at least one token.")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= d_vocab:
        bad = low if low < 0 else high
        raise InvalidInputError(
            f"input_ids holds token id {bad}, outside the vocabulary of {d_vocab} tokens (0..{d_vocab - 1}): "
            "tokenize with this checkpoint's tokenizer."
        )
    return input_ids


def check_attention_mask(attention_mask: Any, input_ids: Tensor) -> None:
    """Raise :class:`InvalidInputError` unless ``attention_mask`` is None or a tensor shaped like ``input_ids``."""
    if attention_mask is None:
        return
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
        raise InvalidInputError(
            f"attention_mask must be a tensor of the shape of input_ids {tuple(input_ids.shape)}, got {shape}."
        )


def check_pixel_values(pixel_values: Any) -> None:
    """Raise :class:`InvalidInputError` unless ``pixel_values`` is None or a float ``[.., 3, H, W]`` tensor."""
    if pixel_values is None:
        return
    if not isinstance(pixel_values, Tensor):
        raise InvalidInputError(
            f"pixel_values must be a tensor from the image processor, not a {type(pixel_values).__name__}: "
            "pass images to model.prepare(images, text) instead."
        )
    # Qwen2-VL's processor packs every image's patches as rows: [n_patches, 3 * temporal * patch²].
    packed = pixel_values.dim() == 2 and pixel_values.shape[-1] % 3 == 0
    if not packed and (pixel_values.dim() not in (4, 5) or pixel_values.shape[-3] != 3):
        raise InvalidInputError(
            f"pixel_values must be [n_img, 3, H, W] (anyres: [n_img, views, 3, H, W]; Qwen2-VL: packed patches "
            f"[n_patches, d_patch]), got shape "
            f"{tuple(pixel_values.shape)}: use model.prepare(images, text)."
        )
    if not pixel_values.dtype.is_floating_point:
        raise InvalidInputError(
            f"pixel_values must be normalised floats, not {pixel_values.dtype} (raw 0..255 pixels?): "
            "pass images to model.prepare(images, text), which runs the image processor."
        )


def check_context(position_ids: Tensor, cfg: Any) -> None:
    """Raise :class:`ContextLengthError` if a rotary position reaches the decoder's context ``cfg.n_ctx``.

    mmlens computes rotary embeddings for any position, but the checkpoint never saw positions
    past ``max_position_embeddings`` (its rope type, scaled or not, is already folded into that
    number), so outputs there are not the model's.
    """
    if position_ids.numel() == 0:
        return
    last = int(position_ids.max())
    if last >= cfg.n_ctx:
        kind = "rotary position embeddings" if cfg.positional_embedding_type == "rotary" else "position embeddings"
        raise ContextLengthError(
            f"the sequence reaches position {last + 1} but the decoder's context is n_ctx={cfg.n_ctx} positions "
            f"(max_position_embeddings; its {kind} were trained only that far): shorten the prompt, use fewer "
            "image tokens, or generate fewer tokens."
        )


def checked_hook(fn: Callable) -> Callable:
    """``fn`` wrapped so that returning anything but None or a tensor of the activation's shape raises.

    Raises (when the hook runs):
        HookReturnError: naming the hook point and what the function returned.
    """

    def run(x: Any, hook: Any = None) -> Any:
        out = fn(x, hook=hook)
        if out is None or out is x or not isinstance(x, Tensor):
            return out
        name = getattr(hook, "name", "?")
        label = getattr(fn, "__qualname__", type(fn).__name__)
        if not isinstance(out, Tensor):
            raise HookReturnError(
                f"hook {label} at {name!r} returned a {type(out).__name__}; a hook returns None (read only) or "
                f"a tensor of the activation's shape {tuple(x.shape)}."
            )
        if out.shape != x.shape:
            raise HookReturnError(
                f"hook {label} at {name!r} returned shape {tuple(out.shape)} but the activation is "
                f"{tuple(x.shape)}: return a tensor of the same shape (edit in place or with masked_fill)."
            )
        return out

    run.__wrapped__ = fn  # type: ignore[attr-defined]
    return run


class Cache(ActivationCache):
    """TransformerLens' ``ActivationCache`` whose unknown keys name the closest cached ones."""

    def __getitem__(self, key: Any) -> Tensor:
        try:
            return super().__getitem__(key)
        except KeyError:
            name = key if isinstance(key, str) else _act_name(key)
            raise UnknownCacheKeyError(
                f"{key!r} is not in this cache{'' if name == key else f' (looked up as {name!r})'}. Closest "
                f"cached names: {', '.join(closest(str(name), self.cache_dict, 5))}. A hook is cached only "
                "when names_filter selects it."
            ) from None


def _act_name(key: Any) -> str:
    try:  # transformer_lens >= 4 moved its utilities
        from transformer_lens.utilities.components_utils import get_act_name
    except ImportError:  # pragma: no cover - older transformer_lens
        from transformer_lens.utils import get_act_name  # type: ignore[no-redef]

    try:
        return get_act_name(*key) if isinstance(key, tuple) else str(key)
    except Exception:  # a malformed tuple: report it as given
        return str(key)
