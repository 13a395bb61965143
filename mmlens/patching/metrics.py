"""Patching metrics: functions of the logits at one position (``last`` by default).

A metric maps ``[batch, d_vocab]`` logits to ``[batch]`` numbers. :func:`logit_diff` (the
default, "Interpretability in the Wild" §3) compares the clean and the corrupt run's answers;
:func:`answer_prob` reads one answer's softmax probability; any callable of the same shape works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mmlens.errors import MMLensError
from mmlens.patching.errors import DegenerateMetricError

Metric = Callable[[Float[Tensor, "batch d_vocab"]], Float[Tensor, " batch"]]


def logit_diff(clean_token: int, corrupt_token: int) -> Metric:
    """``logit[clean_token] − logit[corrupt_token]``."""

    def metric(logits: Float[Tensor, "batch d_vocab"]) -> Float[Tensor, " batch"]:
        return (logits[:, clean_token] - logits[:, corrupt_token]).float()

    return metric


def answer_prob(token: int) -> Metric:
    """Softmax probability of ``token`` over the full vocabulary."""

    def metric(logits: Float[Tensor, "batch d_vocab"]) -> Float[Tensor, " batch"]:
        return torch.softmax(logits.float(), -1)[:, token]

    return metric


def token_id(model: Any, token: int | str) -> int:
    """A token id, or the id of a token string in the model's tokenizer (e.g. ``"▁Red"``)."""
    if isinstance(token, int):
        return token
    tok = getattr(getattr(model, "processor", None), "tokenizer", None)
    if tok is None:
        raise MMLensError(f"cannot look up token {token!r}: the model has no tokenizer; pass token ids.")
    ids = tok.convert_tokens_to_ids([token])
    if ids[0] is None or ids[0] == tok.unk_token_id:
        ids = tok(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise MMLensError(f"{token!r} is {len(ids)} tokens, not one: pass a single token or its id.")
    return int(ids[0])


def resolve_metric(
    model: Any,
    metric: str | Metric | None,
    clean_logits: Float[Tensor, " d_vocab"],
    corrupt_logits: Float[Tensor, " d_vocab"],
    answers: tuple[int | str, int | str] | None = None,
) -> tuple[Metric, str]:
    """The metric to use and its name.

    Args:
        model: The model (for its tokenizer, when ``answers`` are strings).
        metric: None or ``"logit_diff"`` (clean answer minus corrupt answer), ``"prob"`` (the
            clean answer's probability), or a callable on ``[batch, d_vocab]`` logits.
        clean_logits: Logits of the clean run at the metric position.
        corrupt_logits: Logits of the corrupt run there.
        answers: ``(clean answer, corrupt answer)`` token ids or strings; default each run's
            own top token.

    Raises:
        DegenerateMetricError: the default answers coincide (both runs predict the same token).
        MMLensError: an unknown metric name.
    """
    if callable(metric):
        return metric, getattr(metric, "__name__", "custom")
    if answers is None:
        answers = (int(clean_logits.argmax()), int(corrupt_logits.argmax()))
    a, b = token_id(model, answers[0]), token_id(model, answers[1])
    if metric in (None, "logit_diff"):
        if a == b:
            raise DegenerateMetricError(
                f"clean and corrupt runs both predict token {a}, so their logit difference is 0 in both runs: "
                "pass answers=(clean_token, corrupt_token), metric='prob', or a stronger corruption."
            )
        return logit_diff(a, b), "logit_diff"
    if metric == "prob":
        return answer_prob(a), "prob"
    raise MMLensError(f"metric must be None, 'logit_diff', 'prob' or a callable on logits, not {metric!r}.")


def normalise(raw: Tensor, clean: float, corrupt: float) -> Tensor:
    """``(raw − corrupt) / (clean − corrupt)``: 1 where patching restores the clean metric, 0 where it
    leaves the corrupt one.

    Raises:
        DegenerateMetricError: the metric does not tell the two runs apart.
    """
    if abs(clean - corrupt) < 1e-6 * max(1.0, abs(clean)):
        raise DegenerateMetricError(
            f"the metric is {clean:.6g} on the clean run and {corrupt:.6g} on the corrupt run: normalised effects "
            "are undefined. Use a corruption that changes the answer, or another metric."
        )
    return (raw - corrupt) / (clean - corrupt)
