"""Greedy-answer accuracy, with or without a pruning policy, and the cliff-layer sweep (methods.md §7)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from mmlens.data.sample import Sample
from mmlens.errors import check_layer
from mmlens.pruning import Truncate
from mmlens.samples import sample_inputs, score


def evaluate(
    model, samples: Sequence[Sample], prune=None, *, template: str = "vicuna_v1", max_new_tokens: int = 4, progress: bool = False
) -> pd.DataFrame:
    """The greedy answer of every sample, its benchmark score and whether it is correct (score 1).

    The score is the sample's own metric (see :func:`mmlens.samples.score`)."""
    tok = model.processor.tokenizer
    rows = []
    for s in tqdm(samples, desc="evaluate", disable=not progress):
        inputs = sample_inputs(model, s, template)
        out = model.generate(inputs, max_new_tokens=max_new_tokens, prune=prune)
        answer = tok.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True).strip()
        value = score(s, answer)
        rows.append((s.id, s.task, s.answer, answer, value, value == 1.0))
    return pd.DataFrame(rows, columns=["sample", "task", "gold", "prediction", "score", "correct"])


@dataclass(frozen=True)
class CliffResult:
    """Accuracy when image tokens are truncated from layer K on, for each K.

    Attributes:
        curve: Columns ``layer``, ``accuracy``.
        baseline: Accuracy without truncation.
        cliff: First K from which accuracy stays within ``tolerance`` of the baseline (None if never).
        tolerance: Absolute accuracy tolerance.
    """

    curve: pd.DataFrame
    baseline: float
    cliff: int | None
    tolerance: float


def cliff_layer(
    model,
    samples: Sequence[Sample],
    keep: int = 0,
    layers: Iterable[int] | None = None,
    *,
    tolerance: float = 0.02,
    mode: str = "mask",
    template: str = "vicuna_v1",
    progress: bool = True,
) -> CliffResult:
    """Find the information-flow cliff layer: accuracy as truncation to ``keep`` image tokens
    starts at each layer K, and the first K from which accuracy no longer changes.

    References: seed 001 §3.4, Fig. 5.
    """
    n = model.cfg.n_layers
    layers = [check_layer(layer, n) for layer in (layers if layers is not None else range(n))]
    with torch.no_grad():
        baseline = float(evaluate(model, samples, template=template)["correct"].mean())
        acc = []
        for layer in tqdm(layers, desc="cliff", disable=not progress):
            acc.append(float(evaluate(model, samples, Truncate(layer, keep, mode), template=template)["correct"].mean()))
    curve = pd.DataFrame({"layer": layers, "accuracy": acc})
    within = [abs(a - baseline) <= tolerance for a in acc]
    cliff = next((layers[i] for i in range(len(layers)) if all(within[i:])), None)
    return CliffResult(curve, baseline, cliff, tolerance)
