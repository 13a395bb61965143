"""``load_checkpoint``: a registered name, a directory or a loaded model → mmlens config and weights.

Registered names resolve through :mod:`mmlens.zoo.registry`; the architecture picks the adapter
registered for it in :mod:`mmlens.adapters.registry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from mmlens.adapters.checks import check_files, check_loading_info
from mmlens.adapters.llava_original import load_original, original_architecture
from mmlens.adapters.processors import load_processor
from mmlens.adapters.registry import DECODER_ADAPTERS, VLM_ADAPTERS, language_model_state, lookup
from mmlens.config import DecoderConfig, VLMConfig
from mmlens.errors import CorruptFileError, InvalidInputError, MMLensError, UnknownNameError, UnsupportedArchitectureError
from mmlens.zoo.registry import resolve_model_name


DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A parameter dtype from a ``torch.dtype`` or its name (``"float16"``, ``"bf16"``, ``"torch.float32"``).

    Raises:
        InvalidInputError: a name that is not a floating dtype mmlens runs in.
    """
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise InvalidInputError(
            f"dtype {dtype!r} is not supported: use torch.float32, torch.float16 or torch.bfloat16 "
            f"(or one of the names {sorted(DTYPES)})."
        )
    return DTYPES[name]


def load_checkpoint(
    path_or_model: Any,
    *,
    dtype: torch.dtype | str = torch.float32,
    with_processor: bool = True,
    vision_tower: str | Path | None = None,
) -> tuple[VLMConfig, dict, Any]:
    """Return ``(config, state_dict, processor_or_None)`` for a checkpoint.

    Args:
        path_or_model: A registered model name, a local Hugging Face directory, or a loaded
            ``transformers`` model (its tensors are shared, not copied, when the dtype matches).
        dtype: Parameter dtype of the result, or its name (``"float16"``).
        with_processor: Load the directory's processor too (None is returned in its place when
            False, or when a loaded model is given).
        vision_tower: For a checkpoint in the original LLaVA repository layout
            (:mod:`~mmlens.adapters.llava_original`), the local CLIP directory its
            ``mm_vision_tower`` names; found on disk when omitted.

    Raises:
        UnknownNameError: neither a registered name nor a local directory.
        MMLensError: ``vision_tower`` given for a Hugging Face checkpoint (which holds its tower).
        ProcessorUnavailableError: the directory's processor cannot be built here (see
            :func:`~mmlens.adapters.processors.load_processor`).
        CorruptFileError: a file of the directory (weights, config.json, tokenizer) cannot be read.
        CheckpointMismatchError: tensors missing from the weights, unexpected, or mis-shaped.
    """
    dtype = as_dtype(dtype)
    if isinstance(path_or_model, (str, Path)) and Path(resolve_model_name(path_or_model)).is_dir():
        check_files(resolve_model_name(path_or_model))
    if isinstance(path_or_model, (str, Path)) and original_architecture(resolve_model_name(path_or_model)):
        return load_original(resolve_model_name(path_or_model), vision_tower=vision_tower, dtype=dtype,
                             with_processor=with_processor)
    if vision_tower is not None:
        raise MMLensError(
            "vision_tower= is only for checkpoints in the original LLaVA repository layout "
            "(LlavaLlamaForCausalLM, ShikraLlamaForCausalLM); a Hugging Face checkpoint holds its own tower."
        )
    hf_model, path = _open(path_or_model, dtype, VLM_ADAPTERS)
    processor = load_processor(path) if with_processor and path is not None else None
    adapter = lookup(VLM_ADAPTERS, type(hf_model).__name__, "architecture")
    cfg = adapter.config(hf_model.config)
    state = {k: v.detach().to(dtype) for k, v in adapter.weights(hf_model.state_dict(), cfg).items()}
    return cfg, state, processor


def load_decoder_checkpoint(path_or_model: Any, *, dtype: torch.dtype | str = torch.float32) -> tuple[DecoderConfig, dict]:
    """Return ``(config, state_dict)`` for a text-only decoder checkpoint.

    Args:
        path_or_model: A local Hugging Face directory or a loaded ``LlamaForCausalLM``,
            ``MistralForCausalLM`` or ``Qwen2ForCausalLM`` (any ``*ForCausalLM`` whose
            ``model_type`` has a decoder adapter).
        dtype: Parameter dtype of the result.

    Raises:
        UnknownNameError: not a local directory.
        UnsupportedArchitectureError: no decoder adapter for the checkpoint's ``model_type``, or
            a config option mmlens does not implement.
    """
    hf_model, _ = _open(path_or_model, as_dtype(dtype), None)
    model_type = getattr(hf_model.config, "model_type", "?")
    adapter = lookup(DECODER_ADAPTERS, model_type, "decoder model_type")
    if not type(hf_model).__name__.endswith("ForCausalLM"):
        raise UnsupportedArchitectureError(
            f"{type(hf_model).__name__} is not a causal language model: pass a *ForCausalLM checkpoint "
            "(e.g. LlamaForCausalLM); vision-language checkpoints load with HookedVLM.from_pretrained."
        )
    cfg = adapter.config(hf_model.config)
    hf_state = hf_model.state_dict()
    text = language_model_state(hf_state, "model.")
    state = {k: v.detach().to(dtype) for k, v in adapter.weights(text, cfg).items()}
    return cfg, state


def _open(path_or_model: Any, dtype: torch.dtype, table: dict | None) -> tuple[nn.Module, str | None]:
    """The ``transformers`` model (and its directory, None when a model was given).

    ``table`` (when given) is checked for the directory's architecture before any weight loads.
    """
    if isinstance(path_or_model, nn.Module):
        return path_or_model, None
    path = resolve_model_name(path_or_model)
    if not Path(path).is_dir():
        raise UnknownNameError(
            f"{path_or_model!r} is neither a registered model name nor a local directory. "
            "Pass a directory holding a Hugging Face checkpoint (config.json + weights), "
            "or a name from mmlens.zoo.MODELS."
        )
    if table is None:  # load_checkpoint checked the files already
        check_files(path)
    try:
        hf_config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise CorruptFileError(
            f"cannot read {Path(path) / 'config.json'} ({type(err).__name__}: {str(err)[:200]}); "
            "check its model_type and fields."
        ) from err
    arch = (hf_config.architectures or ["?"])[0]
    if table is not None:
        lookup(table, arch, "architecture")
    elif not hasattr(transformers, arch):
        raise UnsupportedArchitectureError(f"architecture {arch!r} of {path} is not a transformers class.")
    # Missing or mis-shaped tensors are reported (not randomly initialised) and then refused.
    model, info = getattr(transformers, arch).from_pretrained(
        path, dtype=dtype, local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True
    )
    check_loading_info(info, path)
    return model, path
