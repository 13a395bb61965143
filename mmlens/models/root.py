"""What every mmlens model adds to TransformerLens' ``HookedRootModule``.

* hook names are checked: an unknown name raises :class:`UnknownHookError` listing the closest
  valid names (TransformerLens would raise a bare ``KeyError``);
* ``run_with_cache`` returns a TransformerLens :class:`ActivationCache`, so ``cache["pattern", 3]``,
  ``accumulated_resid`` and ``apply_ln_to_stack`` work;
* hooks never outlive the call or context that added them, also when the model raises;
* a forward hook that returns a non-tensor or a tensor of another shape raises
  :class:`HookReturnError` naming it, and an unknown cache key lists the closest cached names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mmlens.errors import UnknownHookError, closest
from mmlens.hooks import HookedRootModule
from mmlens.models.checks import Cache, checked_hook


class HookedRoot(HookedRootModule):
    """Base class of the hooked models."""

    def check_hook_name(self, name: str) -> None:
        """Raise :class:`UnknownHookError` if ``name`` is not a hook point of this model."""
        if name not in self.hook_dict:
            suggestions = ", ".join(closest(name, self.hook_dict))
            raise UnknownHookError(
                f"{name!r} is not a hook point of this model. Closest valid names: {suggestions}. "
                "List them all with model.hook_dict.keys() or see docs/hook_names.md."
            )

    def _enable_hook_with_name(self, name: str, hook: Callable, dir: str) -> None:
        self.check_hook_name(name)
        super()._enable_hook_with_name(name, hook, dir)

    def _enable_hook(self, name: Any, hook: Callable, dir: str) -> None:
        super()._enable_hook(name, checked_hook(hook) if dir == "fwd" else hook, dir)

    def add_hook(self, name: Any, hook: Callable, *args: Any, **kwargs: Any) -> None:
        if isinstance(name, str):
            self.check_hook_name(name)
        direction = kwargs.get("dir", args[0] if args else "fwd")
        super().add_hook(name, checked_hook(hook) if direction == "fwd" else hook, *args, **kwargs)

    def run_with_cache(self, *model_args: Any, return_cache_object: bool = True, **kwargs: Any):
        """Run the model and cache activations, as TransformerLens' ``run_with_cache``.

        Args:
            *model_args: Passed to ``forward``.
            return_cache_object: Return an ``ActivationCache`` (default; :class:`~mmlens.models.checks.Cache`)
                or a plain dict.
            **kwargs: ``names_filter``, ``device``, ``remove_batch_dim``, ``incl_bwd``,
                ``pos_slice`` as in TransformerLens, then the forward's own keyword arguments.

        Returns:
            ``(output, cache)``.
        """
        names_filter = kwargs.get("names_filter")
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if isinstance(names_filter, list):
            for name in names_filter:
                self.check_hook_name(name)
        out, cache = super().run_with_cache(*model_args, **kwargs)
        if return_cache_object:
            cache = Cache(cache, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))
        return out, cache
