"""Construction-time checks of pruning policies: every count, ratio and layer in range.

A policy that is out of range does not fail when it runs: ``Truncate(2, keep=-3)`` keeps no image
token, a ratio of 0 prunes nothing. So policies check their values when they are made.
"""

from __future__ import annotations

from typing import Any

from mmlens.errors import InvalidInputError

MODES = ("drop", "mask")


def check_int(name: str, value: Any, low: int, why: str) -> None:
    """Raise :class:`InvalidInputError` unless ``value`` is an integer ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidInputError(f"{name} must be an integer >= {low} ({why}), got {value!r}.")


def check_ratio(name: str, value: Any) -> None:
    """Raise :class:`InvalidInputError` unless ``value`` is a fraction in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise InvalidInputError(
            f"{name} is the fraction of image tokens to prune and must lie in (0, 1], got {value!r} "
            "(0 would prune nothing; run without prune= for the unpruned model)."
        )


def check_choice(name: str, value: Any, choices: tuple[str, ...], optional: bool = True) -> None:
    """Raise :class:`InvalidInputError` unless ``value`` is one of ``choices`` (or None when ``optional``)."""
    if (value is None and optional) or value in choices:
        return
    raise InvalidInputError(f"{name} must be one of {choices}, not {value!r}.")


def check_truncate(policy: Any) -> None:
    """Check a :class:`~mmlens.pruning.Truncate`."""
    check_int("Truncate layer", policy.layer, 0, "the first block that runs without the pruned tokens")
    check_int("Truncate keep", policy.keep, 0, "how many image tokens to keep; 0 removes them all")
    if policy.layer == 0 and policy.keep > 0:
        raise InvalidInputError(
            "Truncate(0, keep>0) cannot rank before block 0 (ranking reads the previous block's attention): "
            "use layer >= 1, or keep=0 to remove every image token."
        )
    check_choice("mode", policy.mode, MODES, optional=False)


def check_fastv(policy: Any) -> None:
    """Check a :class:`~mmlens.pruning.FastV`."""
    check_int("FastV layer", policy.layer, 1, "ranking reads the attention of the block before it")
    check_ratio("FastV ratio", policy.ratio)
    check_choice("rank_by", policy.rank_by, ("all_rows", "last_row"))
    check_choice("mode", policy.mode, MODES, optional=False)


def check_himap(policy: Any) -> None:
    """Check a :class:`~mmlens.pruning.HiMAP`."""
    check_int("HiMAP k1", policy.k1, 1, "ranking reads the attention of the block before it")
    check_int("HiMAP k2", policy.k2, 1, "ranking reads the attention of the block before it")
    if policy.k2 <= policy.k1:
        raise InvalidInputError(f"HiMAP needs k1 < k2, got k1={policy.k1}, k2={policy.k2}.")
    check_ratio("HiMAP r1", policy.r1)
    check_ratio("HiMAP r2", policy.r2)
    check_choice("phi_dp", policy.phi_dp, ("column", "row", "column_normalised"))
    check_choice("mode", policy.mode, MODES, optional=False)
