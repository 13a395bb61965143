"""The one contract every analysis and study result follows.

An analysis is a function ``(model, inputs: MMInputs, ...) -> SomeResult``; a study is a function
``(model, samples: Sequence[Sample], ...) -> SomeResult``. Either way the result is a frozen
dataclass deriving from :class:`Result`:

- ``to_dataframe()`` — tidy: one row per observation, with the columns documented in the class's
  ``COLUMNS`` (name → meaning), in that order;
- ``plot(...)`` — the figure the papers draw, returned as a matplotlib ``Figure`` that is not
  registered with pyplot (so a notebook shows it once, as the cell's value);
- ``concat([...])`` — results of several inputs or samples combined into one (where averaging
  across samples makes sense), so a study is a loop plus one ``concat``;
- ``summary()`` — where a result has one, a small DataFrame of means (and intervals) per
  condition; ``per_layer`` always means "indexed by layer".

Frame-backed results (``FrameResult``) hold their tidy table in ``frame`` and get ``to_dataframe``
and ``concat`` for free.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, TypeVar

import pandas as pd

from mmlens.errors import MMLensError

R = TypeVar("R", bound="Result")
F = TypeVar("F", bound="FrameResult")


class Result(ABC):
    """Base class of analysis and study results (subclasses are frozen dataclasses)."""

    COLUMNS: ClassVar[dict[str, str]] = {}
    """Column → meaning of :meth:`to_dataframe`, in order."""

    @abstractmethod
    def to_dataframe(self) -> pd.DataFrame:
        """The result as a tidy table: one row per observation, columns as in ``COLUMNS``."""

    @abstractmethod
    def plot(self, **kwargs: Any) -> Any:
        """The paper's figure for this result (a matplotlib ``Figure``, not shown)."""

    @classmethod
    def concat(cls: type[R], results: Sequence[R]) -> R:
        """Combine results of several inputs into one (not every result supports it)."""
        raise MMLensError(f"{cls.__name__} results cannot be combined: keep them in a list.")


@dataclass(frozen=True)
class FrameResult(Result):
    """A result whose content is one tidy table (``frame``)."""

    frame: pd.DataFrame

    def to_dataframe(self) -> pd.DataFrame:
        return self.frame

    @classmethod
    def concat(cls: type[F], results: Sequence[F]) -> F:
        """Stack the tables of several results (their other fields must agree)."""
        results = list(results)
        if not results:
            raise MMLensError(f"{cls.__name__}.concat needs at least one result.")
        first = results[0]
        for name in (f.name for f in fields(first) if f.name != "frame"):
            values = {repr(getattr(r, name)) for r in results}
            if len(values) > 1:
                raise MMLensError(
                    f"cannot concat {cls.__name__} results whose {name!r} differ ({sorted(values)}): "
                    "combine only results computed with the same settings."
                )
        frame = pd.concat([r.frame for r in results], ignore_index=True)
        return replace(first, frame=frame)

    def tag(self: F, **columns: Any) -> F:
        """The same result with columns set to constants (e.g. ``sample=s.id``): how a study labels
        the rows of a per-input result before it combines them with :meth:`concat`."""
        unknown = sorted(set(columns) - set(self.frame.columns))
        if unknown:
            raise MMLensError(f"{type(self).__name__} has no column(s) {unknown}: tag one of {list(self.frame.columns)}.")
        return replace(self, frame=self.frame.assign(**columns))
