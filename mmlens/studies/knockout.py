"""The knockout sweep over a dataset, with the paper's correct-answer filter."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
from tqdm.auto import tqdm

from mmlens.analysis.knockout_sweep import PAPER_FLOWS, KnockoutResult, knockout_sweep
from mmlens.data.sample import Sample
from mmlens.inputs import greedy_answer, is_correct, sample_inputs


def knockout_study(
    model,
    samples: Sequence[Sample],
    flows: Mapping[str, tuple[str, str]] | Iterable[str] = PAPER_FLOWS,
    window_size: int | None = None,
    layers: Iterable[int] | None = None,
    *,
    filter_correct: bool = False,
    template: str = "auto",
    progress: bool = True,
    fill: str | None = None,
    convention: str = "paper",
) -> KnockoutResult:
    """:func:`~mmlens.analysis.knockout_sweep` on every sample, rows tagged with its id and task.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        samples: Dataset samples, prepared with ``template`` (their boxes define ``related``).
        flows: Flow names from :data:`~mmlens.analysis.PAPER_FLOWS`, or name → (source, target).
        window_size: k of the centred window (None: the paper's k scaled to the depth).
        layers: Centre layers (all by default).
        filter_correct: Keep only samples whose greedy answer equals the gold answer (the
            paper's filter, "Cross-modal Information Flow" §4).
        template: Prompt template.
        progress: Show a progress bar.
        fill: ``"-inf"`` or ``"finfo_min"`` (None: from ``convention``).
        convention: ``"paper"`` or ``"released_code"`` (docs/conventions.md); explicit options win.

    Returns:
        One row per kept sample, flow and centre layer (an empty table when none is kept).
    """
    flows = dict(flows) if isinstance(flows, Mapping) else list(flows)
    runs = []
    for sample in tqdm(samples, desc="knockout", disable=not progress):
        inputs = sample_inputs(model, sample, template)
        if filter_correct and not is_correct(greedy_answer(model, inputs), sample.answer):
            continue
        run = knockout_sweep(model, inputs, flows, window_size, layers, fill=fill, convention=convention,
                             allow_empty=True)  # flows empty for a sample (no boxes) are left out, not zeros
        runs.append(run.tag(sample=sample.id, task=sample.task))
    if not runs:
        return KnockoutResult(pd.DataFrame(columns=list(KnockoutResult.COLUMNS)))
    return KnockoutResult.concat(runs)
