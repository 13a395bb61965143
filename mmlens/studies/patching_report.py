"""The files of ``mmlens patch``: tables, figures and ``summary.md`` of a patching study."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from mmlens.data.sample import Sample
from mmlens.inputs import sample_inputs
from mmlens.patching import activation_patch
from mmlens.studies.patching import REGIONS, PatchingStudyResult, corrupt_sample
from mmlens.studies.run import RunFolder


def region_table(per_region: pd.DataFrame, hook: str) -> pd.DataFrame:
    """Layer × region means of one hook (regions in :data:`REGIONS` order)."""
    sub = per_region[per_region["hook"] == hook]
    grid = sub.pivot_table(index="layer", columns="region", values="value")
    return grid.reindex(columns=[r for r in REGIONS if r in grid.columns])


def summary_lines(result: PatchingStudyResult, skipped: pd.DataFrame, settings: Mapping[str, Any]) -> list[str]:
    """``summary.md``: settings, counts, and per hook the layer × region means and each layer's peak."""
    per_region = result.per_region()
    n = result.frame["sample"].nunique() if len(result.frame) else 0
    lines = ["# Activation patching", "", "Denoising: each clean activation written into the corrupt run, one layer",
             "and position at a time; value = (patched - corrupt) / (clean - corrupt) of the logit difference",
             "between the clean and the corrupt answers (1 = the clean answer fully restored).", ""]
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    lines += [f"- samples patched: {n}; skipped: {len(skipped)}" + (" (see skipped.csv)" if len(skipped) else ""), ""]
    for hook in dict.fromkeys(per_region["hook"]):
        grid = region_table(per_region, hook)
        lines += [f"## {hook}: mean value per layer and region", "", "| layer | " + " | ".join(grid.columns) + " |",
                  "|---" * (len(grid.columns) + 1) + "|"]
        lines += [f"| {layer} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for layer, row in grid.iterrows()]
        peaks = ", ".join(f"layer {layer}: {row.idxmax()}" for layer, row in grid.iterrows() if row.notna().any())
        lines += ["", f"Region restoring most per layer: {peaks}.", ""]
    lines += ["Files: patching.csv (every sample, hook, layer, position), per_region.csv, patching.png (means per",
              "region), example_<hook>.png (the first patched sample, positions on the image), skipped.csv."]
    return lines


def write_outputs(
    folder: RunFolder, model: Any, samples: Sequence[Sample], tables: Mapping[str, pd.DataFrame], corrupt: str,
    hooks: Sequence[str], settings: Mapping[str, Any], *, template: str = "auto", batch_size: int = 16,
) -> str:
    """Write the CSVs, figures and ``summary.md`` of a finished run; returns the summary text."""
    result = PatchingStudyResult(tables["patching"])
    skipped = tables["skipped"]
    folder.write_csv("patching.csv", result.to_dataframe())
    folder.write_csv("per_region.csv", result.per_region())
    folder.write_csv("skipped.csv", skipped)
    folder.write_figure("patching.png", result.plot())
    done = set(result.frame["sample"])
    example = next((s for s in samples if s.id in done), None)
    if example is not None:
        edited, _ = corrupt_sample(example, corrupt)
        clean, bad = sample_inputs(model, example, template), sample_inputs(model, edited, template)
        for hook in hooks:
            res = activation_patch(model, clean, bad, hook=hook, batch_size=batch_size)
            folder.write_figure(f"example_{hook}.png", res.plot(example.load_image(), title=f"{example.id}: {hook} ({corrupt})"))
    text = "\n".join(summary_lines(result, skipped, settings)) + "\n"
    folder.write("summary.md", text)
    return text
