"""Activation patching speed-up over one full forward per patch, and its exactness.

Target (issue "Activation and path patching"): all (layer, position) ``resid_pre`` patches of
one prompt on the CPU-scaled LLaVA geometry (8 layers, 650 positions, 576 of them image tokens)
≥ 5x faster than a full hooked forward per patch, equal to 1e-5.

The naive cost is the same for every patch (a full forward), so it is timed on ``--naive``
patches spread over layers and positions (median) and multiplied by the number of patches;
those patches also give the maximum difference. On a shared machine the load drifts, so each
layer's patches are timed right next to that layer's naive forwards and the speed-up is reported
per layer (and its median) as well as overall. ``--every k`` patches every k-th position only
(all layers), for machines where the full grid takes too long. The work bound printed is the
share of a forward's decoder work the truncated runs redo: on a compute-bound CPU, where a
batch of rows costs about as much as the rows one by one, it caps the speed-up.

Run: ``python -m benchmarks.bench_patching [--quick] [--every K] [--naive N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.bench_knockout import random_inputs
from benchmarks.common import build
from mmlens import HookedVLM
from mmlens.patching import activation_patch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--every", type=int, default=1, help="patch every k-th position (all layers)")
    parser.add_argument("--naive", type=int, default=16, help="naive full forwards timed (spread over the layers)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    hf = build(args.quick).eval()
    model = HookedVLM.from_pretrained(hf)
    clean = random_inputs(hf.config, 0)
    image = clean.groups["image"][0]
    px = clean.pixel_values.clone()
    px[..., : px.shape[-2] // 2, :] = torch.randn_like(px[..., : px.shape[-2] // 2, :])  # noise the top half
    corrupt = type(clean)(clean.input_ids, clean.attention_mask, px, clean.groups, clean.image_grid, clean.prompts)
    n_pos, L = clean.input_ids.shape[1], model.cfg.n_layers
    keep = torch.zeros(n_pos, dtype=torch.bool)
    keep[:: args.every] = True
    patched = keep.nonzero().flatten().tolist()
    positions = "each" if args.every == 1 else {str(p): torch.arange(n_pos) == p for p in patched}
    metric = lambda logits: logits[:, 0] - logits[:, 1]  # noqa: E731  (random model: a fixed logit pair)

    _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre") and n.startswith("blocks."))
    first = next(c for c, p in enumerate(patched) if image[p])  # earlier positions are identical in both runs

    def naive(layer: int, p: int) -> tuple[float, float]:
        """Seconds and metric of one full hooked forward patching ``(layer, p)``."""

        def patch(x, hook):
            x = x.clone()
            x[:, p] = cache[f"blocks.{layer}.hook_resid_pre"][:, p]
            return x

        t0 = time.perf_counter()
        logits = model.run_with_hooks(corrupt, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", patch)])[:, -1]
        return time.perf_counter() - t0, float(metric(logits)[0])

    # The machine's load drifts (shared CPUs): each layer's patches are timed next to that layer's
    # naive forwards, and the ratio is taken per layer.
    rows, ratios, worst, t_fast, t_naive = [], [], 0.0, 0.0, 0.0
    per_layer = max(1, args.naive // L)
    for layer in range(L):
        t0 = time.perf_counter()
        fast = activation_patch(model, clean, corrupt, positions=positions, metric=metric, layers=[layer],
                                batch_size=args.batch_size)
        t_l = time.perf_counter() - t0
        cols = torch.linspace(first, fast.raw.shape[1] - 1, per_layer).round().long().tolist()
        times = []
        for col in cols:
            dt, value = naive(layer, patched[col])
            times.append(dt)
            worst = max(worst, abs(value - float(fast.raw[0, col])))
        n_l = fast.raw.numel()
        naive_l = statistics.median(times) * n_l
        ratios.append(naive_l / t_l)
        t_fast, t_naive = t_fast + t_l, t_naive + naive_l
        rows.append(f"  layer {layer}: {n_l} patches, {t_l:7.1f} s vs naive {naive_l:7.1f} s (median {statistics.median(times):.3f} s/forward): {naive_l / t_l:.1f}x")
    n_patch = L * len(patched)
    # Compute bound of the truncation alone: share of the decoder's block work a patch at (l, p) redoes.
    redo = sum((n_pos - p) * (L - layer) for layer in range(L) for p in patched if p >= patched[first]) / (n_pos * L * n_patch)
    print(f"{L} layers x {len(patched)} positions (of {n_pos}; {int(image.sum())} image) = {n_patch} resid_pre patches")
    print("\n".join(rows))
    print(f"naive, one full forward per patch: {t_naive:8.1f} s")
    print(f"activation_patch:                  {t_fast:8.1f} s  speed-up {t_naive / t_fast:.1f}x overall, median over layers "
          f"{statistics.median(ratios):.1f}x (target >= 5x)")
    print(f"work bound: patches redo {redo:.0%} of a forward's decoder work on average (at most {1 / redo:.1f}x on a "
          "compute-bound machine, before batching gains)")
    print(f"max |metric difference| over {L * per_layer} checked patches = {worst:.2e} (target <= 1e-5)")

if __name__ == "__main__":
    main()
