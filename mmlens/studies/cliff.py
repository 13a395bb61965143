"""The cliff layer: from which layer on image tokens no longer matter ("From Redundancy to Relevance" §3.4)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from mmlens.data.sample import Sample
from mmlens.errors import check_layer
from mmlens.pruning import Truncate
from mmlens.result import FrameResult
from mmlens.studies.evaluate import evaluate
from mmlens.viz.flow import plot_cliff


@dataclass(frozen=True)
class CliffResult(FrameResult):
    """Accuracy when image tokens are truncated from layer K on, for each K.

    Attributes:
        frame: One row per K (columns as in ``COLUMNS``).
        baseline: Accuracy without truncation.
        cliff: First K from which accuracy stays within ``tolerance`` of the baseline (None if never).
        tolerance: Absolute accuracy tolerance.
        n: Samples behind each accuracy (None: not recorded).
        keep: Image tokens kept from K on (None: not recorded).
    """

    COLUMNS: ClassVar[dict[str, str]] = {
        "layer": "K, the first layer without (or with only `keep`) image tokens",
        "accuracy": "share of correct greedy answers with that truncation",
    }

    baseline: float
    cliff: int | None
    tolerance: float
    n: int | None = None
    keep: int | None = None

    def plot(self) -> Figure:
        """Accuracy against K, the baseline dashed and the cliff marked ("From Redundancy to
        Relevance" Fig. 5)."""
        return plot_cliff(self.frame, self.baseline, self.cliff, n=self.n, keep=self.keep)


def cliff_layer(
    model,
    samples: Sequence[Sample],
    keep: int = 0,
    layers: Iterable[int] | None = None,
    *,
    tolerance: float = 0.02,
    mode: str = "mask",
    template: str = "auto",
    progress: bool = True,
    convention: str = "paper",
) -> CliffResult:
    """Find the information-flow cliff layer: accuracy as truncation to ``keep`` image tokens
    starts at each layer K, and the first K from which accuracy no longer changes.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        samples: Dataset samples.
        keep: Image tokens kept from layer K on (0: all removed).
        layers: Values of K (all layers by default).
        tolerance: Absolute accuracy tolerance of "no longer changes".
        mode: Truncation mode (see :class:`~mmlens.pruning.Truncate`).
        template: Prompt template.
        progress: Show a progress bar.
        convention: ``"paper"`` or ``"released_code"`` (a truncated token's key hidden from its own
            row too, and generation re-ranked at every token; docs/conventions.md).

    References: "From Redundancy to Relevance" §3.4, Fig. 5.
    """
    n = model.cfg.n_layers
    layers = [check_layer(layer, n) for layer in (layers if layers is not None else range(n))]
    with torch.no_grad():
        baseline = evaluate(model, samples, template=template).accuracy
        acc = []
        for layer in tqdm(layers, desc="cliff", disable=not progress):
            truncate = Truncate(layer, keep, mode)
            acc.append(evaluate(model, samples, truncate, template=template, convention=convention).accuracy)
    curve = pd.DataFrame({"layer": layers, "accuracy": acc})
    within = [abs(a - baseline) <= tolerance for a in acc]
    cliff = next((layers[i] for i in range(len(layers)) if all(within[i:])), None)
    return CliffResult(curve, baseline, cliff, tolerance, n=len(samples), keep=keep)
