"""The ``mmlens`` command line: ``mmlens flow`` runs the information-flow study; ``mmlens demo``
checks a checkpoint against Hugging Face."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence

from mmlens.errors import MMLensError

CONVENTION_HELP = "paper (mmlens' defaults) or released_code: every option as the authors' code has it (docs/conventions.md); explicit options win"


class UsageError(MMLensError):
    """A command line that argparse cannot read (unknown option, missing value, bad number)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage and exits; mmlens reports "mmlens: ..." and exits 2
        where = "" if self.prog == "mmlens" else f"{self.prog.removeprefix('mmlens ')}: "
        raise UsageError(f"{where}{message} (see {self.prog} --help)")


def load_samples(data: str, n: int, types: Sequence[str] | None, seed: int, lenient: bool = False):
    """Samples from ``--data``: ``shapes`` (the synthetic world, held-out seeds) or
    ``<reader>:<path>`` for a benchmark on disk (see docs/datasets.md); never empty."""
    from mmlens.studies.command import read_samples

    return read_samples(data, n, list(types) if types is not None else None, seed, lenient=lenient)[0]


def _flow(args: argparse.Namespace) -> int:
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
    report = write_report(result, model=model, example=samples[0], template=args.template, settings=settings)
    print(report.read_text())
    print(f"wrote {args.out}/: knockout.csv lens.csv shares.csv, knockout.png lens.png shares.png image_attention.png, summary.md")
    return 0


def _setup(args: argparse.Namespace):
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


def _saliency(args: argparse.Namespace) -> int:
    from mmlens.conventions import resolve
    from mmlens.studies import saliency_study

    from mmlens.analysis import SaliencyResult
    from mmlens.viz.saliency import plot_flow_metrics

    model, prep, folder = _setup(args)
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
    aggregate = resolve("saliency", args.convention)["aggregate"]
    folder.write_csv("saliency.csv", df)
    for agg in ("source", "receiving"):
        folder.write_figure(f"flow_metrics_{agg}.png", plot_flow_metrics(df, agg))
    table = df[df["aggregate"] == aggregate].pivot_table(index="layer", columns="metric", values="value")
    print(f"mean flow metrics per layer ({aggregate} aggregation, convention {args.convention}; "
          "the scale follows the loss gradient, compare ratios):")
    print(table.to_string(float_format="{:.3g}".format))
    print(f"wrote {out}/saliency.csv and flow_metrics_{{source,receiving}}.png")
    return 0


def _cam(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from mmlens.analysis import grad_cam
    from mmlens.inputs import sample_inputs
    from mmlens.studies import CamHitResult, cam_hit_rate

    model, prep, folder = _setup(args)
    samples = prep.samples
    smooth = (int(args.smooth[0]), float(args.smooth[1])) if args.smooth else None

    def one(s):
        return {"cam_hits": cam_hit_rate(model, [s], args.layers, args.tower, args.variant, smooth, args.template,
                                         target_rows=args.target_rows, convention=args.convention).frame}  # fmt: skip

    hits = CamHitResult(folder.run(samples, one, {"cam_hits": list(CamHitResult.COLUMNS)}, desc="cam hit rate")["cam_hits"])
    if not folder.is_main:
        return 0
    for s in tqdm(samples[: args.figures], desc="cam figures"):
        inputs = sample_inputs(model, s, args.template)
        cam = grad_cam(model, inputs, answer=s.answer, layers=args.layers, tower=args.tower, variant=args.variant, smooth=smooth,
                       target_rows=args.target_rows, convention=args.convention)
        folder.write_figure(f"cam_{s.id.replace('/', '_')}.png", cam.plot(inputs, s.load_image()))
    folder.write_csv("cam_hits.csv", hits.to_dataframe())
    folder.write_figure("cam_hit_rate.png", hits.plot())
    table = hits.per_layer().set_index("layer")[["hit_rate", "chance"]].round(3)
    table.columns = ["hit rate", "chance"]
    print(f"share of {hits.frame['sample'].nunique()} samples whose heat-map peak lies on a named object, per layer")
    print("(chance: the share of patches on a named object, the hit rate of a random peak):")
    print(table.to_string())
    folder.write("cam_hit_rate.csv", table.to_csv())
    return 0


def _disrupt(args: argparse.Namespace) -> int:
    import json

    import numpy as np
    import pandas as pd

    from mmlens.analysis import DisruptionResult, disruption
    from mmlens.inputs import sample_inputs
    from mmlens.studies.shard import Shard

    if Shard.from_env().world_size > 1:
        raise MMLensError("mmlens disrupt draws its random control rows from one generator across the samples in order, "
                          "so it cannot be split between processes: run it without torchrun.")  # fmt: skip
    model, prep, folder = _setup(args)
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
    print(table.round(3).to_string(index=False))
    print(d.round(3).to_string(index=False))
    return 0


def _prune_eval(args: argparse.Namespace) -> int:
    import statistics
    import time

    import pandas as pd
    import torch

    from mmlens.inputs import sample_inputs
    from mmlens.pruning import flops, with_convention
    from mmlens.studies import EvalResult, evaluate

    model, prep, folder = _setup(args)
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
    folder.write("prune_eval.md", "```\n" + table.to_string(index=False) + "\n```\n")
    print(table.to_string(index=False))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import pandas as pd

    from mmlens.inputs import answer_without_image, score
    from mmlens.studies import EvalResult, evaluate

    model, prep, folder = _setup(args)

    def one(s):
        # "Unraveling the Shift" App. B: drop samples answered correctly without the image
        if args.pseudo_filter and score(s, answer_without_image(model, s, args.template)) >= 1:
            return {}
        base = evaluate(model, [s], template=args.template).frame
        if args.filter_correct and not base["correct"].iloc[0]:  # "Cross-modal Information Flow" §4
            return {}
        if not prep.policy:
            return {"base": base}
        pruned = evaluate(model, [s], prep.policy, policy=prep.policy_label, template=args.template, convention=args.convention)
        return {"base": base, "pruned": pruned.frame}

    tables = folder.run(prep.samples, one, {"base": list(EvalResult.COLUMNS), "pruned": list(EvalResult.COLUMNS)}, desc="evaluate")
    if not folder.is_main:
        return 0
    if tables["base"].empty:
        raise MMLensError(f"no sample of {len(prep.samples)} passed --pseudo-filter/--filter-correct: nothing to score.")
    frames = [tables["base"]] + ([tables["pruned"]] if prep.policy else [])
    preds = EvalResult(pd.concat(frames, ignore_index=True))
    folder.write_csv("predictions.csv", preds.to_dataframe())
    table = preds.summary()
    folder.write_csv("accuracy.csv", table)
    folder.write_figure("accuracy.png", preds.plot())
    folder.write("accuracy.md", "```\n" + table.to_string(index=False) + "\n```\n")
    print(table.to_string(index=False))
    return 0


def _demo(args: argparse.Namespace) -> int:
    import torch
    import transformers

    from mmlens import HookedVLM
    from mmlens.zoo.tiny import save_tiny_checkpoint, tiny_llava_config

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or str(save_tiny_checkpoint(tmp, tiny_llava_config()))
        model = HookedVLM.from_pretrained(path)
        hf = transformers.LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True).eval()
    cfg = model.vlm_cfg
    n_img = cfg.image_seq_length
    torch.manual_seed(0)
    ids = torch.randint(cfg.image_token_index + 1, cfg.decoder.d_vocab, (1, n_img + 12))
    ids[:, 4 : 4 + n_img] = cfg.image_token_index
    px = torch.randn(1, 3, cfg.vision.image_size, cfg.vision.image_size)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=px).logits
        logits, cache = model.run_with_cache(input_ids=ids, pixel_values=px)
    diff = (logits - ref).abs().max().item()
    print(f"model: {path}")
    print(f"hook points: {len(model.hook_dict)}, cached activations: {len(cache)}")
    print(f"max |logits - Hugging Face logits| = {diff:.2e}")
    return 0 if diff < 1e-4 else 1


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmlens.adapters.llava_original import save_hugging_face

    if not (Path(args.src) / "config.json").is_file():
        raise MMLensError(f"{args.src} holds no config.json: give the folder of an original-LLaVA-layout checkpoint.")
    if args.vision_tower is not None and not (Path(args.vision_tower) / "config.json").is_file():
        raise MMLensError(f"--vision-tower {args.vision_tower} holds no config.json: give a local CLIP checkpoint folder.")
    print(f"wrote {save_hugging_face(args.src, args.out, vision_tower=args.vision_tower)}")
    return 0


def _patch(args: argparse.Namespace) -> int:
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
    model, prep, folder = _setup(args)
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


def _plan(args: argparse.Namespace) -> int:
    from mmlens.studies.plan import GIB, make_plan, model_config

    plan = make_plan(model_config(args.model), dtype=args.dtype, prompt_len=args.prompt_len, study=args.study,
                     n=args.n, device_memory=int(args.device_memory * GIB), question_len=args.question_len)
    print("\n".join(plan.lines()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="mmlens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    flow = sub.add_parser("flow", help="attention knockout of the six flows, logit lens and attention shares")
    flow.add_argument("--model", default="shapes-llava", help="registered name or Hugging Face directory")
    flow.add_argument("--data", default="shapes", help="shapes (synthetic, held-out seeds) or <reader>:<path>")
    flow.add_argument("--types", nargs="*", default=None, help="question types to keep")
    flow.add_argument("--n", "--num-samples", type=int, default=35, help="number of samples (--num-samples under torchrun, whose own options make --n ambiguous)")
    flow.add_argument("--seed", type=int, default=0, help="dataset seed (0-9 are held out from training)")
    flow.add_argument("--window", type=int, help="knockout window k (default: the paper's 9 of 32 layers scaled to the model's depth)")
    flow.add_argument("--template", default="vicuna_v1")
    flow.add_argument("--filter-correct", action="store_true", help="keep samples answered correctly ('Cross-modal Information Flow' §4)")
    flow.add_argument("--out", required=True, help="output folder (an interrupted run resumes)")
    flow.add_argument("--force", action="store_true", help="start over when --out holds a run with other settings")
    flow.add_argument("--lenient", action="store_true", help="skip malformed dataset records (listed in <out>/skipped.csv)")
    flow.add_argument("--convention", default="paper", choices=["paper", "released_code"], help=CONVENTION_HELP)
    flow.add_argument("--fill", default=None, choices=["-inf", "finfo_min"], help="knockout fill (default: from --convention)")
    flow.add_argument("--final-norm", default=None, choices=["all", "last_only"], help="logit lens final norm (default: from --convention)")
    flow.set_defaults(func=_flow)

    def study(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--model", default="shapes-llava", help="registered name or Hugging Face directory")
        p.add_argument("--data", default="shapes", help="shapes or <reader>:<path> (docs/datasets.md)")
        p.add_argument("--types", nargs="*", default=None)
        p.add_argument("--n", "--num-samples", type=int, default=14, help="number of samples (--num-samples under torchrun)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--template", default="vicuna_v1")
        p.add_argument("--out", required=True, help="output folder (an interrupted run resumes)")
        p.add_argument("--force", action="store_true", help="start over when --out holds a run with other settings")
        p.add_argument("--lenient", action="store_true", help="skip malformed dataset records (listed in <out>/skipped.csv)")
        p.add_argument("--convention", default="paper", choices=["paper", "released_code"], help=CONVENTION_HELP)
        return p

    sal = study("saliency", "attention x gradient flow metrics per layer ('Unraveling the Shift' §2-3)")
    sal.add_argument("--variant", default=None, choices=["paper", "released_code"], help="I_l (default: from --convention)")
    sal.add_argument("--target", default=None, choices=["prediction", "gold"], help="scored token (default: from --convention)")
    sal.add_argument("--vision-flows", default=None, choices=["mean", "sum"], help="S_vv, S_vt over |V| or raw (default: from --convention)")
    sal.set_defaults(func=_saliency)
    cam = study("cam", "Grad-CAM / LLaVA-CAM overlays and the hit rate on named objects ('From Redundancy to Relevance' §3.1)")
    cam.add_argument("--layers", type=int, nargs="*", default=None)
    cam.add_argument("--tower", default="decoder", choices=["decoder", "vision"])
    cam.add_argument("--variant", default=None, choices=["standard", "released_code"], help="default: from --convention")
    cam.add_argument("--target-rows", default=None, choices=["answer", "released_code"], help="rows scoring the answer (default: from --convention)")
    cam.add_argument("--smooth", nargs=2, metavar=("N", "SIGMA"), default=None, help="LLaVA-CAM smoothing, e.g. 50 0.1")
    cam.add_argument("--figures", type=int, default=4, help="samples drawn as overlays")
    cam.set_defaults(func=_cam)
    dis = study("disrupt", "block image->instruction / image->image / image->random flows per layer ('Unraveling the Shift' §3.2-3.3)")
    dis.add_argument("--layers", type=int, nargs="*", default=None)
    dis.add_argument("--scope", default=None, choices=["single", "onward"], help="default: from --convention")
    dis.add_argument("--mode", default=None, choices=["post_softmax", "pre_softmax"], help="default: from --convention")
    dis.set_defaults(func=_disrupt)

    pe = study("prune-eval", "accuracy, FLOPs (estimate and exact) and latency with a pruning policy ('Unraveling the Shift' §4)")
    pe.add_argument("--policy", default="himap", help="fastv:K,R | himap:K1,R1,K2,R2 | truncate:K,keep")
    pe.add_argument("--repeats", type=int, default=5, help="timed prefills (median reported)")
    pe.set_defaults(func=_prune_eval)

    ev = study("eval", "accuracy on a dataset, with and without a pruning policy, with the papers' filters")
    ev.add_argument("--policy", default=None, help="optional: fastv:K,R | himap:K1,R1,K2,R2 | truncate:K,keep")
    ev.add_argument("--filter-correct", action="store_true", help="keep samples answered correctly ('Cross-modal Information Flow' §4)")
    ev.add_argument("--pseudo-filter", action="store_true", help="drop samples answered correctly without the image ('Unraveling the Shift' App. B)")
    ev.set_defaults(func=_eval)

    demo = sub.add_parser("demo", help="load a model, check parity with Hugging Face, cache every hook")
    demo.add_argument("--model", default=None, help="a Hugging Face LLaVA directory (default: tiny random)")
    demo.set_defaults(func=_demo)

    conv = sub.add_parser("convert", help="write an original-LLaVA-layout checkpoint as a Hugging Face LLaVA directory")
    conv.add_argument("src", help="checkpoint directory in the original LLaVA repository layout")
    conv.add_argument("--vision-tower", default=None, help="local CLIP directory (default: mm_vision_tower found on disk)")
    conv.add_argument("--out", required=True, help="directory to write")
    conv.set_defaults(func=_convert)

    pat = study("patch", "activation patching of clean into corrupted images, per layer and position, pooled by region")
    pat.add_argument("--corrupt", default="recolour", choices=["recolour", "move", "remove", "blur"], help="the counterfactual image")
    pat.add_argument("--hook", default="resid_pre", help="comma-separated decoder sites, e.g. resid_pre,attn_out")
    pat.add_argument("--batch-size", type=int, default=16, help="patched runs per forward")
    pat.set_defaults(func=_patch)

    plan = sub.add_parser("plan", help="parameters, memory, devices and forward passes, from the config alone")
    plan.add_argument("--model", default="shapes-llava", help="registered name or Hugging Face directory (no weights are read)")
    plan.add_argument("--study", default=None, choices=["flow", "knockout", "saliency"], help="count this study's forward passes")
    plan.add_argument("--n", type=int, default=1, help="samples of the study")
    plan.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    plan.add_argument("--prompt-len", type=int, default=None, help="positions per prompt, image tokens included (default: one image + 64)")
    plan.add_argument("--question-len", type=int, default=24, help="positions from the question to the end of the prompt")
    plan.add_argument("--device-memory", type=float, default=80.0, help="GiB per device")
    plan.set_defaults(func=_plan)

    import matplotlib

    matplotlib.use("Agg")  # the CLI only writes figures; notebooks keep their inline backend
    from mmlens.studies.shard import close

    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except MMLensError as err:
        print(f"mmlens: {err}", file=sys.stderr)
        return 2
    finally:
        close()


if __name__ == "__main__":
    sys.exit(main())
