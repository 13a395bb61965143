"""Bodies of the dataset-study commands: ``flow``, ``saliency``, ``cam``, ``disrupt``, ``patch``.

Each checks every option, the data and the run folder before it loads the model (:func:`setup`),
computes samples through the run folder (resumable, sharded under torchrun) and lets rank 0
write the tables, figures and ``summary.md``.
"""

from __future__ import annotations

import argparse

from mmlens.errors import MMLensError


def flow(args: argparse.Namespace) -> int:
    from mmlens import HookedVLM
    from mmlens.studies import run_flow_study, write_report
    from mmlens.studies.command import prepare_command
    from mmlens.studies.shard import Shard

    prep = prepare_command(args)  # every option, the data and the run folder checked before any weights are read
    samples = prep.samples
    model = HookedVLM.from_pretrained(str(prep.model_path))
    result = run_flow_study(
        model, samples, args.out, window_size=args.window, template=args.template, filter_correct=args.filter_correct,
        convention=args.convention, fill=args.fill, final_norm=args.final_norm, force=args.force, manifest=prep.manifest,
        progress=Shard.from_env().is_main,
    )
    if not Shard.from_env().is_main:
        return 0
    settings = {"model": args.model, "data": args.data, "template": args.template, "filter_correct": args.filter_correct,
                "convention": args.convention}
    report = write_report(result, model=model, example=samples[0], template=args.template, settings=settings,
                          records_skipped=len(prep.skipped))
    print(report.read_text())
    print(f"wrote {args.out}/: knockout.csv lens.csv shares.csv, knockout.png lens.png shares.png image_attention.png, summary.md")
    return 0


def setup(args: argparse.Namespace):
    """Check every option, the data and the run folder, then load the model and open the folder.

    Returns ``(model, prepared command, run folder)``; samples are computed through
    ``folder.run`` (committed one by one, sharded under torchrun) and outputs written by rank 0.
    """
    from mmlens import HookedVLM
    from mmlens.studies.command import prepare_command
    from mmlens.studies.run import RunFolder

    prep = prepare_command(args)
    model = HookedVLM.from_pretrained(str(prep.model_path))
    return model, prep, RunFolder(args.out, prep.manifest, force=args.force)


def saliency(args: argparse.Namespace) -> int:
    from mmlens.conventions import resolve
    from mmlens.studies import saliency_study

    from mmlens.analysis import SaliencyResult
    from mmlens.studies.summaries import saliency_summary
    from mmlens.viz.saliency import plot_flow_metrics

    model, prep, folder = setup(args)
    samples, out = prep.samples, folder.out
    row = {s.id: i for i, s in enumerate(samples)}

    def one(s):
        result = saliency_study(model, [s], args.variant, target=args.target, vision_flows=args.vision_flows,
                                template=args.template, convention=args.convention, progress=False)
        return {"saliency": result.to_dataframe().assign(row=row[s.id], sample=s.id, task=s.task)}

    columns = {"saliency": [*SaliencyResult.COLUMNS, "sample", "task"]}
    df = folder.run(samples, one, columns, desc="saliency")["saliency"]
    if not folder.is_main:
        return 0
    opts = resolve("saliency", args.convention, variant=args.variant, target=args.target, vision_flows=args.vision_flows)
    aggregate = opts["aggregate"]
    folder.write_csv("saliency.csv", df)
    for agg in ("source", "receiving"):
        folder.write_figure(f"flow_metrics_{agg}.png", plot_flow_metrics(df, agg))
    table = df[df["aggregate"] == aggregate].pivot_table(index="layer", columns="metric", values="value")
    settings = {"model": args.model, "data": args.data, "template": args.template, "convention": args.convention,
                **{k: opts[k] for k in ("variant", "target", "vision_flows")}}  # fmt: skip
    summary = saliency_summary(table, aggregate=aggregate, convention=args.convention, n=len(samples), settings=settings,
                               records_skipped=len(prep.skipped))  # fmt: skip
    folder.write("summary.md", summary)
    print(summary)
    print(f"wrote {out}/saliency.csv, flow_metrics_{{source,receiving}}.png and summary.md")
    return 0


def cam(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from mmlens.analysis import grad_cam
    from mmlens.conventions import resolve
    from mmlens.inputs import sample_inputs
    from mmlens.studies import CamHitResult, cam_hit_rate
    from mmlens.studies.summaries import cam_summary

    model, prep, folder = setup(args)
    samples = prep.samples
    smooth = (int(args.smooth[0]), float(args.smooth[1])) if args.smooth else None

    def one(s):
        return {"cam_hits": cam_hit_rate(model, [s], args.layers, args.tower, args.variant, smooth, args.template,
                                         target_rows=args.target_rows, convention=args.convention).frame}  # fmt: skip

    hits = CamHitResult(folder.run(samples, one, {"cam_hits": list(CamHitResult.COLUMNS)}, desc="cam hit rate")["cam_hits"])
    if not folder.is_main:
        return 0
    overlays = []
    for s in tqdm(samples[: args.figures], desc="cam figures"):
        inputs = sample_inputs(model, s, args.template)
        cam = grad_cam(model, inputs, answer=s.answer, layers=args.layers, tower=args.tower, variant=args.variant, smooth=smooth,
                       target_rows=args.target_rows, convention=args.convention)
        name = f"cam_{s.id.replace('/', '_')}.png"
        folder.write_figure(name, cam.plot(inputs, s.load_image()))
        overlays.append((name, s.id, s.question))
    folder.write_csv("cam_hits.csv", hits.to_dataframe())
    folder.write_figure("cam_hit_rate.png", hits.plot())
    table = hits.per_layer().set_index("layer")[["hit_rate", "chance"]].round(3)
    table.columns = ["hit rate", "chance"]
    folder.write("cam_hit_rate.csv", table.to_csv())
    opts = resolve("grad_cam", args.convention, variant=args.variant, target_rows=args.target_rows)
    settings = {"model": args.model, "data": args.data, "template": args.template, "convention": args.convention,
                "tower": args.tower, "layers": "all" if args.layers is None else args.layers, **opts,
                "smooth": "none" if smooth is None else f"{smooth[0]} samples, sigma {smooth[1]}"}  # fmt: skip
    summary = cam_summary(hits.frame, table.reset_index(), n=len(samples), overlays=overlays, settings=settings,
                          records_skipped=len(prep.skipped))  # fmt: skip
    folder.write("summary.md", summary)
    print(summary)
    print(f"wrote {folder.out}/: cam_hits.csv cam_hit_rate.csv, cam_hit_rate.png cam_*.png, summary.md")
    return 0


def disrupt(args: argparse.Namespace) -> int:
    import json

    import numpy as np
    import pandas as pd

    from mmlens.analysis import DisruptionResult, disruption
    from mmlens.conventions import resolve
    from mmlens.inputs import sample_inputs
    from mmlens.studies.shard import Shard
    from mmlens.studies.summaries import disruption_summary

    if Shard.from_env().world_size > 1:
        raise MMLensError("mmlens disrupt draws its random control rows from one generator across the samples in order, "
                          "so it cannot be split between processes: run it without torchrun.")  # fmt: skip
    model, prep, folder = setup(args)
    samples = prep.samples
    flows = ("instruction<-image", "image<-image", "random<-image")
    position = {s.id: i for i, s in enumerate(samples)}
    rngs: dict = {}  # one generator per flow for the whole study, as disruption_study has it

    def one(s):
        i = position[s.id]
        if i == 0:
            rngs.update({f: np.random.default_rng(0) for f in flows}, after=0)
        elif rngs.get("after") != i:  # the previous samples came from the journal: continue from their generators
            saved = folder.load(samples[i - 1])["rng"]
            for f, state in zip(saved["flow"], saved["state"]):
                rngs[f] = np.random.default_rng(0)
                rngs[f].bit_generator.state = json.loads(state)
        inputs = sample_inputs(model, s, args.template)
        tables = {f: disruption(model, inputs, f, args.layers, args.scope, args.mode, seed=rngs[f],
                                convention=args.convention).tag(sample=s.id).frame for f in flows}  # fmt: skip
        rngs["after"] = i + 1
        tables["rng"] = pd.DataFrame({"flow": flows, "state": [json.dumps(rngs[f].bit_generator.state) for f in flows]})
        return tables

    tables = folder.run(samples, one, {f: list(DisruptionResult.COLUMNS) for f in flows}, desc="disrupt")
    result = DisruptionResult.concat([DisruptionResult(tables[f]) for f in flows])
    folder.write_csv("disruption.csv", result.to_dataframe())
    table, d = result.per_layer(), result.d_metric()
    folder.write_csv("disruption_per_layer.csv", table)
    folder.write_csv("d_metric.csv", d)
    folder.write_figure("disruption.png", result.plot())
    settings = {"model": args.model, "data": args.data, "template": args.template, "convention": args.convention,
                "layers": "all" if args.layers is None else args.layers,
                **resolve("disruption", args.convention, scope=args.scope, mode=args.mode), "top_k": 5, "seed": 0}  # fmt: skip
    summary = disruption_summary(result.frame, table, d, n=len(samples), settings=settings, records_skipped=len(prep.skipped))
    folder.write("summary.md", summary)
    print(summary)
    print(f"wrote {folder.out}/: disruption.csv disruption_per_layer.csv d_metric.csv, disruption.png, summary.md")
    return 0


def patch(args: argparse.Namespace) -> int:
    import pandas as pd

    from mmlens.patching.sites import get_site
    from mmlens.studies.patching import PatchingStudyResult, patch_sample
    from mmlens.studies.patching_report import write_outputs

    hooks = [h.strip() for h in args.hook.split(",") if h.strip()]
    for hook in hooks or [""]:
        site = get_site(hook)  # an unknown name raises, listing the sites
        if site.per_head or site.tower != "decoder":
            raise MMLensError(f"--hook {hook}: mmlens patch pools positions by region; use decoder position sites "
                              "(resid_pre, resid_mid, resid_post, attn_out, mlp_out).")
    model, prep, folder = setup(args)
    skipped_columns = ["sample", "reason"]

    def one(s):
        frame, why = patch_sample(model, s, args.corrupt, hooks, template=args.template, batch_size=args.batch_size)
        return {"patching": frame, "skipped": pd.DataFrame([[s.id, why]] if why else [], columns=skipped_columns)}

    columns = {"patching": list(PatchingStudyResult.COLUMNS), "skipped": skipped_columns}
    tables = folder.run(prep.samples, one, columns, desc=f"patching ({args.corrupt})")
    if not folder.is_main:
        return 0
    settings = {"model": args.model, "data": args.data, "corrupt": args.corrupt, "hooks": ", ".join(hooks),
                "template": args.template}
    print(write_outputs(folder, model, prep.samples, tables, args.corrupt, hooks, settings, template=args.template,
                        batch_size=args.batch_size))
    print(f"wrote {folder.out}/: patching.csv per_region.csv skipped.csv, patching.png example_*.png, summary.md")
    return 0
