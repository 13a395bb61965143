"""The ``mmlens`` command line."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    """Load a checkpoint (a tiny random one by default), check it against Hugging Face, cache it."""
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
    ids = torch.randint(0, cfg.image_token_index, (1, n_img + 12))
    ids[:, 4 : 4 + n_img] = cfg.image_token_index
    px = torch.randn(1, 3, cfg.vision.image_size, cfg.vision.image_size)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=px).logits
        logits, cache = model.run_with_cache(input_ids=ids, pixel_values=px)
    diff = (logits - ref).abs().max().item()
    print(f"model: {path}")
    print(f"decoder {cfg.decoder.family}: {cfg.decoder.n_layers} layers, d_model {cfg.decoder.d_model}; "
          f"vision {cfg.vision.family}: {cfg.vision.n_layers} layers used, {n_img} image tokens")
    print(f"hook points: {len(model.hook_dict)}, cached activations: {len(cache)}")
    print(f"max |logits - Hugging Face logits| = {diff:.2e}")
    shares = cache["pattern", -1][0, :, -1].mean(0)
    image = (ids[0] == cfg.image_token_index)
    print(f"last-layer attention of the last token on image positions: {shares[image].sum():.3f}")
    return 0 if diff < 1e-4 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmlens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="load a model, check parity with Hugging Face, cache every hook")
    demo.add_argument("--model", default=None, help="a Hugging Face LLaVA directory (default: tiny random)")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
