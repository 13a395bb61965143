"""Registries of adapters: one per VLM architecture, vision tower and decoder family.

Adapters are the only code that knows Hugging Face key and config names. Each family file
registers itself here; lookups never branch on model names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torch import Tensor

from mmlens.errors import UnsupportedArchitectureError

StateDict = dict[str, Tensor]


class TowerAdapter(Protocol):
    """Converts one tower: its config and its weights (keys relative to the tower's prefix)."""

    def config(self, hf_config: Any, **kwargs: Any) -> Any: ...

    def weights(self, hf_state: StateDict, cfg: Any) -> StateDict: ...


VLM_ADAPTERS: dict[str, Any] = {}
VISION_ADAPTERS: dict[str, TowerAdapter] = {}
DECODER_ADAPTERS: dict[str, TowerAdapter] = {}


def register(table: dict[str, Any], *names: str) -> Callable[[Any], Any]:
    """Class decorator registering an adapter instance under Hugging Face type names."""

    def wrap(cls: Any) -> Any:
        for name in names:
            table[name] = cls()
        return cls

    return wrap


def lookup(table: dict[str, Any], name: str, what: str) -> Any:
    """Return the adapter for ``name`` or raise :class:`UnsupportedArchitectureError`."""
    try:
        return table[name]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"{what} {name!r} is not supported by mmlens; supported: {sorted(table)}. "
            "A new family needs an adapter file in mmlens/adapters/ and a parity test."
        ) from None


def select(hf_state: StateDict, prefix: str) -> StateDict:
    """The entries under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in hf_state.items() if k.startswith(prefix)}


def rename_block(hf_state: StateDict, hf_layer_prefix: str, table: dict[str, str], n_layers: int) -> StateDict:
    """Rename per-layer keys: ``{hf_layer_prefix}{i}.{hf}`` → ``blocks.{i}.{ours}``."""
    out: StateDict = {}
    for i in range(n_layers):
        for hf_key, our_key in table.items():
            key = f"{hf_layer_prefix}{i}.{hf_key}"
            if key in hf_state:
                out[f"blocks.{i}.{our_key}"] = hf_state[key]
    return out


def reject(hf_config: Any, checks: dict[str, Callable[[Any], bool]], what: str) -> None:
    """Raise if a config field that changes the computation holds a value we do not implement.

    Args:
        checks: field name → predicate that is True for supported values.
    """
    for field, ok in checks.items():
        value = getattr(hf_config, field, None)
        if value is not None and not ok(value):
            raise UnsupportedArchitectureError(
                f"{what}: config field {field}={value!r} changes the computation in a way mmlens "
                "does not implement; load a checkpoint without it or add support in the adapter."
            )
