"""The whole seed-002 / seed-000 flow study over a dataset, resumable, written to a folder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from mmlens.analysis.knockout_sweep import PAPER_FLOWS, KnockoutResult, knockout_sweep
from mmlens.analysis.lens import logit_lens
from mmlens.analysis.shares import attention_share
from mmlens.data.sample import Sample
from mmlens.samples import greedy_answer, sample_inputs, score

TABLES = ("knockout", "lens", "shares")


def _append(path: Path, df: pd.DataFrame) -> None:
    df.to_csv(path, mode="a", header=not path.exists(), index=False)


def run_flow_study(
    model,
    samples: Sequence[Sample],
    out: str | Path,
    *,
    window_size: int | None = None,
    template: str = "vicuna_v1",
    filter_correct: bool = False,
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """Knockouts of the paper's six flows, the logit lens and attention shares for every sample.

    Results are appended to ``out/{knockout,lens,shares}.csv`` sample by sample and finished
    samples are listed in ``out/done.json``, so an interrupted study resumes where it stopped.

    Returns:
        The three tables (all samples so far).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done_file = out / "done.json"
    done = set(json.loads(done_file.read_text())) if done_file.exists() else set()
    todo = [s for s in samples if s.id not in done]
    for sample in tqdm(todo, desc="flow study", disable=not progress):
        inputs = sample_inputs(model, sample, template)
        answer = greedy_answer(model, inputs)
        correct = score(sample, answer) == 1.0
        if correct or not filter_correct:
            ko = knockout_sweep(model, [sample], PAPER_FLOWS, window_size, template=template, progress=False).df
            words = [sample.answer] + ([sample.false_option] if sample.false_option else [])
            lens = logit_lens(model, inputs, words=words).to_dataframe()
            shares = attention_share(model, inputs).to_dataframe()
            for name, df in (("knockout", ko), ("lens", lens), ("shares", shares)):
                df = df.assign(sample=sample.id, task=sample.task, correct=correct)
                if name == "lens":
                    df["role"] = df["word"].map({sample.answer: "answer"}).fillna("false option")
                _append(out / f"{name}.csv", df)
        done.add(sample.id)
        done_file.write_text(json.dumps(sorted(done)))
    return {name: pd.read_csv(out / f"{name}.csv") for name in TABLES if (out / f"{name}.csv").exists()}


def write_report(tables: dict[str, pd.DataFrame], out: str | Path, example: tuple | None = None) -> Path:
    """Figures (PNG) and a short Markdown summary of a finished study."""
    from mmlens.viz import plot_knockout, plot_lens, plot_shares

    out = Path(out)
    lines = ["# Flow study", ""]
    if "knockout" in tables:
        ko = KnockoutResult(tables["knockout"])
        plot_knockout(ko).savefig(out / "knockout.png", dpi=120)
        summary = ko.summary()
        worst = summary.loc[summary.groupby("flow")["mean"].idxmin()]
        lines += [
            f"Samples: {tables['knockout']['sample'].nunique()}. Figure: `knockout.png`.",
            "",
            "Largest mean drop of p(prediction) per flow (window centre layer, 95% bootstrap CI):",
            "",
            "| flow | layer | mean % | CI |",
            "|---|---|---|---|",
        ]
        lines += [f"| {r.flow} | {r.layer} | {r.mean:.1f} | [{r.ci_low:.1f}, {r.ci_high:.1f}] |" for r in worst.itertuples()]
        lines.append("")
    if "lens" in tables:
        lens = tables["lens"].copy()
        lens["word"] = lens["role"]
        plot_lens(lens).savefig(out / "lens.png", dpi=120)
        final = lens[lens["boundary"] == lens["boundary"].max()].groupby(["role", "variant"])["prob"].mean()
        lines += ["Logit lens at the last position (`lens.png`), final-layer mean probability:", ""]
        lines += [f"- {role}, {variant}: {p:.3f}" for (role, variant), p in final.items()]
        lines.append("")
    if "shares" in tables:
        plot_shares(tables["shares"]).savefig(out / "shares.png", dpi=120)
        mean = tables["shares"].groupby("group")["share"].mean()
        lines += ["Attention share of the last position, mean over layers (`shares.png`):", ""]
        lines += [f"- {g}: {v:.3f}" for g, v in mean.items()]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return out / "summary.md"


def image_attention_example(model, sample: Sample, out: str | Path, template: str = "vicuna_v1") -> None:
    """The last row's head-mean attention over the image, for a few layers, drawn on the image."""
    import matplotlib.pyplot as plt

    from mmlens.viz import overlay, position_heat_to_image

    inputs = sample_inputs(model, sample, template)
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_pattern"))
    n = model.cfg.n_layers
    layers = sorted({0, n // 3, 2 * n // 3, n - 1})
    fig, axes = plt.subplots(1, len(layers), figsize=(3 * len(layers), 3.2))
    image = sample.load_image()
    for ax, layer in zip(axes, layers):
        row = cache["pattern", layer][0, :, -1].mean(0)
        overlay(image, position_heat_to_image(inputs, row), ax=ax, title=f"layer {layer}")
    fig.suptitle(sample.question, fontsize=9)
    fig.savefig(Path(out) / "image_attention.png", dpi=120)
