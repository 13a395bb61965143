"""Bodies of the commands that run no study: ``demo``, ``convert`` and ``plan``."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence

from mmlens.errors import MMLensError


def load_samples(data: str, n: int, types: Sequence[str] | None, seed: int, lenient: bool = False):
    """Samples from ``--data``: ``shapes`` (the synthetic world, held-out seeds) or
    ``<reader>:<path>`` for a benchmark on disk (see docs/datasets.md); never empty."""
    from mmlens.studies.command import read_samples

    return read_samples(data, n, list(types) if types is not None else None, seed, lenient=lenient)[0]


def demo(args: argparse.Namespace) -> int:
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


def convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmlens.adapters.llava_original import save_hugging_face

    if not (Path(args.src) / "config.json").is_file():
        raise MMLensError(f"{args.src} holds no config.json: give the folder of an original-LLaVA-layout checkpoint.")
    if args.vision_tower is not None and not (Path(args.vision_tower) / "config.json").is_file():
        raise MMLensError(f"--vision-tower {args.vision_tower} holds no config.json: give a local CLIP checkpoint folder.")
    print(f"wrote {save_hugging_face(args.src, args.out, vision_tower=args.vision_tower)}")
    return 0


def plan(args: argparse.Namespace) -> int:
    from mmlens.studies.plan import GIB, make_plan, model_config
    from mmlens.studies.plan_image import parse_image_size, planned_image
    from mmlens.zoo.registry import resolve_model_name

    size = parse_image_size(args.image_size) if args.image_size is not None else None  # before any file is read
    cfg = model_config(args.model)
    image = planned_image(resolve_model_name(args.model), cfg, size)  # packed towers: tokens follow the image's size
    plan = make_plan(cfg, dtype=args.dtype, prompt_len=args.prompt_len, study=args.study, n=args.n,
                     device_memory=int(args.device_memory * GIB), question_len=args.question_len, image=image)
    print("\n".join(plan.lines()))
    return 0
