"""The single import site of TransformerLens' hook machinery.

Everything in mmlens that needs a hook point or a hookable root module imports it from here,
so a change of TransformerLens' layout is a one-line fix.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from transformer_lens import ActivationCache
from transformer_lens.hook_points import HookPoint

try:  # transformer_lens >= 4 moved the root module into its own file
    from transformer_lens.HookedRootModule import HookedRootModule
except ImportError:  # pragma: no cover - older transformer_lens
    from transformer_lens.hook_points import HookedRootModule  # type: ignore[no-redef]

HookFn = Callable[..., "Tensor | None"]
"""A TransformerLens hook function: ``fn(activation, hook=HookPoint) -> activation | None``."""

FwdHooks = list[tuple["str | Callable[[str], bool]", HookFn]]
"""A list of ``(hook_name_or_filter, hook_fn)`` pairs; experiments compose by concatenation."""

__all__ = ["ActivationCache", "FwdHooks", "HookFn", "HookPoint", "HookedRootModule"]
