"""Parse pruning policies from command-line specs such as ``himap:2,0.5,8,0.75``."""

from __future__ import annotations

from mmlens.errors import MMLensError
from mmlens.pruning.policies import FastV, HiMAP, Truncate


def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError(f"keep_newlines and hide_self must be true or false, not {value!r}")
    return value.lower() == "true"


SPECS = {
    "fastv": (FastV, (int, float, str, str, _flag, _flag)),
    "himap": (HiMAP, (int, float, int, float, str, str, _flag, _flag)),
    "truncate": (Truncate, (int, int, str, _flag, _flag)),
}


def parse_policy(spec: str):
    """``fastv:K,R[,rank_by[,mode[,keep_newlines[,hide_self]]]]``,
    ``himap:K1,R1,K2,R2[,phi_dp[,mode[,keep_newlines[,hide_self]]]]``,
    ``truncate:K,keep[,mode[,keep_newlines[,hide_self]]]`` (flags: true or false); a bare name takes
    the defaults (``himap`` = "Unraveling the Shift" Table 3, LLaVA-1.5-7B). Options left out
    stay unset, for :func:`~mmlens.pruning.with_convention` to fill."""
    name, _, args = spec.partition(":")
    if name not in SPECS:
        raise MMLensError(f"unknown pruning policy {name!r}; use one of {sorted(SPECS)}, e.g. himap:2,0.5,8,0.75.")
    cls, types = SPECS[name]
    values = [v for v in args.split(",") if v] if args else []
    if len(values) > len(types):
        raise MMLensError(f"{name} takes at most {len(types)} values, got {spec!r}.")
    try:
        return cls(*(t(v) for t, v in zip(types, values)))
    except (TypeError, ValueError) as err:
        raise MMLensError(f"cannot read pruning policy {spec!r}: {err}") from None
