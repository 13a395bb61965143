"""Files of checkpoints in the original LLaVA repository layout: config, weights, the CLIP tower.

Such checkpoints are not ``transformers`` models: their config names a class that only the
LLaVA (or Shikra) repository defines, and their vision tower is a separate CLIP checkpoint named
by ``mm_vision_tower``. These helpers read them without that code and without any download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from mmlens.adapters.registry import StateDict
from mmlens.errors import UnknownNameError

# Weight files in the order ``transformers`` looks for them (safetensors first).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def read_config(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's ``config.json`` as a plain dict (no ``transformers`` class involved)."""
    return json.loads((Path(directory) / "config.json").read_text())


def read_state_dict(directory: str | Path) -> StateDict:
    """Every tensor of a checkpoint directory, under the names it was saved with.

    Reads ``model.safetensors`` or ``pytorch_model.bin``, sharded (``*.index.json``) or not.

    Raises:
        UnknownNameError: the directory holds none of :data:`WEIGHT_FILES`.
    """
    directory = Path(directory)
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in _read_file(directory / shard).items()}
        return _read_file(path)
    raise UnknownNameError(
        f"{directory} holds no weights: expected one of {list(WEIGHT_FILES)}. Pass the directory of the "
        "downloaded checkpoint."
    )


def _read_file(path: Path) -> StateDict:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def clip_tower_weights(state: StateDict) -> StateDict:
    """The vision-tower tensors of a CLIP checkpoint, keyed as ``CLIPVisionModel`` keys them now.

    A full ``CLIPModel`` checkpoint (``openai/clip-vit-large-patch14-336``) and a
    ``CLIPVisionModel`` saved by ``transformers`` 4.x prefix them ``vision_model.``; one saved by
    ``transformers`` 5 does not. Text-tower and projection tensors are left out.
    """
    prefixed = {k[len("vision_model.") :]: v for k, v in state.items() if k.startswith("vision_model.")}
    if prefixed:
        return prefixed
    return {k: v for k, v in state.items() if k.split(".")[0] in ("embeddings", "pre_layrnorm", "encoder", "post_layernorm")}


def resolve_vision_tower(name: str | None, override: str | Path | None, checkpoint: Path) -> Path:
    """The local directory of the CLIP checkpoint that ``mm_vision_tower`` names.

    Tried in order: ``override`` (the ``vision_tower=`` argument), ``name`` as a path (absolute,
    or relative to the working directory, then to the checkpoint), and the Hugging Face cache
    (``local_files_only``: nothing is downloaded).

    Raises:
        UnknownNameError: no such directory; the message says how to pass one.
    """
    if override is not None:
        path = Path(override).expanduser()
        if not (path / "config.json").is_file():
            raise UnknownNameError(
                f"vision_tower={str(override)!r} is not a directory holding a CLIP checkpoint (config.json and "
                f"weights); pass the local copy of {name or 'the CLIP tower'} the checkpoint was trained with."
            )
        return path
    if name:
        for path in (Path(name).expanduser(), checkpoint / name):
            if (path / "config.json").is_file():
                return path
        cached = _hub_cache(name)
        if cached is not None:
            return cached
    raise UnknownNameError(
        f"the vision tower of {checkpoint} (mm_vision_tower={name!r}) is not on this machine and mmlens never "
        "downloads: pass vision_tower='/path/to/clip' (a local copy of that CLIP checkpoint) to "
        "HookedVLM.from_pretrained."
    )


def _hub_cache(name: str) -> Path | None:
    """The cached snapshot of a hub repository id, or None (no network access)."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not a repository id, or not in the cache: both mean "not on disk"
        return None
    return path if (path / "config.json").is_file() else None
