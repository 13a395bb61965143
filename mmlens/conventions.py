"""Paper or released code: one switch for every option where the two differ (docs/conventions.md).

Each method of the four papers is defined twice where the paper's text and its authors' released
code disagree. mmlens follows the paper's text by default and offers the code's behaviour as a
named option; ``convention="released_code"`` sets every such option at once, so one switch
reproduces the authors' numbers. This module is the one place that maps a convention to option
values: :data:`OPTIONS` is the whole table.

An option passed explicitly (anything but None) always wins over the convention::

    >>> resolve("logit_lens", "released_code")
    {'final_norm': 'last_only'}
    >>> resolve("logit_lens", "released_code", final_norm="all")
    {'final_norm': 'all'}
"""

from __future__ import annotations

from typing import Any

from mmlens.errors import MMLensError

CONVENTIONS = ("paper", "released_code")

OPTIONS: dict[str, dict[str, tuple[Any, Any]]] = {
    # method → option → (value under "paper", value under "released_code")
    "knockout": {"fill": ("-inf", "finfo_min")},
    "logit_lens": {"final_norm": ("all", "last_only")},
    "attention_share": {"head_reduce": ("mean", "max")},
    "saliency": {
        "variant": ("paper", "released_code"),
        "aggregate": ("source", "receiving"),
        "vision_flows": ("mean", "sum"),
        "target": ("prediction", "gold"),
    },
    "disruption": {"mode": ("post_softmax", "pre_softmax"), "scope": ("single", "onward")},
    "grad_cam": {"variant": ("standard", "released_code"), "target_rows": ("answer", "released_code")},
    "fastv": {"rank_by": ("all_rows", "last_row"), "hide_self": (False, True)},
    "himap": {"phi_dp": ("column", "column"), "hide_self": (False, True)},
    "truncate": {"hide_self": (False, True)},
    "generate": {"rerank_every_step": (False, True)},
}
"""Method → option → (paper value, released-code value). The paper's value is mmlens' default."""


def check_convention(convention: str) -> str:
    """``convention`` itself when it is one of :data:`CONVENTIONS`.

    Raises:
        MMLensError: any other value.
    """
    if convention not in CONVENTIONS:
        raise MMLensError(f"convention must be one of {CONVENTIONS}, not {convention!r}.")
    return convention


def resolve(method: str, convention: str = "paper", **given: Any) -> dict[str, Any]:
    """Every option of ``method`` under ``convention``; a value in ``given`` that is not None wins.

    Args:
        method: A key of :data:`OPTIONS` (e.g. ``"saliency"``).
        convention: ``"paper"`` (mmlens' defaults) or ``"released_code"``.
        **given: Options the caller set (None: not set).

    Returns:
        Option name → value, for every option of ``method`` (and any other ``given`` names).

    Raises:
        MMLensError: an unknown method or convention.
    """
    if method not in OPTIONS:
        raise MMLensError(f"no conventions for {method!r}; known methods: {sorted(OPTIONS)}.")
    column = CONVENTIONS.index(check_convention(convention))
    values = {name: pair[column] for name, pair in OPTIONS[method].items()}
    values.update({name: value for name, value in given.items() if value is not None})
    return values
