"""HookedVLM forward and run_with_cache against Hugging Face (and TransformerBridge), one process.

Targets (issue "HookedVLM"): forward with no hooks ≤ 1.05x Hugging Face's SDPA forward;
``run_with_cache`` of every hook ≤ 1.2x Hugging Face eager with ``output_attentions=True,
output_hidden_states=True``, and faster than transformer_lens' TransformerBridge.

Run: ``python benchmarks/bench_forward.py [--quick] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile

import torch
import transformers

from benchmarks.common import build, exact_rss, interleaved_medians, peak_rss_delta, prompt
from mmlens import HookedVLM


def bridge_runner(hf, ids, px, directory):
    """TransformerBridge's run_with_cache on the same model, or None if it cannot load it."""
    try:
        from transformer_lens.model_bridge import TransformerBridge

        from mmlens.data.shapes import VOCAB_WORDS
        from mmlens.zoo.tokenizer import save_tokenizer_and_processor

        hf.save_pretrained(directory)
        vc = hf.config.vision_config
        save_tokenizer_and_processor(directory, VOCAB_WORDS, vc.image_size, vc.patch_size)
        bridge = TransformerBridge.boot_transformers(directory, hf_model=hf)
    except Exception as err:  # the bridge may not support this checkpoint
        print(f"TransformerBridge: not comparable here ({type(err).__name__}: {str(err)[:120]})")
        return None
    return lambda: bridge.run_with_cache(ids, pixel_values=px)


def main() -> None:
    exact_rss("benchmarks.bench_forward")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny model, for a smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    hf_sdpa = build(args.quick).eval()
    cfg = hf_sdpa.config
    hf_eager = transformers.LlavaForConditionalGeneration(cfg).eval()
    hf_eager.load_state_dict(hf_sdpa.state_dict())
    hf_eager.set_attn_implementation("eager")
    model = HookedVLM.from_pretrained(hf_sdpa)
    ids, px = prompt(cfg)
    n_params = sum(p.numel() for p in hf_sdpa.model.language_model.parameters()) + hf_sdpa.lm_head.weight.numel()
    print(f"decoder parameters: {n_params / 1e6:.0f}M, prompt length {ids.shape[1]} ({cfg.image_seq_length} image tokens)")

    runs = {
        "hf_sdpa": lambda: hf_sdpa(input_ids=ids, pixel_values=px).logits,
        "mmlens_forward": lambda: model(input_ids=ids, pixel_values=px),
        "hf_eager_all_outputs": lambda: hf_eager(
            input_ids=ids, pixel_values=px, output_attentions=True, output_hidden_states=True
        ).logits,
        "mmlens_run_with_cache": lambda: model.run_with_cache(input_ids=ids, pixel_values=px),
    }
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be downloaded
    bridge = bridge_runner(hf_sdpa, ids, px, tempfile.mkdtemp())
    if bridge is not None:
        runs["bridge_run_with_cache"] = bridge
    med = interleaved_medians(runs, repeats=args.repeats)
    for name, t in med.items():
        print(f"{name:>24}: {t * 1000:8.1f} ms (median of {args.repeats})")
    print(f"forward ratio mmlens / HF SDPA:                 {med['mmlens_forward'] / med['hf_sdpa']:.3f}  (target <= 1.05)")
    print(f"run_with_cache ratio mmlens / HF eager+outputs: {med['mmlens_run_with_cache'] / med['hf_eager_all_outputs']:.3f}  (target <= 1.2)")
    if bridge is not None:
        print(f"run_with_cache ratio mmlens / TransformerBridge: {med['mmlens_run_with_cache'] / med['bridge_run_with_cache']:.3f}  (target < 1)")
    for name, fn in runs.items():
        gc.collect()
        print(f"{name:>24}: peak memory +{peak_rss_delta(fn):7.0f} MiB")


if __name__ == "__main__":
    main()
