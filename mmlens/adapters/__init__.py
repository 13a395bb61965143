"""Checkpoint loading: the only place that knows Hugging Face names.

``load_checkpoint`` resolves a name, directory or loaded model, finds the adapter registered for
its architecture and returns mmlens' config and state dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

# Importing the family modules registers them.
from mmlens.adapters import clip, llama, llava, llava_next, llava_onevision, mistral, qwen2, siglip  # noqa: F401
from mmlens.adapters.processors import load_processor
from mmlens.adapters.registry import VLM_ADAPTERS, lookup
from mmlens.config import VLMConfig
from mmlens.errors import UnknownNameError
from mmlens.zoo.registry import resolve_model_name

__all__ = ["load_checkpoint"]


def load_checkpoint(
    path_or_model: Any, *, dtype: torch.dtype = torch.float32, with_processor: bool = True
) -> tuple[VLMConfig, dict, Any]:
    """Return ``(config, state_dict, processor_or_None)`` for a checkpoint.

    Args:
        path_or_model: A registered model name, a local Hugging Face directory, or a loaded
            ``transformers`` model (its tensors are shared, not copied, when the dtype matches).
        dtype: Parameter dtype of the result.
        with_processor: Load the directory's processor too (None is returned in its place when
            False, or when a loaded model is given).

    Raises:
        UnknownNameError: neither a registered name nor a local directory.
        ProcessorUnavailableError: the directory's processor cannot be built here (see
            :func:`~mmlens.adapters.processors.load_processor`).
    """
    processor = None
    if isinstance(path_or_model, nn.Module):
        hf_model = path_or_model
    else:
        path = resolve_model_name(path_or_model)
        if not Path(path).is_dir():
            raise UnknownNameError(
                f"{path_or_model!r} is neither a registered model name nor a local directory. "
                "Pass a directory holding a Hugging Face checkpoint (config.json + weights), "
                "or a name from mmlens.zoo.MODELS."
            )
        arch = (transformers.AutoConfig.from_pretrained(path, local_files_only=True).architectures or ["?"])[0]
        lookup(VLM_ADAPTERS, arch, "architecture")
        hf_model = getattr(transformers, arch).from_pretrained(path, dtype=dtype, local_files_only=True)
        processor = load_processor(path) if with_processor else None
    adapter = lookup(VLM_ADAPTERS, type(hf_model).__name__, "architecture")
    cfg = adapter.config(hf_model.config)
    state = {k: v.detach().to(dtype) for k, v in adapter.weights(hf_model.state_dict(), cfg).items()}
    return cfg, state, processor

