"""``summary.md`` of the gradient, disruption and accuracy commands: what each figure shows, over
how many samples, which samples were left out and why, and the numbers of the tables written beside it.

The flow study has its own report (:mod:`mmlens.studies.report`); the pieces shared with it
(settings, the sample count with what was skipped) live here. Every number a summary prints is
the number of a CSV file of the same run, formatted the same way, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def skipped_text(k: int, n: int, reason: str) -> str:
    """``"skipped: k of n samples (reason)"``; ``"skipped: none of n samples"`` when ``k`` is 0."""
    unit = "sample" if n == 1 else "samples"
    return f"skipped: {k} of {n} {unit} ({reason})" if k else f"skipped: none of {n} {unit}"


def head_lines(title: str, settings: Mapping[str, object] | None) -> list[str]:
    """The title and the run's settings, one line."""
    lines = [f"# {title}", ""]
    if settings:
        lines += ["Settings: " + ", ".join(f"{k} = {v}" for k, v in settings.items()) + ".", ""]
    return lines


def samples_lines(n: int, skipped: Mapping[str, int], records_skipped: int = 0) -> list[str]:
    """How many samples the study was asked for, how many it used and every reason one was left out.

    Args:
        n: Samples of the dataset the study ran on.
        skipped: Reason → number of those samples left out for it.
        records_skipped: Malformed records ``--lenient`` dropped before the samples were drawn.
    """
    left_out = sum(skipped.values())
    line = f"Samples: n = {n - left_out} used of {n}; "
    line += "; ".join(skipped_text(k, n, why) for why, k in skipped.items() if k) or skipped_text(0, n, "")
    line += "."
    if records_skipped:
        line += (f" Before that, --lenient skipped {records_skipped} malformed record(s) of the data "
                 "(listed in skipped.csv).")  # fmt: skip
    return [line, ""]


def markdown_table(frame: pd.DataFrame, formats: Mapping[str, str] | None = None) -> list[str]:
    """A Markdown table of ``frame`` (no index); ``formats``: column → format spec (e.g. ``".3g"``)."""
    formats = formats or {}

    def cell(column: str, value: object) -> str:
        if isinstance(value, float) and np.isnan(value):
            return "–"
        return format(value, formats[column]) if column in formats else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(cell(c, v) for c, v in zip(frame.columns, row)) + " |")
    return lines + [""]


def saliency_summary(
    table: pd.DataFrame,
    *,
    aggregate: str,
    convention: str,
    n: int,
    settings: Mapping[str, object] | None = None,
    records_skipped: int = 0,
) -> str:
    """The ``summary.md`` of ``mmlens saliency``.

    Args:
        table: Mean of each metric per layer in ``aggregate`` (index layer, one column per metric),
            as ``saliency.csv`` gives it.
        aggregate: The convention's aggregation (``"source"`` or ``"receiving"``).
        convention: ``"paper"`` or ``"released_code"``.
        n: Samples of the study (saliency skips none: an empty group raises).
        settings: Run settings listed at the top.
        records_skipped: Records ``--lenient`` dropped.

    References: "Unraveling the Shift" §2.2, §3.1, Fig. 2–3.
    """
    lines = head_lines("Saliency study", settings) + samples_lines(n, {}, records_skipped)
    lines += ["## Figures", ""]
    for agg, what in (("source", "the paper's formula"), ("receiving", "the released code's")):
        lines.append(
            f"- `flow_metrics_{agg}.png`: mean saliency per decoder layer, {agg} aggregation ({what}); left: flows "
            "into the last position (S_sys from the system prompt, S_img from the image, S_ins from the "
            f"instruction), right: flows out of the image (S_vv to image, S_vt to text); n = {n} samples per point."
        )
    lines += ["", f"## Mean flow metrics per layer ({aggregate} aggregation, convention {convention}; "
              "the scale follows the loss gradient, compare ratios)", ""]  # fmt: skip
    lines += markdown_table(table.reset_index(), {c: ".3g" for c in table.columns})
    return "\n".join(lines).rstrip() + "\n"


def mean_ci(x: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``x`` with a 95% bootstrap interval (NaN interval for fewer than 2 values)."""
    if len(x) < 2:
        return float(np.mean(x)) if len(x) else float("nan"), float("nan"), float("nan")
    boots = np.random.default_rng(seed).choice(x, size=(n_boot, len(x)), replace=True).mean(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(np.mean(x)), float(lo), float(hi)


def verdict(low: float, high: float, n: int, above: str, below: str) -> str:
    """``above``/``below`` when the 95% CI excludes 0, "no effect" when it covers 0."""
    if n < 2:
        return "one sample, no CI" if n == 1 else "no sample"
    return above if low > 0 else below if high < 0 else "no effect (CI covers 0)"


def cam_summary(
    hits: pd.DataFrame,
    table: pd.DataFrame,
    *,
    n: int,
    overlays: Sequence[tuple[str, str, str]],
    settings: Mapping[str, object] | None = None,
    records_skipped: int = 0,
) -> str:
    """The ``summary.md`` of ``mmlens cam``.

    Args:
        hits: ``cam_hits.csv`` (one row per sample with boxes and layer; ``hit`` NaN for an
            all-zero map).
        table: ``cam_hit_rate.csv`` (columns layer, hit rate, chance), as written.
        n: Samples of the study (those without a box of a named object are skipped).
        overlays: ``(file, sample id, question)`` of every overlay figure written.
        settings: Run settings listed at the top.
        records_skipped: Records ``--lenient`` dropped.

    References: "From Redundancy to Relevance" §3.1.
    """
    used = hits["sample"].nunique()
    lines = head_lines("Grad-CAM hit rate", settings)
    lines += samples_lines(n, {"no box of an object the question names": n - used}, records_skipped)
    lines += [
        "## Figures",
        "",
        "- `cam_hit_rate.png`: per layer, the share of samples whose heat-map peak lies on an object the question "
        "names (solid) against chance, the share of patches on such an object, i.e. a random peak's hit rate "
        f"(dashed); n = samples with a non-zero map, at most {used}.",
    ]
    lines += [f"- `{file}`: heat maps of sample {sid} (\"{question}\") over its image, one panel per layer."
              for file, sid, question in overlays]  # fmt: skip
    rows = []
    for layer, g in hits.groupby("layer"):
        scored = g.dropna(subset=["hit"])
        mean, low, high = mean_ci((scored["hit"] - scored["chance"]).to_numpy(dtype=float))
        rows.append((layer, mean, low, high, len(scored), len(g) - len(scored)))
    stats = pd.DataFrame(rows, columns=["layer", "diff", "ci_low", "ci_high", "n", "zero"])
    merged = table.merge(stats, on="layer", how="left")
    out = pd.DataFrame({
        "layer": merged["layer"], "hit rate": merged["hit rate"], "chance": merged["chance"],
        "hit − chance": merged["diff"],
        "95% CI": [f"[{lo:+.3f}, {hi:+.3f}]" if not np.isnan(lo) else "–" for lo, hi in zip(merged["ci_low"], merged["ci_high"])],
        "verdict": [verdict(lo, hi, k, "above chance", "below chance") for lo, hi, k in
                    zip(merged["ci_low"], merged["ci_high"], merged["n"])],
        "n": merged["n"],
        "skipped": [skipped_text(int(z), used, "all-zero map, no peak") for z in merged["zero"]],
    })  # fmt: skip
    lines += ["", "## Hit rate per layer", "",
              'Per-sample hit − chance, mean and 95% bootstrap CI; "no effect": the CI covers 0 (no better than a '
              "random peak).", ""]  # fmt: skip
    lines += markdown_table(out, {"hit rate": ".3f", "chance": ".3f", "hit − chance": "+.3f"}) if len(out) else [
        "No sample has a box of an object its question names: there is no hit rate to report.", ""]
    return "\n".join(lines).rstrip() + "\n"


def disruption_summary(
    result_frame: pd.DataFrame,
    per_layer: pd.DataFrame,
    d: pd.DataFrame,
    *,
    n: int,
    settings: Mapping[str, object] | None = None,
    records_skipped: int = 0,
) -> str:
    """The ``summary.md`` of ``mmlens disrupt``.

    Args:
        result_frame: ``disruption.csv`` (one row per sample, flow and layer).
        per_layer: ``disruption_per_layer.csv`` (flow, layer, label_consistency,
            score_consistency, n, E).
        d: ``d_metric.csv`` (layer, E_vv, E_vt, D).
        n: Samples of the study (disruption skips none: an empty flow raises).
        settings: Run settings listed at the top.
        records_skipped: Records ``--lenient`` dropped.

    References: "Unraveling the Shift" §3.2–3.3, Fig. 4–5, App. D.
    """
    lines = head_lines("Disruption study", settings) + samples_lines(n, {}, records_skipped)
    lines += [
        "## Figures",
        "",
        "- `disruption.png`: per disrupted layer, the label consistency (share of samples whose top-1 prediction "
        "at the last position survives) and the score consistency (mean top-5 Jaccard similarity with the clean "
        "prediction) when the image is hidden from the instruction (instruction<-image), from the image "
        "(image<-image) or from as many random text rows (random<-image, the control); third panel: "
        f"D = log(E_vv / E_vt); n = {n} samples per point.",
        "",
        "## Largest effect per flow",
        "",
        'Effect: 1 − top-5 Jaccard, mean over samples with a 95% bootstrap CI, at the layer where it is largest; '
        '"no effect": the CI covers 0 at every layer.',
        "",
    ]
    rows = []
    for flow, g in result_frame.groupby("flow", sort=False):
        cis = {layer: mean_ci(1 - x["jaccard"].to_numpy(dtype=float)) for layer, x in g.groupby("layer")}
        k = int(g.groupby("layer").size().max())
        real = {layer: ci for layer, ci in cis.items() if ci[1] > 0}  # 1 − Jaccard >= 0: an effect is a CI above 0
        if k < 2:
            layer = max(cis, key=lambda c: cis[c][0])
            rows.append((flow, "one sample, no CI", layer, f"{cis[layer][0]:.3f}", "–", k))
        elif not real:
            rows.append((flow, "no effect", "–", "–", "–", k))
        else:
            layer = max(real, key=lambda c: real[c][0])
            mean, low, high = real[layer]
            rows.append((flow, "effect", layer, f"{mean:.3f}", f"[{low:.3f}, {high:.3f}]", k))
    lines += markdown_table(pd.DataFrame(rows, columns=["flow", "effect", "layer", "1 − Jaccard", "95% CI", "n"]))
    lines += ["## Consistency per flow and layer", ""]
    lines += markdown_table(per_layer, {"label_consistency": ".3f", "score_consistency": ".3f", "E": ".3f"})
    lines += ["## D = log(E_vv / E_vt) per layer", ""]
    lines += markdown_table(d, {"E_vv": ".3f", "E_vt": ".3f", "D": ".3f"})
    return "\n".join(lines).rstrip() + "\n"


ACCURACY_FORMATS = {"mean": ".3f"}
"""How ``summary.md`` prints ``accuracy.csv`` (mean score per policy and task)."""

PRUNE_EVAL_FORMATS = {"accuracy": ".3f", "flops_estimate": ".4g", "flops_exact": ".4g", "prefill_ms": ".2f",
                      "flops_estimate_ratio": ".3f", "flops_exact_ratio": ".3f", "latency_ratio": ".3f"}  # fmt: skip
"""How ``summary.md`` prints ``prune_eval.csv``."""


def eval_summary(
    table: pd.DataFrame,
    *,
    n: int,
    skipped: Mapping[str, int],
    settings: Mapping[str, object] | None = None,
    records_skipped: int = 0,
) -> str:
    """The ``summary.md`` of ``mmlens eval``.

    Args:
        table: ``accuracy.csv`` (policy, task, mean score, n), as written.
        n: Samples of the dataset the filters ran on.
        skipped: Reason → samples a filter dropped for it (``--pseudo-filter``, ``--filter-correct``).
        settings: Run settings listed at the top.
        records_skipped: Records ``--lenient`` dropped.

    References: "Cross-modal Information Flow" §4 (correct answers only); "Unraveling the Shift"
    App. B (the pseudo-multimodal filter).
    """
    used = n - sum(skipped.values())
    lines = head_lines("Accuracy", settings) + samples_lines(n, skipped, records_skipped)
    lines += ["## Figures", "",
              f"- `accuracy.png`: mean score per question type, one bar per policy; n = {used} samples in all "
              "(per type: the n column below).", "",
              "## Mean score per policy and question type", "",
              "Score: the sample's own metric in [0, 1] (exact match, VQA accuracy, a parsed option or yes/no).", ""]  # fmt: skip
    lines += markdown_table(table, ACCURACY_FORMATS)
    return "\n".join(lines).rstrip() + "\n"


def prune_eval_summary(
    table: pd.DataFrame,
    *,
    n: int,
    n_text: int,
    n_image: int,
    settings: Mapping[str, object] | None = None,
    records_skipped: int = 0,
) -> str:
    """The ``summary.md`` of ``mmlens prune-eval``.

    Args:
        table: ``prune_eval.csv`` (one row for the baseline, one for the policy), as written.
        n: Samples scored (prune-eval filters none).
        n_text: Text positions of the prompt the FLOPs and the latency were measured on.
        n_image: Image positions of that prompt.
        settings: Run settings listed at the top.
        records_skipped: Records ``--lenient`` dropped.

    References: "Unraveling the Shift" §4 (FLOPs and latency of FastV / HiMAP).
    """
    lines = head_lines("Accuracy and cost of a pruning policy", settings) + samples_lines(n, {}, records_skipped)
    lines += ["## Accuracy, FLOPs and prefill latency", "",
              f"Accuracy: share of the n = {n} samples answered correctly. FLOPs of one prefill of the first sample's "
              f"prompt ({n_text} text + {n_image} image positions): the papers' estimate and the exact count; "
              "prefill_ms: median prefill time of that prompt (a timing: it differs run to run).", ""]  # fmt: skip
    lines += markdown_table(table, PRUNE_EVAL_FORMATS)
    return "\n".join(lines).rstrip() + "\n"
