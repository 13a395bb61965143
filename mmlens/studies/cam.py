"""Does Grad-CAM point at the object the question names? Hit rate per layer over samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from mmlens.analysis.gradcam import grad_cam
from mmlens.data.sample import Sample
from mmlens.inputs import sample_inputs
from mmlens.result import FrameResult
from mmlens.viz.saliency import plot_hit_rate


@dataclass(frozen=True)
class CamHitResult(FrameResult):
    """Per sample and layer: whether the heat map's peak patch overlaps a box the question names."""

    COLUMNS: ClassVar[dict[str, str]] = {
        "sample": "sample id",
        "task": "question type",
        "layer": "layer of the tower",
        "hit": "1.0 if the peak patch overlaps a named box, 0.0 if not, NaN for an all-zero map",
        "chance": "share of the grid's patches that overlap a named box (a random peak's hit rate)",
    }

    def per_layer(self) -> pd.DataFrame:
        """Hit rate (NaN skipped) and chance per layer (columns layer, hit_rate, chance, n)."""
        g = self.frame.groupby("layer")
        return g.agg(hit_rate=("hit", "mean"), chance=("chance", "mean"), n=("hit", "count")).reset_index()

    def plot(self) -> Figure:
        """Hit rate per layer against chance ("From Redundancy to Relevance (v1)" §3.1)."""
        return plot_hit_rate(self.per_layer())


def cam_hit_rate(
    model,
    samples: Sequence[Sample],
    layers: Sequence[int] | None = None,
    tower: str = "decoder",
    variant: str | None = None,
    smooth: tuple[int, float] | None = None,
    template: str = "auto",
    *,
    progress: bool = False,
    target_rows: str | None = None,
    convention: str = "paper",
) -> CamHitResult:
    """Per sample and layer: whether the Grad-CAM peak patch overlaps a box the question names.

    Samples without boxes are skipped. The answer is the gold answer, teacher-forced. The
    ``chance`` column is the hit rate of a peak drawn uniformly at random, the baseline.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        samples: Dataset samples (those with boxes count).
        layers, tower, variant, smooth, target_rows: As :func:`~mmlens.analysis.grad_cam`.
        template: Prompt template.
        progress: Show a progress bar.
        convention: ``"paper"`` or ``"released_code"`` (docs/conventions.md); explicit options win.
    """
    rows = []
    for s in tqdm(samples, desc="cam hit rate", disable=not progress):
        if not s.boxes:
            continue
        inputs = sample_inputs(model, s, template)
        cam = grad_cam(model, inputs, answer=s.answer, layers=layers, tower=tower, variant=variant, smooth=smooth,
                       target_rows=target_rows, convention=convention)
        grid = inputs.image_grid
        related = torch.zeros(grid.views[0].grid, grid.views[0].grid, dtype=torch.bool)
        sel = inputs.groups["related"][0] & (grid.row[0] >= 0)
        related[grid.row[0, sel], grid.col[0, sel]] = True
        chance = related.float().mean().item()
        for i, layer in enumerate(cam.layers):
            heat = cam.raw[0, i]
            peak = int(heat.flatten().argmax())
            # An all-zero map has no peak: the last decoder layer's MLP input at image positions
            # cannot reach the answer (no attention follows it), so its gradient is exactly 0.
            hit = float(related.flatten()[peak]) if heat.max() > 0 else float("nan")
            rows.append((s.id, s.task, layer, hit, chance))
    return CamHitResult(pd.DataFrame(rows, columns=list(CamHitResult.COLUMNS)))
