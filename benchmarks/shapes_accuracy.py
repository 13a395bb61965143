"""Held-out accuracy of the shipped shapes-llava checkpoint, per question type.

Loads the checkpoint with plain ``transformers`` (no mmlens model code), asks 2,000 single-turn
questions from the reserved benchmark split (seed 0, never used in training; types round-robin,
so about 286 per type) and scores the greedy first answer token.

Usage:
    python benchmarks/shapes_accuracy.py [--checkpoint DIR] [--n 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from mmlens.data.shapes import QUESTION_TYPES, shapes_dataset
from mmlens.zoo.registry import resolve_model_name
from mmlens.zoo.shapes_model import BENCHMARK_SPLIT, EVAL_SPLITS, accuracy_by_type


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="shapes-llava", help="registered name or directory")
    parser.add_argument("--n", type=int, default=2000, help="held-out samples (types round-robin)")
    parser.add_argument("--seed", type=int, default=BENCHMARK_SPLIT, choices=EVAL_SPLITS,
                        help="held-out split (0..9 are never used in training)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = resolve_model_name(args.checkpoint)
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    samples = shapes_dataset(args.n, seed=args.seed, types=QUESTION_TYPES)
    start = time.perf_counter()
    acc = accuracy_by_type(model, processor, samples)
    seconds = time.perf_counter() - start
    counts = {t: sum(s.task == t for s in samples) for t in QUESTION_TYPES}
    print(f"shapes-llava held-out accuracy: {path}, split {args.seed}, {args.n} samples, {seconds:.0f} s")
    print(f"| {'type':<12} | {'n':>4} | {'accuracy':>8} |")
    print(f"|{'-' * 14}|{'-' * 6}|{'-' * 10}|")
    for task in QUESTION_TYPES:
        print(f"| {task:<12} | {counts[task]:>4} | {acc[task]:>8.1%} |")
    print(f"| {'all':<12} | {args.n:>4} | {acc['all']:>8.1%} |")


if __name__ == "__main__":
    main()
