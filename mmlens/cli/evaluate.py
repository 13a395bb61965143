"""Bodies of the accuracy commands: ``eval`` (with the papers' filters) and ``prune-eval``."""

from __future__ import annotations

import argparse

from mmlens.cli.studies import setup
from mmlens.errors import MMLensError

FILTERED_COLUMNS = ["sample", "reason"]
"""``filtered.csv`` of ``mmlens eval``: each sample a filter dropped and why."""
PSEUDO_FILTERED = "answered correctly without the image: --pseudo-filter"
WRONG_FILTERED = "answered wrongly: --filter-correct"


def prune_eval(args: argparse.Namespace) -> int:
    import statistics
    import time

    import pandas as pd
    import torch

    from mmlens.inputs import sample_inputs
    from mmlens.pruning import flops, with_convention
    from mmlens.studies import EvalResult, evaluate
    from mmlens.studies.summaries import prune_eval_summary

    model, prep, folder = setup(args)
    samples, policy, label = prep.samples, with_convention(prep.policy, args.convention), prep.policy_label

    def one(s):
        return {"base": evaluate(model, [s], template=args.template).frame,
                "pruned": evaluate(model, [s], policy, policy=label, template=args.template,
                                   convention=args.convention).frame}  # fmt: skip

    tables = folder.run(samples, one, {"base": list(EvalResult.COLUMNS), "pruned": list(EvalResult.COLUMNS)}, desc="prune-eval")
    if not folder.is_main:
        return 0
    base, pruned = EvalResult(tables["base"]), EvalResult(tables["pruned"])
    inputs = sample_inputs(model, samples[0], args.template)
    n_image = int(inputs.groups["image"].sum())
    n_text = inputs.input_ids.shape[1] - n_image

    def latency(prune) -> float:
        times = []
        with torch.no_grad():
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                model(inputs, prune=prune)
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    latency(None)  # warm-up
    t_base, t_pruned = latency(None), latency(policy)
    rows = []
    for name, pol, acc, t in (("baseline", None, base, t_base), (label, policy, pruned, t_pruned)):
        rows.append({
            "policy": name, "accuracy": acc.accuracy,
            "flops_estimate": flops(model.vlm_cfg, n_text, n_image, pol, method="estimate"),
            "flops_exact": flops(model.vlm_cfg, n_text, n_image, pol, method="exact"),
            "prefill_ms": t * 1000,
        })
    table = pd.DataFrame(rows)
    table["flops_estimate_ratio"] = table["flops_estimate"] / table["flops_estimate"][0]
    table["flops_exact_ratio"] = table["flops_exact"] / table["flops_exact"][0]
    table["latency_ratio"] = table["prefill_ms"] / table["prefill_ms"][0]
    folder.write_csv("prune_eval.csv", table)  # prefill_ms and latency_ratio are timings: they differ run to run
    folder.write_csv("predictions.csv", EvalResult.concat([base, pruned]).to_dataframe())
    settings = {"model": args.model, "data": args.data, "template": args.template, "convention": args.convention,
                "policy": label, "repeats": args.repeats}  # fmt: skip
    summary = prune_eval_summary(table, n=len(samples), n_text=n_text, n_image=n_image, settings=settings,
                                 records_skipped=len(prep.skipped))  # fmt: skip
    folder.write("summary.md", summary)
    print(summary)
    print(f"wrote {folder.out}/: prune_eval.csv predictions.csv, summary.md")
    return 0


def eval_(args: argparse.Namespace) -> int:
    import pandas as pd

    from mmlens.inputs import answer_without_image, score
    from mmlens.studies import EvalResult, evaluate
    from mmlens.studies.summaries import eval_summary

    model, prep, folder = setup(args)

    def dropped(s, reason: str) -> dict:
        return {"filtered": pd.DataFrame([[s.id, reason]], columns=FILTERED_COLUMNS)}

    def one(s):
        # "Unraveling the Shift" App. B: drop samples answered correctly without the image
        if args.pseudo_filter and score(s, answer_without_image(model, s, args.template)) >= 1:
            return dropped(s, PSEUDO_FILTERED)
        base = evaluate(model, [s], template=args.template).frame
        if args.filter_correct and not base["correct"].iloc[0]:  # "Cross-modal Information Flow" §4
            return dropped(s, WRONG_FILTERED)
        if not prep.policy:
            return {"base": base}
        pruned = evaluate(model, [s], prep.policy, policy=prep.policy_label, template=args.template, convention=args.convention)
        return {"base": base, "pruned": pruned.frame}

    columns = {"base": list(EvalResult.COLUMNS), "pruned": list(EvalResult.COLUMNS), "filtered": FILTERED_COLUMNS}
    tables = folder.run(prep.samples, one, columns, desc="evaluate")
    if not folder.is_main:
        return 0
    n, filtered = len(prep.samples), tables["filtered"]
    reasons = [r for r, on in ((PSEUDO_FILTERED, args.pseudo_filter), (WRONG_FILTERED, args.filter_correct)) if on]
    skipped = {r: int((filtered["reason"] == r).sum()) for r in reasons}
    if tables["base"].empty:
        why = "; ".join(f"{k} {r}" for r, k in skipped.items())
        raise MMLensError(f"no sample of {n} passed --pseudo-filter/--filter-correct ({why}): nothing to score.")
    unrecorded = n - tables["base"]["sample"].nunique() - sum(skipped.values())
    if unrecorded:  # resumed from a journal written before filtered samples were recorded
        skipped["dropped by a filter; the journal does not say which"] = unrecorded
    frames = [tables["base"]] + ([tables["pruned"]] if prep.policy else [])
    preds = EvalResult(pd.concat(frames, ignore_index=True))
    folder.write_csv("predictions.csv", preds.to_dataframe())
    folder.write_csv("filtered.csv", filtered)
    table = preds.summary()
    folder.write_csv("accuracy.csv", table)
    folder.write_figure("accuracy.png", preds.plot())
    settings = {"model": args.model, "data": args.data, "template": args.template, "convention": args.convention,
                "policy": prep.policy_label or "none", "pseudo_filter": args.pseudo_filter,
                "filter_correct": args.filter_correct}  # fmt: skip
    summary = eval_summary(table, n=n, skipped=skipped, settings=settings, records_skipped=len(prep.skipped))
    folder.write("summary.md", summary)
    print(summary)
    print(f"wrote {folder.out}/: predictions.csv accuracy.csv filtered.csv, accuracy.png, summary.md")
    return 0
