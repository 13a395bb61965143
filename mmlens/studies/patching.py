"""Activation patching over a dataset: corrupt each sample, patch clean into corrupt, pool by region.

Each sample gets a counterfactual image with the same token layout (a recoloured, moved or
removed object, or a blurred box: :mod:`mmlens.patching.counterfactuals`), then
:func:`~mmlens.patching.activation_patch` patches every layer and position of each hook. Positions
differ between samples, so each is also labelled with its region (the changed object's patches,
the other image patches, the question, the last position, the rest of the text); averaged per
region, samples combine. References: "Towards Best Practices of Activation Patching" (denoising,
logit difference); "Cross-modal Information Flow" (the object → question → last story).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import pandas as pd
import torch
from tqdm.auto import tqdm

from mmlens.data.sample import Sample
from mmlens.errors import MMLensError
from mmlens.inputs import MMInputs, sample_inputs
from mmlens.patching import DegenerateMetricError, PatchingResult, activation_patch, blur_box, move, recolour, remove
from mmlens.patching.sites import get_site
from mmlens.result import FrameResult

CORRUPTIONS = ("recolour", "move", "remove", "blur")
"""Counterfactuals a study can make (``blur`` works on any sample with a box)."""

REGIONS = ("object", "image", "question", "last", "text")
"""Position regions, in plot order: the changed object's image patches (old and new place),
the other image patches, the question, the last position, every other text position."""


@dataclass(frozen=True)
class PatchingStudyResult(FrameResult):
    """Activation patching of every sample, one row per (sample, hook, layer, position).

    Attributes:
        frame: The tidy table (columns :attr:`COLUMNS`).
    """

    COLUMNS: ClassVar[dict[str, str]] = {
        **{k: v for k, v in PatchingResult.COLUMNS.items() if k != "axis"},
        "region": f"where the position lies: one of {', '.join(REGIONS)}",
        "corrupt": f"the counterfactual: one of {', '.join(CORRUPTIONS)}",
        "sample": "sample id",
        "task": "question type",
    }

    def per_region(self) -> pd.DataFrame:
        """Mean normalised value per hook, layer and region (columns ``hook, layer, region, value, n``)."""
        f = self.frame
        if f.empty:
            return pd.DataFrame(columns=["hook", "layer", "region", "value", "n"])
        out = f.groupby(["hook", "layer", "region"], sort=False)["value"].agg(["mean", "count"]).reset_index()
        out.columns = ["hook", "layer", "region", "value", "n"]
        return out

    def plot(self, title: str | None = None) -> Any:
        """Layer × region heat map of the mean normalised value, one panel per hook."""
        from mmlens.viz.patching import plot_region_means

        return plot_region_means(self.per_region(), list(REGIONS), title=title or "activation patching, mean per region")


def corrupt_sample(sample: Sample, corrupt: str) -> tuple[Sample, list[tuple[int | float, ...]]]:
    """The counterfactual of ``sample`` and the pixel boxes it changed.

    Raises:
        MMLensError: an unknown corruption; ``blur`` of a sample without boxes.
        CounterfactualError: the shapes-world edit is impossible for this sample.
    """
    if corrupt not in CORRUPTIONS:
        raise MMLensError(f"corrupt must be one of {CORRUPTIONS}, not {corrupt!r}.")
    if corrupt == "blur":
        if not sample.boxes:
            raise MMLensError(f"sample {sample.id!r} has no boxes: blur needs the box of an object the question names.")
        box = tuple(float(v) for v in next(iter(sample.boxes.values())))
        image = blur_box(sample.load_image(), tuple(int(round(v)) for v in box))
        return replace(sample, id=f"{sample.id}-blur", image=image), [box]
    edited, change = {"recolour": recolour, "move": move, "remove": remove}[corrupt](sample)
    return edited, [b for b in (change.old_box, change.new_box) if b is not None]


def regions(inputs: MMInputs, boxes: Sequence[tuple[int | float, ...]]) -> list[str]:
    """The region (:data:`REGIONS`) of every position of batch-1 ``inputs``; ``boxes`` are the
    changed pixel boxes ``(x0, y0, x1, y1)``."""
    groups = inputs.groups
    image = groups["image"][0]
    obj = torch.zeros_like(image)
    for box in boxes:
        obj |= inputs.patches_in_box(box)[0]
    question = groups["question"][0] if "question" in groups else torch.zeros_like(image)
    last = groups["last"][0]
    out = []
    for p in range(image.shape[0]):
        out.append("last" if last[p] else "object" if obj[p] else "image" if image[p] else "question" if question[p] else "text")
    return out


def patch_sample(
    model: Any, sample: Sample, corrupt: str, hooks: Sequence[str], *, template: str = "auto",
    batch_size: int = 16, answers: tuple[int | str, int | str] | None = None,
) -> tuple[pd.DataFrame, str | None]:
    """One sample's rows (columns of :class:`PatchingStudyResult`), or no rows and why it was skipped.

    The metric is the logit difference between ``answers`` (default: the clean and the corrupt
    run's top tokens); a sample whose corruption leaves the top token unchanged has no such
    difference and is skipped.
    """
    for hook in hooks:
        site = get_site(hook)
        if site.per_head or site.tower != "decoder":
            raise MMLensError(f"patching_study pools prompt positions by region; {hook!r} is not a decoder position site: "
                              "use resid_pre, resid_mid, resid_post, attn_out or mlp_out.")
    edited, boxes = corrupt_sample(sample, corrupt)
    clean, bad = sample_inputs(model, sample, template), sample_inputs(model, edited, template)
    where = regions(clean, boxes)
    frames = []
    for hook in hooks:
        try:
            res = activation_patch(model, clean, bad, hook=hook, batch_size=batch_size, answers=answers)
        except DegenerateMetricError:
            return pd.DataFrame(columns=list(PatchingStudyResult.COLUMNS)), "the corruption leaves the predicted token unchanged"
        df = res.to_dataframe().drop(columns="axis")
        frames.append(df.assign(region=[where[i] for i in df["index"]], corrupt=corrupt, sample=sample.id, task=sample.task))
    return pd.concat(frames, ignore_index=True)[list(PatchingStudyResult.COLUMNS)], None


def patching_study(
    model: Any,
    samples: Sequence[Sample],
    corrupt: str = "recolour",
    hooks: Sequence[str] = ("resid_pre",),
    *,
    template: str = "auto",
    batch_size: int = 16,
    answers: tuple[int | str, int | str] | None = None,
    progress: bool = True,
) -> PatchingStudyResult:
    """:func:`~mmlens.patching.activation_patch` (denoising) on every sample and hook.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        samples: Dataset samples (shapes-world samples for ``recolour|move|remove``; any sample
            with a box for ``blur``).
        corrupt: The counterfactual (:data:`CORRUPTIONS`).
        hooks: Position sites to patch (``resid_pre``, ``attn_out``, ...).
        template: Prompt template.
        batch_size: Patched runs per forward.
        answers: ``(clean, corrupt)`` answer tokens of the logit difference (default: each run's
            top token, per sample).
        progress: Show a progress bar.

    Returns:
        One row per sample, hook, layer and position; samples whose corruption does not change
        the predicted token are left out (with default ``answers`` their logit difference is
        undefined).

    Raises:
        MMLensError: an unknown corruption or a head site.
        CounterfactualError: a sample cannot be edited that way.
    """
    frames = []
    for sample in tqdm(samples, desc=f"patching ({corrupt})", disable=not progress):
        frame, _ = patch_sample(model, sample, corrupt, hooks, template=template, batch_size=batch_size, answers=answers)
        if len(frame):
            frames.append(frame)
    if not frames:
        return PatchingStudyResult(pd.DataFrame(columns=list(PatchingStudyResult.COLUMNS)))
    return PatchingStudyResult(pd.concat(frames, ignore_index=True))
