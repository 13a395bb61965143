"""Greedy-answer accuracy over a dataset, with or without a pruning policy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from mmlens.conventions import resolve
from mmlens.data.sample import Sample
from mmlens.inputs import sample_inputs, score
from mmlens.pruning import with_convention
from mmlens.result import FrameResult
from mmlens.viz.flow import plot_accuracy


@dataclass(frozen=True)
class EvalResult(FrameResult):
    """Per sample (and policy): the greedy answer, its score and whether it is correct.

    Combine a baseline and a pruned run with ``EvalResult.concat([base, pruned])``.
    """

    COLUMNS: ClassVar[dict[str, str]] = {
        "sample": "sample id",
        "task": "question type",
        "policy": "pruning policy label ('baseline' without one)",
        "gold": "gold answer",
        "prediction": "greedy answer",
        "score": "the sample's own metric (see mmlens.inputs.score), in [0, 1]",
        "correct": "score == 1",
    }

    @property
    def accuracy(self) -> float:
        """Share of correct answers over every row."""
        return float(self.frame["correct"].mean())

    def summary(self) -> pd.DataFrame:
        """Mean score per policy and task (columns policy, task, mean, n)."""
        g = self.frame.groupby(["policy", "task"], sort=False)["score"]
        return g.agg(mean="mean", n="size").reset_index()

    def plot(self) -> Figure:
        """Mean score per task, one bar per policy."""
        return plot_accuracy(self.summary())


def evaluate(
    model,
    samples: Sequence[Sample],
    prune: Any = None,
    *,
    policy: str | None = None,
    template: str = "auto",
    max_new_tokens: int = 4,
    progress: bool = False,
    rerank_every_step: bool | None = None,
    convention: str = "paper",
) -> EvalResult:
    """The greedy answer of every sample, its benchmark score and whether it is correct (score 1).

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        samples: Dataset samples.
        prune: A pruning policy (``FastV``, ``HiMAP``, ``Truncate``) or None.
        policy: Label of ``prune`` in the ``policy`` column (default: ``"baseline"`` without a
            policy, else the policy's repr).
        template: Prompt template.
        max_new_tokens: Greedy tokens generated per answer.
        progress: Show a progress bar.
        rerank_every_step: With ``prune``, re-run the whole sequence without a cache and re-rank at
            every generated token (the released code) instead of pruning once at prefill; None:
            from ``convention``.
        convention: ``"paper"`` or ``"released_code"``: fills the options ``prune`` leaves unset
            (:func:`~mmlens.pruning.with_convention`) and ``rerank_every_step``
            (docs/conventions.md); explicit options win.
    """
    prune = with_convention(prune, convention)
    rerank = prune is not None and resolve("generate", convention, rerank_every_step=rerank_every_step)["rerank_every_step"]
    label = policy if policy is not None else ("baseline" if prune is None else repr(prune))
    tok = model.processor.tokenizer
    rows = []
    for s in tqdm(samples, desc="evaluate", disable=not progress):
        inputs = sample_inputs(model, s, template)
        out = model.generate(inputs, max_new_tokens=max_new_tokens, prune=prune, rerank_every_step=rerank)
        answer = tok.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True).strip()
        value = score(s, answer)
        rows.append((s.id, s.task, label, s.answer, answer, value, value == 1.0))
    return EvalResult(pd.DataFrame(rows, columns=list(EvalResult.COLUMNS)))
