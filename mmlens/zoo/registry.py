"""Registered model names that resolve to checkpoints shipped inside the package."""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS = Path(__file__).parent / "checkpoints"

MODELS: dict[str, Path] = {
    "shapes-llava": CHECKPOINTS / "shapes-llava",
}


def resolve_model_name(name_or_path: str | Path) -> str:
    """Map a registered name to its packaged directory; pass anything else through."""
    return str(MODELS.get(str(name_or_path), name_or_path))
