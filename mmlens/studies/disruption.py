"""Disruption of one visual flow over a dataset ("Unraveling the Shift" §3.2–3.3)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from mmlens.analysis.disruption import DisruptionResult, disruption
from mmlens.data.sample import Sample
from mmlens.inputs import sample_inputs


def disruption_study(
    model,
    samples: Sequence[Sample],
    flow: str = "instruction<-image",
    layers: Iterable[int] | None = None,
    scope: str | None = None,
    mode: str | None = None,
    *,
    template: str = "auto",
    top_k: int = 5,
    seed: int = 0,
    progress: bool = True,
    convention: str = "paper",
) -> DisruptionResult:
    """:func:`~mmlens.analysis.disruption` on every sample, rows tagged with its id.

    Combine the studies of two flows with ``DisruptionResult.concat`` to get ``D_l``.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        samples: Dataset samples, prepared with ``template``.
        flow: ``"instruction<-image"``, ``"image<-image"`` or ``"random<-image"``.
        layers: Layers to disrupt (all by default).
        scope: ``"single"`` or ``"onward"`` (None: from ``convention``).
        mode: ``"post_softmax"`` or ``"pre_softmax"`` (None: from ``convention``).
        template: Prompt template.
        top_k: Size of the top-k sets of the score consistency.
        seed: Seed of the random control rows (one generator for the whole study).
        progress: Show a progress bar.
        convention: ``"paper"`` or ``"released_code"`` (docs/conventions.md); explicit options win.
    """
    rng = np.random.default_rng(seed)
    runs = [
        disruption(model, sample_inputs(model, s, template), flow, layers, scope, mode, top_k=top_k, seed=rng,
                   convention=convention).tag(sample=s.id)
        for s in tqdm(samples, desc=f"disrupt {flow}", disable=not progress)
    ]
    return DisruptionResult.concat(runs)
