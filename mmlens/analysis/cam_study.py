"""Does Grad-CAM point at the object the question names? Hit rate per layer over samples."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd
import torch

from mmlens.analysis.gradcam import grad_cam
from mmlens.data.sample import Sample
from mmlens.samples import sample_inputs


def cam_hit_rate(
    model,
    samples: Iterable[Sample],
    layers: Sequence[int] | None = None,
    tower: str = "decoder",
    variant: str = "standard",
    smooth: tuple[int, float] | None = None,
    template: str = "vicuna_v1",
) -> pd.DataFrame:
    """Per sample and layer: whether the heat map's peak patch overlaps a box the question names.

    Samples without boxes are skipped. The answer is the gold answer, teacher-forced.
    Returns a DataFrame with columns sample, task, layer, hit (1.0, 0.0, or NaN for an all-zero
    map), chance; ``.groupby("layer").hit.mean()`` is the hit rate per layer (NaN skipped), and ``chance`` (the share of the image grid's patches that overlap
    a named box) is the hit rate of a peak drawn uniformly at random, its baseline.
    """
    rows = []
    for s in samples:
        if not s.boxes:
            continue
        inputs = sample_inputs(model, s, template)
        cam = grad_cam(model, inputs, answer=s.answer, layers=layers, tower=tower, variant=variant, smooth=smooth)
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
    return pd.DataFrame(rows, columns=["sample", "task", "layer", "hit", "chance"])
