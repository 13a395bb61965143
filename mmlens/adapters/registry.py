"""Registries of adapters: one per VLM architecture, vision tower and decoder family.

Adapters are the only code that knows Hugging Face key and config names. Each family file
registers itself here; lookups never branch on model names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torch import Tensor

from transformers import PretrainedConfig

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


def language_model_state(hf_state: StateDict, body: str, head: str = "lm_head.weight") -> StateDict:
    """The language model's entries under ``body`` plus its output head as ``lm_head.weight``
    (absent when the embeddings are tied), ready for a decoder adapter's ``weights``."""
    text = select(hf_state, body)
    if head in hf_state:
        text["lm_head.weight"] = hf_state[head]
    return text


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


# Fields every Hugging Face config has (labels, output switches, dtype, names); none changes a forward.
GENERIC_FIELDS = frozenset(PretrainedConfig().to_dict())

# Fields that do not change an inference forward (initialisation, dropout at eval, caching, special
# token ids read elsewhere).
INERT_FIELDS = frozenset({
    "initializer_range", "initializer_factor", "use_cache", "attention_dropout", "dropout",
    "pad_token_id", "bos_token_id", "eos_token_id",
})


def require_defaults(hf_config: Any, implemented: frozenset[str] | set[str], what: str) -> None:
    """Raise unless every field mmlens does not implement holds its default value.

    The allow-list of a family: ``implemented`` names the fields its adapter reads; every other
    field the config class defines must equal the value of a default-constructed config of the
    same class, since mmlens would silently compute something else for any other value.

    Args:
        hf_config: A Hugging Face (sub-)config.
        implemented: Fields the adapter translates (or checks itself).
        what: The family, for the message.

    Raises:
        UnsupportedArchitectureError: naming the first field that differs, its value and default.
    """
    default = type(hf_config)().to_dict()
    skip = set(implemented) | GENERIC_FIELDS | INERT_FIELDS | set(getattr(hf_config, "sub_configs", {}) or {})
    for field, value in hf_config.to_dict().items():
        if field in skip or field not in default or value == default[field]:
            continue
        raise UnsupportedArchitectureError(
            f"{what}: config field {field}={value!r} (default {default[field]!r}) changes the computation "
            "in a way mmlens does not implement; load a checkpoint that keeps the default or add "
            "support in the adapter (mmlens/adapters/) with a parity test."
        )
