"""The layer-wise phenomena of "Cross-modal Information Flow" on a shapes model, per question type.

On held-out samples (split 0 or 1, never used in training) it measures, per question type:

* accuracy: the clean model's top token at ``last`` against the one-word answer;
* the logit lens (``final_norm="all"``) of the answer's lower-case and capitalised forms at every
  layer boundary, and the first boundary where the lower-case form is the more probable one
  (the paper's capitalisation finding: ``red`` rises in middle layers before ``Red`` wins late);
* the knockout effect of four flows per window centre layer, and the layer where each peaks
  (most negative mean relative change of the predicted token's probability).

Lens and knockout means are over correctly answered samples, as in the paper (§4). Prints
Markdown tables.

Usage:
    python benchmarks/shapes_phenomena.py [--model shapes-llava] [--n 70] [--split 0] [--window 3]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from mmlens import HookedVLM, sample_inputs
from mmlens.analysis import knockout_sweep, logit_lens
from mmlens.data.shapes import QUESTION_TYPES, shapes_dataset

FLOWS = ("image->question", "related->question", "question->last", "image->last")


def markdown(df: pd.DataFrame) -> str:
    """``df`` as a Markdown table (no tabulate dependency)."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def measure(model, samples, window: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-sample lens and knockout frames, tagged with ``task`` and ``correct``."""
    lens, knock = [], []
    tok = model.processor.tokenizer
    for i, sample in enumerate(samples):
        inputs = sample_inputs(model, sample)
        ko = knockout_sweep(model, inputs, FLOWS, window_size=window, allow_empty=True).to_dataframe()  # Exist: no related
        correct = bool(ko["token"].iloc[0] == tok.convert_tokens_to_ids(sample.answer))
        tags = {"sample": i, "task": sample.task, "correct": correct}
        knock.append(ko.assign(**tags))
        lens.append(logit_lens(model, inputs, words=[sample.answer], final_norm="all").to_dataframe().assign(**tags))
    return pd.concat(lens, ignore_index=True), pd.concat(knock, ignore_index=True)


def lens_table(lens: pd.DataFrame) -> pd.DataFrame:
    """Per type: mean p(lower) and p(capitalised) per boundary, and where lower wins in the middle.

    "Middle" is the outputs of blocks ``0 .. L-2`` (boundaries ``1 .. L-1``): the embeddings and
    the model's own output are left out.
    """
    ok = lens[lens["correct"]]
    mean = ok.pivot_table(index=["task", "boundary"], columns="variant", values="prob")
    wide = ok.pivot_table(index=["task", "sample", "boundary"], columns="variant", values="prob")
    last = int(lens["boundary"].max())
    middle = wide[(wide.index.get_level_values("boundary") > 0) & (wide.index.get_level_values("boundary") < last)]
    sample_wins = (middle["lower"] > middle["capitalised"]).groupby(level=["task", "sample"]).any()
    rows = []
    for task, curve in [*mean.groupby(level="task"), ("all", mean.groupby(level="boundary").mean())]:
        curve = curve.droplevel("task") if "task" in curve.index.names else curve
        mid = curve.loc[1 : last - 1]
        wins = mid.index[mid["lower"] > mid["capitalised"]].tolist()
        peak = mid["lower"].idxmax()
        share = sample_wins.mean() if task == "all" else sample_wins.loc[task].mean()
        rows.append({
            "type": task,
            "lower > cap (mean) at boundary": ", ".join(map(str, wins)) or "never",
            "p lower / cap there": f"{mid.loc[wins[0], 'lower']:.3f} / {mid.loc[wins[0], 'capitalised']:.3f}" if wins else "",
            "samples with lower > cap mid": f"{share:.0%}",
            "max mid p lower (boundary)": f"{mid.loc[peak, 'lower']:.3f} ({peak})",
            "final p cap": f"{curve['capitalised'].iloc[-1]:.3f}",
            "p lower per boundary": " ".join(f"{p:.2f}" for p in curve["lower"]),
            "p cap per boundary": " ".join(f"{p:.2f}" for p in curve["capitalised"]),
        })  # fmt: skip
    return pd.DataFrame(rows)


def knockout_table(knock: pd.DataFrame) -> pd.DataFrame:
    """Per type and flow: mean relative change per centre layer and the peak layer."""
    mean = knock[knock["correct"]].groupby(["task", "flow", "layer"])["relative_change"].mean()
    both = pd.concat([mean, mean.groupby(["flow", "layer"]).mean().pipe(lambda s: pd.concat({"all": s}, names=["task"]))])
    rows = []
    for (task, flow), curve in both.groupby(level=["task", "flow"]):
        curve = curve.droplevel(["task", "flow"])
        peak = int(curve.idxmin()) if curve.min() <= -1.0 else "—"  # no layer matters by 1% or more
        rows.append({"type": task, "flow": flow, "peak layer": peak, "peak Δ%": f"{curve.min():.1f}",
                     "Δ% per layer": " ".join(f"{v:.0f}" for v in curve)})  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-llava", help="registered name or checkpoint directory")
    parser.add_argument("--n", type=int, default=70, help="held-out samples (types round-robin)")
    parser.add_argument("--split", type=int, default=0, choices=(0, 1), help="held-out split")
    parser.add_argument("--window", type=int, default=3, help="knockout window (layers)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = HookedVLM.from_pretrained(args.model)
    samples = shapes_dataset(args.n, seed=args.split, types=QUESTION_TYPES)
    lens, knock = measure(model, samples, args.window)
    per_sample = knock.drop_duplicates("sample")
    accuracy = per_sample.groupby("task")["correct"].agg(["size", "mean"]).reindex(list(QUESTION_TYPES))
    accuracy.loc["all"] = [len(per_sample), per_sample["correct"].mean()]
    print(f"## {args.model}: split {args.split}, {args.n} samples, {model.cfg.n_layers} layers, "
          f"window {args.window}, {time.perf_counter() - start:.0f} s\n")  # fmt: skip
    print(markdown(accuracy.rename(columns={"size": "n", "mean": "accuracy"}).rename_axis("type").reset_index()), "\n")
    print("Logit lens at `last` (correct samples; boundary 0 = embeddings, l + 1 = after block l):\n")
    print(markdown(lens_table(lens)), "\n")
    print(f"Knockout, mean relative change of p(prediction) (correct samples; window {args.window}):\n")
    print(markdown(knockout_table(knock)))


if __name__ == "__main__":
    main()
