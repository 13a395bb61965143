"""Registered model names: checkpoints shipped inside the package, and the tiny random one."""

from __future__ import annotations

import os
from pathlib import Path

CHECKPOINTS = Path(__file__).parent / "checkpoints"

MODELS: dict[str, Path] = {
    "shapes-llava": CHECKPOINTS / "shapes-llava",
    "shapes-llava-deep": CHECKPOINTS / "shapes-llava-deep",
}

TINY_RANDOM = "tiny-random"
"""A tiny random Llama + CLIP checkpoint built on first use (for smoke runs, not for findings)."""


def cache_dir() -> Path:
    return Path(os.environ.get("MMLENS_CACHE", Path.home() / ".cache" / "mmlens"))


def resolve_model_name(name_or_path: str | Path) -> str:
    """Map a registered name to its directory (building ``tiny-random`` if needed); pass paths through."""
    if str(name_or_path) == TINY_RANDOM:
        from mmlens.zoo.tiny import save_tiny_checkpoint, tiny_llava_config

        path = cache_dir() / TINY_RANDOM
        if not (path / "config.json").exists():
            save_tiny_checkpoint(path, tiny_llava_config(n_kv_heads=2))
        return str(path)
    return str(MODELS.get(str(name_or_path), name_or_path))
