"""The ``mmlens`` command line: ``mmlens flow`` runs the information-flow study; ``mmlens demo``
checks a checkpoint against Hugging Face."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence

from mmlens.errors import MMLensError


def load_samples(data: str, n: int, types: Sequence[str] | None, seed: int):
    """Samples from ``--data``: ``shapes`` (the synthetic world, held-out seeds)."""
    from mmlens.data.shapes import shapes_dataset

    if data == "shapes":
        return shapes_dataset(n, seed=seed, types=types or None)
    raise MMLensError(f"--data {data!r} is not available yet: use --data shapes.")


def _flow(args: argparse.Namespace) -> int:
    from mmlens import HookedVLM
    from mmlens.analysis.flow_study import image_attention_example, run_flow_study, write_report

    model = HookedVLM.from_pretrained(args.model)
    samples = load_samples(args.data, args.n, args.types, args.seed)
    tables = run_flow_study(
        model, samples, args.out, window_size=args.window, template=args.template, filter_correct=args.filter_correct
    )
    report = write_report(tables, args.out)
    image_attention_example(model, samples[0], args.out, args.template)
    print(report.read_text())
    print(f"wrote {args.out}/: knockout.csv lens.csv shares.csv, knockout.png lens.png shares.png image_attention.png, summary.md")
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
    flow.add_argument("--data", default="shapes", help="shapes (synthetic, held-out seeds)")
    flow.add_argument("--types", nargs="*", default=None, help="question types to keep")
    flow.add_argument("--n", type=int, default=35, help="number of samples")
    flow.add_argument("--seed", type=int, default=0, help="dataset seed (0-9 are held out from training)")
    flow.add_argument("--window", type=int, default=9, help="knockout window k")
    flow.add_argument("--template", default="vicuna_v1")
    flow.add_argument("--filter-correct", action="store_true", help="keep samples answered correctly (seed 002)")
    flow.add_argument("--out", required=True, help="output folder (an interrupted run resumes)")
    flow.set_defaults(func=_flow)

    demo = sub.add_parser("demo", help="load a model, check parity with Hugging Face, cache every hook")
    demo.add_argument("--model", default=None, help="a Hugging Face LLaVA directory (default: tiny random)")
    demo.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MMLensError as err:
        print(f"mmlens: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
