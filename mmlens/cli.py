"""The ``mmlens`` command line: ``mmlens flow`` runs the information-flow study; ``mmlens demo``
checks a checkpoint against Hugging Face."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence

from mmlens.errors import MMLensError


def load_samples(data: str, n: int, types: Sequence[str] | None, seed: int):
    """Samples from ``--data``: ``shapes`` (the synthetic world, held-out seeds) or
    ``<reader>:<path>`` for a benchmark on disk (see docs/datasets.md)."""
    from mmlens.data.readers import load_dataset
    from mmlens.data.shapes import shapes_dataset

    if data == "shapes":
        return shapes_dataset(n, seed=seed, types=types or None)
    if ":" not in data:
        raise MMLensError(f"--data {data!r}: use 'shapes' or '<reader>:<path>', e.g. pope:/data/pope/coco_pope_random.json.")
    samples = load_dataset(data, n=None if types else n)
    if types:
        samples = [s for s in samples if s.task in types][:n]
    return samples


def _flow(args: argparse.Namespace) -> int:
    from mmlens import HookedVLM
    from mmlens.analysis.flow_study import image_attention_example, run_flow_study, write_report

    samples = load_samples(args.data, args.n, args.types, args.seed)
    model = HookedVLM.from_pretrained(args.model)
    tables = run_flow_study(
        model, samples, args.out, window_size=args.window, template=args.template, filter_correct=args.filter_correct
    )
    report = write_report(tables, args.out)
    image_attention_example(model, samples[0], args.out, args.template)
    print(report.read_text())
    print(f"wrote {args.out}/: knockout.csv lens.csv shares.csv, knockout.png lens.png shares.png image_attention.png, summary.md")
    return 0


def _setup(args: argparse.Namespace):
    from pathlib import Path

    from mmlens import HookedVLM

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = load_samples(args.data, args.n, args.types, args.seed)  # fail on bad data before loading a model
    return HookedVLM.from_pretrained(args.model), samples, out


def _saliency(args: argparse.Namespace) -> int:
    import pandas as pd
    from tqdm.auto import tqdm

    from mmlens.analysis import saliency
    from mmlens.samples import sample_inputs
    from mmlens.viz import plot_flow_metrics

    model, samples, out = _setup(args)
    frames = []
    for s in tqdm(samples, desc="saliency"):
        df = saliency(model, sample_inputs(model, s, args.template), variant=args.variant).to_dataframe()
        frames.append(df.assign(sample=s.id, task=s.task))
    df = pd.concat(frames)
    df.to_csv(out / "saliency.csv", index=False)
    for agg in ("source", "receiving"):
        plot_flow_metrics(df, agg).savefig(out / f"flow_metrics_{agg}.png", dpi=120)
    table = df[df["aggregate"] == "source"].pivot_table(index="layer", columns="metric", values="value")
    print("mean flow metrics per layer (source aggregation; the scale follows the loss gradient, compare ratios):")
    print(table.to_string(float_format="{:.3g}".format))
    print(f"wrote {out}/saliency.csv and flow_metrics_{{source,receiving}}.png")
    return 0


def _cam(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from mmlens.analysis import grad_cam
    from mmlens.analysis.cam_study import cam_hit_rate
    from mmlens.samples import sample_inputs
    from mmlens.viz import plot_cam

    model, samples, out = _setup(args)
    smooth = (int(args.smooth[0]), float(args.smooth[1])) if args.smooth else None
    for s in tqdm(samples[: args.figures], desc="cam figures"):
        inputs = sample_inputs(model, s, args.template)
        cam = grad_cam(model, inputs, answer=s.answer, layers=args.layers, tower=args.tower, variant=args.variant, smooth=smooth)
        plot_cam(cam, inputs, s.load_image()).savefig(out / f"cam_{s.id}.png", dpi=120)
    hits = cam_hit_rate(model, tqdm(samples, desc="cam hit rate"), args.layers, args.tower, args.variant, smooth, args.template)
    hits.to_csv(out / "cam_hits.csv", index=False)
    table = hits.groupby("layer")[["hit", "chance"]].mean().round(3)
    table.columns = ["hit rate", "chance"]
    print(f"share of {hits['sample'].nunique()} samples whose heat-map peak lies on a named object, per layer")
    print("(chance: the share of patches on a named object, the hit rate of a random peak):")
    print(table.to_string())
    table.to_csv(out / "cam_hit_rate.csv")
    return 0


def _disrupt(args: argparse.Namespace) -> int:
    import pandas as pd

    from mmlens.analysis import DisruptionResult, d_metric, disruption
    from mmlens.viz import plot_disruption

    model, samples, out = _setup(args)
    runs = [disruption(model, samples, flow, args.layers, args.scope, args.mode, template=args.template)
            for flow in ("instruction<-image", "image<-image", "random<-image")]
    result = DisruptionResult(pd.concat([r.df for r in runs]))
    result.df.to_csv(out / "disruption.csv", index=False)
    table, d = result.per_layer(), d_metric(result)
    table.to_csv(out / "disruption_per_layer.csv", index=False)
    d.to_csv(out / "d_metric.csv", index=False)
    plot_disruption(table, d).savefig(out / "disruption.png", dpi=120)
    print(table.round(3).to_string(index=False))
    print(d.round(3).to_string(index=False))
    return 0


def _prune_eval(args: argparse.Namespace) -> int:
    import statistics
    import time

    import pandas as pd
    import torch

    from mmlens.analysis import evaluate
    from mmlens.pruning import flops
    from mmlens.pruning.spec import parse_policy
    from mmlens.samples import sample_inputs

    model, samples, out = _setup(args)
    policy = parse_policy(args.policy)
    base = evaluate(model, samples, template=args.template, progress=True)
    pruned = evaluate(model, samples, policy, template=args.template, progress=True)
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
    for label, pol, acc, t in (("baseline", None, base, t_base), (args.policy, policy, pruned, t_pruned)):
        rows.append({
            "policy": label, "accuracy": acc["correct"].mean(),
            "flops_estimate": flops(model.vlm_cfg, n_text, n_image, pol, method="estimate"),
            "flops_exact": flops(model.vlm_cfg, n_text, n_image, pol, method="exact"),
            "prefill_ms": t * 1000,
        })
    table = pd.DataFrame(rows)
    table["flops_estimate_ratio"] = table["flops_estimate"] / table["flops_estimate"][0]
    table["flops_exact_ratio"] = table["flops_exact"] / table["flops_exact"][0]
    table["latency_ratio"] = table["prefill_ms"] / table["prefill_ms"][0]
    table.to_csv(out / "prune_eval.csv", index=False)
    pd.concat([base.assign(policy="baseline"), pruned.assign(policy=args.policy)]).to_csv(out / "predictions.csv", index=False)
    (out / "prune_eval.md").write_text("```\n" + table.to_string(index=False) + "\n```\n")
    print(table.to_string(index=False))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import pandas as pd
    from tqdm.auto import tqdm

    from mmlens.analysis import evaluate
    from mmlens.pruning.spec import parse_policy
    from mmlens.samples import answer_without_image, score

    model, samples, out = _setup(args)
    if args.pseudo_filter:  # seed 003: drop samples answered correctly without the image
        samples = [s for s in tqdm(samples, desc="without image") if score(s, answer_without_image(model, s, args.template)) < 1]
    base = evaluate(model, samples, template=args.template, progress=True)
    if args.filter_correct:  # seed 002: keep samples the model answers correctly
        keep = set(base.loc[base["correct"], "sample"])
        samples = [s for s in samples if s.id in keep]
        base = base[base["sample"].isin(keep)]
    frames = [base.assign(policy="baseline")]
    if args.policy:
        frames.append(evaluate(model, samples, parse_policy(args.policy), template=args.template, progress=True).assign(policy=args.policy))
    preds = pd.concat(frames)
    preds.to_csv(out / "predictions.csv", index=False)
    table = preds.groupby(["policy", "task"], sort=False)["score"].agg(["mean", "size"]).reset_index()
    table.to_csv(out / "accuracy.csv", index=False)
    (out / "accuracy.md").write_text("```\n" + table.to_string(index=False) + "\n```\n")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmlens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    flow = sub.add_parser("flow", help="attention knockout of the six flows, logit lens and attention shares")
    flow.add_argument("--model", default="shapes-llava", help="registered name or Hugging Face directory")
    flow.add_argument("--data", default="shapes", help="shapes (synthetic, held-out seeds) or <reader>:<path>")
    flow.add_argument("--types", nargs="*", default=None, help="question types to keep")
    flow.add_argument("--n", type=int, default=35, help="number of samples")
    flow.add_argument("--seed", type=int, default=0, help="dataset seed (0-9 are held out from training)")
    flow.add_argument("--window", type=int, help="knockout window k (default: the paper's 9 of 32 layers scaled to the model's depth)")
    flow.add_argument("--template", default="vicuna_v1")
    flow.add_argument("--filter-correct", action="store_true", help="keep samples answered correctly (seed 002)")
    flow.add_argument("--out", required=True, help="output folder (an interrupted run resumes)")
    flow.set_defaults(func=_flow)

    def study(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--model", default="shapes-llava", help="registered name or Hugging Face directory")
        p.add_argument("--data", default="shapes", help="shapes or <reader>:<path> (docs/datasets.md)")
        p.add_argument("--types", nargs="*", default=None)
        p.add_argument("--n", type=int, default=14)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--template", default="vicuna_v1")
        p.add_argument("--out", required=True)
        return p

    sal = study("saliency", "attention x gradient flow metrics per layer (seed 003)")
    sal.add_argument("--variant", default="paper", choices=["paper", "released_code"])
    sal.set_defaults(func=_saliency)
    cam = study("cam", "Grad-CAM / LLaVA-CAM overlays and the hit rate on named objects (seeds 000/001)")
    cam.add_argument("--layers", type=int, nargs="*", default=None)
    cam.add_argument("--tower", default="decoder", choices=["decoder", "vision"])
    cam.add_argument("--variant", default="standard", choices=["standard", "released_code"])
    cam.add_argument("--smooth", nargs=2, metavar=("N", "SIGMA"), default=None, help="LLaVA-CAM smoothing, e.g. 50 0.1")
    cam.add_argument("--figures", type=int, default=4, help="samples drawn as overlays")
    cam.set_defaults(func=_cam)
    dis = study("disrupt", "block image->instruction / image->image / image->random flows per layer (seed 003)")
    dis.add_argument("--layers", type=int, nargs="*", default=None)
    dis.add_argument("--scope", default="single", choices=["single", "onward"])
    dis.add_argument("--mode", default="post_softmax", choices=["post_softmax", "pre_softmax"])
    dis.set_defaults(func=_disrupt)

    pe = study("prune-eval", "accuracy, FLOPs (estimate and exact) and latency with a pruning policy (seed 003)")
    pe.add_argument("--policy", default="himap", help="fastv:K,R | himap:K1,R1,K2,R2 | truncate:K,keep")
    pe.add_argument("--repeats", type=int, default=5, help="timed prefills (median reported)")
    pe.set_defaults(func=_prune_eval)

    ev = study("eval", "accuracy on a dataset, with and without a pruning policy, with the papers' filters")
    ev.add_argument("--policy", default=None, help="optional: fastv:K,R | himap:K1,R1,K2,R2 | truncate:K,keep")
    ev.add_argument("--filter-correct", action="store_true", help="keep samples answered correctly (seed 002)")
    ev.add_argument("--pseudo-filter", action="store_true", help="drop samples answered correctly without the image (seed 003)")
    ev.set_defaults(func=_eval)

    demo = sub.add_parser("demo", help="load a model, check parity with Hugging Face, cache every hook")
    demo.add_argument("--model", default=None, help="a Hugging Face LLaVA directory (default: tiny random)")
    demo.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # the CLI only writes figures; notebooks keep their inline backend
    try:
        return args.func(args)
    except MMLensError as err:
        print(f"mmlens: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
