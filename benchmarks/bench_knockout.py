"""Knockout sweep speed-up over the naive per-window forward, and attention_share memory.

Targets (issue "Information flow"): sweep of one flow over all layers (window 9, 20 samples) on
the CPU-scaled LLaVA geometry ≥ 2x faster than a full forward per window; attention_share's
peak memory versus caching every attention pattern.

Run: ``python -m benchmarks.bench_knockout [--quick] [--samples N] [--flow image->last]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch

from benchmarks.common import build, exact_rss, peak_rss_delta, prompt
from mmlens import HookedVLM
from mmlens.analysis import PAPER_FLOWS, KnockoutResult, attention_share, knockout_sweep
from mmlens.inputs import ImageGrid, MMInputs
from mmlens.interventions import knockout, window
from mmlens.inputs import TokenGroups, standard_groups


def random_inputs(cfg, seed: int, n_question: int = 12) -> MMInputs:
    """A 650-token prompt whose ``question`` is the text after the image minus the last 5 tokens."""
    ids, px = prompt(cfg, seed=seed)
    mask = torch.ones_like(ids)
    n = ids.shape[1]
    question = torch.zeros_like(ids, dtype=torch.bool)
    question[:, n - 5 - n_question : n - 5] = True
    groups = standard_groups(ids, mask, cfg.image_token_id, question)
    groups["related"] = groups["image"] & (torch.arange(n) % 7 == 0)
    groups["other"] = groups["image"] & ~groups["related"]
    empty = torch.full(ids.shape, -1)
    grid = ImageGrid(empty, empty, empty, torch.full((*ids.shape, 4), float("nan")), (None,))
    return MMInputs(ids, mask, px, TokenGroups(groups), grid, ("",))


def main() -> None:
    exact_rss("benchmarks.bench_knockout")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--flow", default="image->last", choices=list(PAPER_FLOWS))
    parser.add_argument("--window", type=int, default=9)
    parser.add_argument("--memory-probe", choices=["share", "cache"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    hf = build(args.quick).eval()
    model = HookedVLM.from_pretrained(hf)
    if args.memory_probe:  # one measurement in a fresh process
        inputs = random_inputs(hf.config, 0)
        model(inputs)  # warm-up: allocations common to both
        if args.memory_probe == "share":
            print(peak_rss_delta(lambda: attention_share(model, inputs), interval=0.001))
        else:
            print(peak_rss_delta(lambda: model.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_pattern")), interval=0.001))
        return
    samples = [random_inputs(hf.config, seed) for seed in range(args.samples)]
    L = model.cfg.n_layers
    src, dst = PAPER_FLOWS[args.flow]

    t0 = time.perf_counter()
    runs = [knockout_sweep(model, inputs, [args.flow], args.window).tag(sample=str(i)) for i, inputs in enumerate(samples)]
    fast = KnockoutResult.concat(runs).to_dataframe()
    t_fast = time.perf_counter() - t0

    t0 = time.perf_counter()
    worst = 0.0
    for i, inputs in enumerate(samples):
        clean = torch.softmax(model(inputs)[0, -1], -1)
        token = int(clean.argmax())
        for layer in range(L):
            hooks = knockout(inputs.groups, src, dst, window(layer, args.window, L))
            p2 = float(torch.softmax(model.run_with_hooks(inputs, fwd_hooks=hooks)[0, -1], -1)[token])
            got = fast[(fast["sample"] == str(i)) & (fast["layer"] == layer)]["p_knockout"].item()
            worst = max(worst, abs(got - p2))
    t_naive = time.perf_counter() - t0
    print(f"flow {args.flow}, {len(samples)} samples x {L} layers, window {args.window}")
    print(f"naive per-window forward: {t_naive:7.1f} s")
    print(f"knockout_sweep:           {t_fast:7.1f} s   speed-up {t_naive / t_fast:.1f}x (target >= 2x)")
    print(f"max |p_knockout difference| = {worst:.2e}")

    mem = {}
    for probe in ("share", "cache"):
        cmd = [sys.executable, "-m", "benchmarks.bench_knockout", "--memory-probe", probe] + (["--quick"] if args.quick else [])
        mem[probe] = float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()[-1])
    print(f"peak memory above a plain forward: attention_share +{mem['share']:.0f} MiB; "
          f"caching every pattern +{mem['cache']:.0f} MiB")


if __name__ == "__main__":
    main()
