"""Prefill latency and generation throughput with FastV and HiMAP, next to their FLOPs ratios.

Target (issue "Image-token pruning"): on the CPU-scaled LLaVA geometry, the measured prefill
speed-up reaches at least 80% of what the exact FLOPs ratio predicts.

Run: ``python -m benchmarks.bench_pruning [--quick] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import interleaved_medians, llava15_cpu_geometry, prompt
from mmlens import HookedVLM
from mmlens.pruning import FastV, HiMAP, flops
from mmlens.zoo.tiny import tiny_llava


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    # 12 decoder layers so that HiMAP's second stage (K2 = 8) exists.
    cfg = llava15_cpu_geometry(decoder_layers=12, quick=args.quick)
    if args.quick:
        cfg.text_config.num_hidden_layers = 12
    model = HookedVLM.from_pretrained(tiny_llava(cfg))
    ids, px = prompt(cfg)
    n_image = cfg.image_seq_length
    n_text = ids.shape[1] - n_image
    policies = {"none": None, "fastv": FastV(2, 0.5), "himap": HiMAP(2, 0.5, 8, 0.75)}
    prefill = interleaved_medians({k: (lambda p=p: model(input_ids=ids, pixel_values=px, prune=p)) for k, p in policies.items()}, args.repeats)

    def generate(p) -> float:
        t0 = time.perf_counter()
        model.generate(input_ids=ids, pixel_values=px, max_new_tokens=args.new_tokens, prune=p, eos_token_id=-1)
        return time.perf_counter() - t0

    gen = interleaved_medians({k: (lambda p=p: generate(p)) for k, p in policies.items()}, max(1, args.repeats // 2), warmup=0)
    print(f"prompt {ids.shape[1]} tokens ({n_image} image), {cfg.text_config.num_hidden_layers} decoder layers")
    print(f"{'policy':>6} {'prefill ms':>10} {'speed-up':>9} {'exact FLOPs ratio':>18} {'estimate ratio':>15} {'achieved':>9} {'gen tok/s':>10}")
    base_exact = flops(cfg, n_text, n_image, None, method="exact")
    base_est = flops(cfg, n_text, n_image, None)
    for name, p in policies.items():
        exact = flops(cfg, n_text, n_image, p, method="exact") / base_exact
        est = flops(cfg, n_text, n_image, p) / base_est
        speedup = prefill["none"] / prefill[name]
        print(f"{name:>6} {prefill[name] * 1000:10.1f} {speedup:9.2f} {exact:18.3f} {est:15.3f} "
              f"{speedup * exact:9.0%} {args.new_tokens / gen[name]:10.1f}")
    print("achieved = measured prefill speed-up / (1 / exact FLOPs ratio); target >= 80%")


if __name__ == "__main__":
    main()
