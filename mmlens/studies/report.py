"""A finished flow study written up: figures (PNG) and a Markdown summary that reads them.

The summary states what each figure shows, over how many samples and with which settings, and
what was left out: samples ``filter_correct`` dropped, and per flow the samples whose source or
target group is empty (e.g. ``related`` for a sample without boxes), as "skipped: k of n samples
(reason)" next to the n used. It reports the logit lens where the two spellings of a word peak (not
only at the final layer, where the capitalised answer wins by training), and calls a knocked-out
flow "no effect" when the 95% interval of its mean change covers 0 at every layer.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure

from mmlens.analysis.knockout_sweep import PAPER_FLOWS
from mmlens.data.sample import Sample
from mmlens.inputs import sample_inputs
from mmlens.studies.flow import FlowStudyResult
from mmlens.studies.summaries import samples_lines, skipped_text
from mmlens.viz.flow import plot_lens
from mmlens.viz.image import heat_panels, position_heat_to_image


def write_report(
    result: FlowStudyResult,
    out: str | Path | None = None,
    *,
    log_lens: bool = True,
    model=None,
    example: Sample | None = None,
    template: str = "auto",
    settings: Mapping[str, object] | None = None,
    records_skipped: int = 0,
) -> Path:
    """Write ``knockout.png``, ``lens.png``, ``shares.png`` (and ``image_attention.png`` when
    ``model`` and ``example`` are given) and ``summary.md``, which describes every figure.

    Args:
        result: A finished :func:`~mmlens.studies.run_flow_study`.
        out: Folder to write into (default: the study's own folder).
        log_lens: Draw the lens on a log probability scale.
        model: The study's :class:`~mmlens.HookedVLM`, to draw the example's image attention.
        example: The sample whose image attention is drawn (see :func:`image_attention_example`).
        template: Prompt template of the example.
        settings: Run settings listed at the top of the summary (e.g. model, data, template).
        records_skipped: Malformed records ``--lenient`` dropped before the samples were drawn.

    Returns:
        The path of ``summary.md``.
    """
    out = Path(out) if out is not None else result.folder
    figures: list[str] = []
    body: list[str] = []
    ko = result.knockout
    ran = sorted(set(result.lens["sample"].astype(str)) | set(result.shares["sample"].astype(str)))
    ids = _study_ids(result, ran)
    why = "answered incorrectly, left out by filter_correct"
    left_out = f"; {skipped_text(len(ids) - len(ran), len(ids), why)}" if len(ids) > len(ran) else ""
    flows_skipped = skipped_flows(ko.frame, ran)
    if not ko.frame.empty:
        ko.plot().savefig(out / "knockout.png", dpi=120)
        frame = ko.frame
        k = int((frame["window_end"] - frame["window_start"]).max() + 1)
        per_task = frame.groupby("task")["sample"].nunique()
        short = [f"{flow} {count} of {len(ran)}" for flow, (count, _) in flows_skipped.items() if count]
        figures.append(
            f"`knockout.png`: change of p(prediction) (%) when each flow is blocked in a window of {_layers(k)} "
            f"centred on each layer (clipped at the ends), one panel per question type, mean and 95% bootstrap band; "
            f"n = {_span(per_task)} samples per panel{left_out}"
            + (f"; flows skipped for some samples (an empty group, see the table): {', '.join(short)}." if short else ".")
        )
        body += [f"## Attention knockout (window of {_layers(k)}, {frame['sample'].nunique()} samples)", ""]
        skipped = {flow: skipped_text(count, len(ran), reason) if count else "none"
                   for flow, (count, reason) in flows_skipped.items()}  # fmt: skip
        body += knockout_lines(ko.summary(), skipped)
    lens = result.lens
    if not lens.empty:
        plot_lens(lens.assign(word=lens["role"]), log=log_lens).savefig(out / "lens.png", dpi=120)
        n = lens.groupby("role")["sample"].nunique()
        figures.append(
            "`lens.png`: logit lens at the last position, mean probability of the answer and the false option per "
            f"layer boundary, lower-case dashed and capitalised solid{', log scale' if log_lens else ''}; "
            + ", ".join(f"n = {v} ({role})" for role, v in n.items()) + f"{left_out}."
        )
        body += ["## Logit lens (last position)", ""] + lens_lines(lens)
    shares = result.shares
    if not shares.empty:
        result.plot("shares").savefig(out / "shares.png", dpi=120)
        figures.append(
            "`shares.png`: attention share of the last position on each token group per layer (stacked), mean over "
            f"heads; n = {shares['sample'].nunique()} samples{left_out}."
        )
        mean = shares.groupby("group")["share"].mean()
        body += ["## Attention share of the last position, mean over layers", ""]
        body += [f"- {g}: {v:.3f}" for g, v in mean.items()] + [""]
    if model is not None and example is not None:
        path = image_attention_example(model, example, out, template)
        layers = ", ".join(map(str, example_layers(model.cfg.n_layers)))
        figures.append(
            f"`{path.name}`: the last position's attention (mean over heads) over the image at layers "
            f"{layers}, one colour scale for all panels; one sample ({example.id}: "
            f"\"{example.question}\")."
        )
    head = ["# Flow study", ""]
    if settings:
        head += ["Settings: " + ", ".join(f"{k} = {v}" for k, v in settings.items()) + ".", ""]
    head += samples_lines(len(ids), {why: len(ids) - len(ran)}, records_skipped)
    head += ["## Figures", ""] + [f"- {f}" for f in figures] + [""]
    (out / "summary.md").write_text("\n".join(head + body).rstrip() + "\n")
    return out / "summary.md"


def knockout_lines(summary: pd.DataFrame, skipped: Mapping[str, str] | None = None) -> list[str]:
    """One table row per flow: its largest significant drop (window centre, mean, 95% CI), its
    largest rise when it only raises p, or "no effect" when the CI covers 0 at every layer.

    Args:
        summary: ``KnockoutResult.summary()`` (columns flow, layer, mean, ci_low, ci_high, n).
        skipped: Flow → "skipped: k of n samples (reason)", shown in a last column; a flow
            named here that has no row in ``summary`` (skipped for every sample) reads "not run".
    """
    extra = (" skipped |", "---|") if skipped is not None else ("", "")
    lines = [
        "Largest mean change of p(prediction) per flow (window centre layer; 95% bootstrap CI). "
        '"No effect": the CI covers 0 at every layer.',
        "",
        "| flow | effect | layer | mean % | 95% CI | n |" + extra[0],
        "|---|---|---|---|---|---|" + extra[1],
    ]
    groups = dict(list(summary.groupby("flow", sort=False)))
    for flow in list(groups) + [f for f in (skipped or {}) if f not in groups]:
        tail = f" {skipped.get(flow, '')} |" if skipped is not None else ""
        if flow not in groups:
            lines.append(f"| {flow} | not run | – | – | – | 0 |{tail}")
            continue
        g = groups[flow]
        n = int(g["n"].max())
        if n < 2:
            worst = g.loc[g["mean"].idxmin()]
            lines.append(f"| {flow} | one sample, no CI | {worst.layer} | {_pct(worst['mean'])} | – | {n} |{tail}")
            continue
        drops, rises = g[g["ci_high"] < 0], g[g["ci_low"] > 0]
        if drops.empty and rises.empty:
            lines.append(f"| {flow} | no effect | – | – | – | {n} |{tail}")
            continue
        kind, pick = ("drop", drops.loc[drops["mean"].idxmin()]) if len(drops) else ("rise", rises.loc[rises["mean"].idxmax()])
        ci = f"[{_pct(pick.ci_low)}, {_pct(pick.ci_high)}]"
        lines.append(f"| {flow} | {kind} | {pick.layer} | {_pct(pick['mean'])} | {ci} | {n} |{tail}")
    return lines + [""]


def skipped_flows(knockout: pd.DataFrame, samples: Sequence[str]) -> dict[str, tuple[int, str]]:
    """Per flow of the study (the paper's six, then any other in ``knockout``): how many of
    ``samples`` have no knockout row for it, and why.

    A flow is left out of a sample when its source or target group is empty there
    (``knockout_sweep(..., allow_empty=True)``). The empty group is named when the sample's
    other flows show the flow's other group non-empty (e.g. ``related``, not ``question``, for a
    sample without boxes).

    Args:
        knockout: A flow study's knockout table (columns flow, sample).
        samples: Ids of the samples the knockouts ran on (those ``filter_correct`` kept).

    Returns:
        Flow → (number of samples skipped, reason; "" when none).
    """
    done = {flow: set(g["sample"].astype(str)) for flow, g in knockout.groupby("flow", sort=False)}
    nonempty: dict[str, set[str]] = {s: set() for s in samples}
    for flow, ids in done.items():
        for s in ids:
            nonempty.setdefault(s, set()).update(PAPER_FLOWS.get(flow, ()))
    out = {}
    for flow in dict.fromkeys([*PAPER_FLOWS, *done]):
        missing = [s for s in samples if s not in done.get(flow, set())]
        reasons: Counter[str] = Counter()
        for s in missing:
            groups = [g for g in dict.fromkeys(PAPER_FLOWS.get(flow, ())) if g not in nonempty[s]]
            reasons[f"empty {' or '.join(repr(g) for g in groups)} group" if groups else "an empty group"] += 1
        text = "; ".join(r if len(reasons) == 1 else f"{r}: {k}" for r, k in reasons.items())
        out[flow] = (len(missing), text)
    return out


def lens_lines(lens: pd.DataFrame) -> list[str]:
    """Where each spelling of each tracked word peaks, with both spellings' mean probability
    there, and the final boundary for comparison.

    Args:
        lens: A flow study's lens table (columns role, variant, boundary, prob, sample).
    """
    mean = lens.groupby(["role", "boundary", "variant"])["prob"].mean().unstack("variant")
    final = int(lens["boundary"].max())
    lines = [
        "Mean probability over samples; boundary b is the output of block b − 1 (0: the embeddings). "
        "Each row: where one spelling peaks, and both spellings' probability at that boundary.",
        "",
        "| word | peak of | boundary | p(lower) | p(capitalised) |",
        "|---|---|---|---|---|",
    ]
    for role, table in mean.groupby(level="role"):
        table = table.droplevel("role")
        for variant in ("lower", "capitalised"):
            if variant not in table:
                continue
            b = int(table[variant].idxmax())
            lines.append(f"| {role} | {variant} | {b} | {_prob(table.loc[b, 'lower'])} | {_prob(table.loc[b, 'capitalised'])} |")
        lines.append(f"| {role} | (final) | {final} | {_prob(table.loc[final, 'lower'])} | {_prob(table.loc[final, 'capitalised'])} |")
    return lines + [""]


def example_layers(n_layers: int) -> list[int]:
    """The layers :func:`image_attention_example` draws: first, a third, two thirds, last."""
    return sorted({0, n_layers // 3, 2 * n_layers // 3, n_layers - 1})


def image_attention_example(model, sample: Sample, out: str | Path, template: str = "auto") -> Path:
    """Draw the last position's head-mean attention over the image at :func:`example_layers`, on
    one shared colour scale with a colour bar, into ``out/image_attention.png``; return its path."""
    inputs = sample_inputs(model, sample, template)
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_pattern"))
    layers = example_layers(model.cfg.n_layers)
    image = sample.load_image()
    heats = [position_heat_to_image(inputs, cache["pattern", layer][0, :, -1].mean(0)) for layer in layers]
    fig: Figure = heat_panels(
        image, heats, [f"layer {layer}" for layer in layers], scale="shared",
        label="attention of the last position (head mean)", suptitle=sample.question,
    )
    path = Path(out) / "image_attention.png"
    fig.savefig(path, dpi=120)
    return path


def _study_ids(result: FlowStudyResult, ran: Sequence[str]) -> list[str]:
    """Every sample id of the study (``done.json`` of its folder), ``ran`` when it has none."""
    done = Path(result.folder) / "done.json"
    return [str(i) for i in json.loads(done.read_text())] if done.is_file() else list(ran)


def _layers(k: int) -> str:
    return f"{k} layer" if k == 1 else f"{k} layers"


def _span(counts: pd.Series) -> str:
    lo, hi = int(counts.min()), int(counts.max())
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _pct(x: float) -> str:
    """A percentage with enough digits that a small non-zero change never reads as 0.0."""
    return f"{x:+.1f}" if abs(x) >= 1 else f"{x:+.2g}"


def _prob(p: float) -> str:
    return "0" if p == 0 else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
