"""Argument parsing of the ``mmlens`` command line: every command, its options and ``main``.

Each command's body lives in a sibling module (:mod:`mmlens.cli.studies` for the dataset
studies, :mod:`mmlens.cli.evaluate` for accuracy and pruning, :mod:`mmlens.cli.tools` for the
rest); this module only reads the command line and turns an :class:`~mmlens.errors.MMLensError`
into one ``mmlens: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mmlens.cli import evaluate, studies, tools
from mmlens.errors import MMLensError

DESCRIPTION = """The ``mmlens`` command line: ``mmlens flow`` runs the information-flow study; ``mmlens demo``
checks a checkpoint against Hugging Face."""

CONVENTION_HELP = "paper (mmlens' defaults) or released_code: every option as the authors' code has it (docs/conventions.md); explicit options win"


class UsageError(MMLensError):
    """A command line that argparse cannot read (unknown option, missing value, bad number)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage and exits; mmlens reports "mmlens: ..." and exits 2
        where = "" if self.prog == "mmlens" else f"{self.prog.removeprefix('mmlens ')}: "
        raise UsageError(f"{where}{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """Every command, its options and the function that runs it (``args.func``)."""
    parser = _Parser(prog="mmlens", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    flow = sub.add_parser("flow", help="attention knockout of the six flows, logit lens and attention shares")
    flow.add_argument("--model", default="shapes-llava", help="registered name or Hugging Face directory")
    flow.add_argument("--data", default="shapes", help="shapes (synthetic, held-out seeds) or <reader>:<path>")
    flow.add_argument("--types", nargs="*", default=None, help="question types to keep")
    flow.add_argument("--n", "--num-samples", type=int, default=35, help="number of samples (--num-samples under torchrun, whose own options make --n ambiguous)")
    flow.add_argument("--seed", type=int, default=0, help="dataset seed (0-9 are held out from training)")
    flow.add_argument("--window", type=int, help="knockout window k (default: the paper's 9 of 32 layers scaled to the model's depth)")
    flow.add_argument("--template", default="auto", help="prompt template (auto: the model family's own)")
    flow.add_argument("--filter-correct", action="store_true", help="keep samples answered correctly ('Cross-modal Information Flow' §4)")
    flow.add_argument("--out", required=True, help="output folder (an interrupted run resumes)")
    flow.add_argument("--force", action="store_true", help="start over when --out holds a run with other settings")
    flow.add_argument("--lenient", action="store_true", help="skip malformed dataset records (listed in <out>/skipped.csv)")
    flow.add_argument("--convention", default="paper", choices=["paper", "released_code"], help=CONVENTION_HELP)
    flow.add_argument("--fill", default=None, choices=["-inf", "finfo_min"], help="knockout fill (default: from --convention)")
    flow.add_argument("--final-norm", default=None, choices=["all", "last_only"], help="logit lens final norm (default: from --convention)")
    flow.set_defaults(func=studies.flow)

    def study(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--model", default="shapes-llava", help="registered name or Hugging Face directory")
        p.add_argument("--data", default="shapes", help="shapes or <reader>:<path> (docs/datasets.md)")
        p.add_argument("--types", nargs="*", default=None)
        p.add_argument("--n", "--num-samples", type=int, default=14, help="number of samples (--num-samples under torchrun)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--template", default="auto", help="prompt template (auto: the model family's own)")
        p.add_argument("--out", required=True, help="output folder (an interrupted run resumes)")
        p.add_argument("--force", action="store_true", help="start over when --out holds a run with other settings")
        p.add_argument("--lenient", action="store_true", help="skip malformed dataset records (listed in <out>/skipped.csv)")
        p.add_argument("--convention", default="paper", choices=["paper", "released_code"], help=CONVENTION_HELP)
        return p

    sal = study("saliency", "attention x gradient flow metrics per layer ('Unraveling the Shift' §2-3)")
    sal.add_argument("--variant", default=None, choices=["paper", "released_code"], help="I_l (default: from --convention)")
    sal.add_argument("--target", default=None, choices=["prediction", "gold"], help="scored token (default: from --convention)")
    sal.add_argument("--vision-flows", default=None, choices=["mean", "sum"], help="S_vv, S_vt over |V| or raw (default: from --convention)")
    sal.set_defaults(func=studies.saliency)
    cam = study("cam", "Grad-CAM / LLaVA-CAM overlays and the hit rate on named objects ('From Redundancy to Relevance' §3.1)")
    cam.add_argument("--layers", type=int, nargs="*", default=None)
    cam.add_argument("--tower", default="decoder", choices=["decoder", "vision"])
    cam.add_argument("--variant", default=None, choices=["standard", "released_code"], help="default: from --convention")
    cam.add_argument("--target-rows", default=None, choices=["answer", "released_code"], help="rows scoring the answer (default: from --convention)")
    cam.add_argument("--smooth", nargs=2, metavar=("N", "SIGMA"), default=None, help="LLaVA-CAM smoothing, e.g. 50 0.1")
    cam.add_argument("--figures", type=int, default=4, help="samples drawn as overlays")
    cam.set_defaults(func=studies.cam)
    dis = study("disrupt", "block image->instruction / image->image / image->random flows per layer ('Unraveling the Shift' §3.2-3.3)")
    dis.add_argument("--layers", type=int, nargs="*", default=None)
    dis.add_argument("--scope", default=None, choices=["single", "onward"], help="default: from --convention")
    dis.add_argument("--mode", default=None, choices=["post_softmax", "pre_softmax"], help="default: from --convention")
    dis.set_defaults(func=studies.disrupt)

    pe = study("prune-eval", "accuracy, FLOPs (estimate and exact) and latency with a pruning policy ('Unraveling the Shift' §4)")
    pe.add_argument("--policy", default="himap", help="fastv:K,R | himap:K1,R1,K2,R2 | truncate:K,keep")
    pe.add_argument("--repeats", type=int, default=5, help="timed prefills (median reported)")
    pe.set_defaults(func=evaluate.prune_eval)

    ev = study("eval", "accuracy on a dataset, with and without a pruning policy, with the papers' filters")
    ev.add_argument("--policy", default=None, help="optional: fastv:K,R | himap:K1,R1,K2,R2 | truncate:K,keep")
    ev.add_argument("--filter-correct", action="store_true", help="keep samples answered correctly ('Cross-modal Information Flow' §4)")
    ev.add_argument("--pseudo-filter", action="store_true", help="drop samples answered correctly without the image ('Unraveling the Shift' App. B)")
    ev.set_defaults(func=evaluate.eval_)

    demo = sub.add_parser("demo", help="load a model, check parity with Hugging Face, cache every hook")
    demo.add_argument("--model", default=None, help="a Hugging Face LLaVA directory (default: tiny random)")
    demo.set_defaults(func=tools.demo)

    conv = sub.add_parser("convert", help="write an original-LLaVA-layout checkpoint as a Hugging Face LLaVA directory")
    conv.add_argument("src", help="checkpoint directory in the original LLaVA repository layout")
    conv.add_argument("--vision-tower", default=None, help="local CLIP directory (default: mm_vision_tower found on disk)")
    conv.add_argument("--out", required=True, help="directory to write")
    conv.set_defaults(func=tools.convert)

    pat = study("patch", "activation patching of clean into corrupted images, per layer and position, pooled by region")
    pat.add_argument("--corrupt", default="recolour", choices=["recolour", "move", "remove", "blur"], help="the counterfactual image")
    pat.add_argument("--hook", default="resid_pre", help="comma-separated decoder sites, e.g. resid_pre,attn_out")
    pat.add_argument("--batch-size", type=int, default=16, help="patched runs per forward")
    pat.set_defaults(func=studies.patch)

    plan = sub.add_parser("plan", help="parameters, memory, devices and forward passes, from the config alone")
    plan.add_argument("--model", default="shapes-llava", help="registered name or Hugging Face directory (no weights are read)")
    plan.add_argument("--study", default=None, choices=["flow", "knockout", "saliency"], help="count this study's forward passes")
    plan.add_argument("--n", type=int, default=1, help="samples of the study")
    plan.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    plan.add_argument("--prompt-len", type=int, default=None, help="positions per prompt, image tokens included (default: one image + 64)")
    plan.add_argument("--question-len", type=int, default=24, help="positions from the question to the end of the prompt")
    plan.add_argument("--device-memory", type=float, default=80.0, help="GiB per device")
    plan.add_argument("--image-size", default=None, metavar="WxH", help="Qwen2-VL / Qwen2.5-VL: the image, resized by "
                      "the processor's rule, sets the image-token count (default: 448x448); other models: leave it out")
    plan.set_defaults(func=tools.plan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command line; returns the exit status (2 and one ``mmlens: ...`` line on a user error)."""
    parser = build_parser()

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
