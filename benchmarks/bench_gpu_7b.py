"""GPU measurements at LLaVA-1.5-7B (or 13B) geometry with random bf16 weights (issue "Past one device", item 5).

Measures, in one process on one GPU (never needed by tests or CI):

* forward time of ``HookedVLM`` against Hugging Face SDPA (target ≤ 1.05×);
* ``run_with_cache()`` (every hook) against Hugging Face eager with attentions and hidden states;
* the knockout sweep of the six flows ("Cross-modal Information Flow") per question;
* peak GPU memory of ``attention_share`` ("From Redundancy to Relevance") against caching every
  attention pattern;
* with ``--geometry 13b --device-map auto --max-memory 0=20GiB,cpu=120GiB``: the same through
  ``device_map`` (blocks offloaded to the CPU when the GPU budget is short).

Run: ``python -m benchmarks.bench_gpu_7b [--geometry 7b|13b] [--repeats 5] [--json out.json]``.
Prints a markdown table for docs/benchmarks.md (with date, GPU and versions).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import transformers

from benchmarks.bench_knockout import random_inputs
from mmlens import HookedVLM
from mmlens.analysis import attention_share, knockout_sweep

GEOMETRIES = {  # LLaVA-1.5: CLIP ViT-L/14-336 (24 layers, 1024 wide) + Vicuna (Llama) decoder
    "7b": dict(d_model=4096, n_layers=32, n_heads=32, d_mlp=11008),
    "13b": dict(d_model=5120, n_layers=40, n_heads=40, d_mlp=13824),
    "smoke": dict(d_model=64, n_layers=4, n_heads=4, d_mlp=128),  # --smoke: the script's own check, on a CPU
}


def llava15_config(geometry: str) -> transformers.LlavaConfig:
    g = GEOMETRIES[geometry]
    if geometry == "smoke":
        from mmlens.zoo.tiny import tiny_llava_config

        return tiny_llava_config(vocab_size=32064, image_size=112, patch_size=14, image_token_index=32000, **{
            k: v for k, v in g.items()})
    text = transformers.LlamaConfig(vocab_size=32064, hidden_size=g["d_model"], intermediate_size=g["d_mlp"],
                                    num_hidden_layers=g["n_layers"], num_attention_heads=g["n_heads"],
                                    num_key_value_heads=g["n_heads"], max_position_embeddings=4096, rms_norm_eps=1e-5)
    vision = transformers.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                           num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
    return transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000,
                                    image_seq_length=576, vision_feature_layer=-2,
                                    vision_feature_select_strategy="default")


def random_model(cfg: transformers.LlavaConfig, device: str) -> transformers.LlavaForConditionalGeneration:
    """Random bf16 weights scaled like :func:`mmlens.zoo.tiny.tiny_llava` (activations stay O(1))."""
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlavaForConditionalGeneration(cfg).to(torch.bfloat16).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "embed" not in name:
                p.normal_(0.0, p.shape[-1] ** -0.5 if p.ndim == 2 else 0.05)
            elif p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.ndim == 1:
                p.normal_(0.0, 0.1)
    model.set_attn_implementation("sdpa")
    return model


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` on the GPU (one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak GPU memory allocated above the level before ``fn``, in MiB (NaN without a GPU)."""
    if not torch.cuda.is_available():
        fn()
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def parse_memory(spec: str | None) -> dict | None:
    """``0=20GiB,cpu=120GiB`` → ``{0: "20GiB", "cpu": "120GiB"}``."""
    if not spec:
        return None
    return {(int(k) if k.isdigit() else k): v for k, v in (item.split("=") for item in spec.split(","))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", default="7b", choices=sorted(GEOMETRIES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device-map", default=None, help="'auto' to place blocks with accelerate")
    parser.add_argument("--max-memory", default=None, help="per device, e.g. 0=20GiB,cpu=120GiB")
    parser.add_argument("--offload-folder", default="/tmp/mmlens-offload")
    parser.add_argument("--skip-hf", action="store_true", help="skip the Hugging Face comparisons (saves memory)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    parser.add_argument("--smoke", action="store_true", help="tiny geometry on the CPU: checks the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.geometry, device = "smoke", "cpu"
    else:
        assert torch.cuda.is_available(), "this benchmark needs a GPU (--smoke checks the script on a CPU)"
        device = "cuda"

    cfg = llava15_config(args.geometry)
    dispatched = args.device_map is not None
    hf = random_model(cfg, "cpu" if dispatched else device)
    if dispatched:
        model = HookedVLM.from_pretrained(hf, dtype=torch.bfloat16, device_map=args.device_map,
                                          max_memory=parse_memory(args.max_memory), offload_folder=args.offload_folder)
        hf = None if args.skip_hf or args.max_memory else hf.to(device)
    else:
        model = HookedVLM.from_pretrained(hf, dtype=torch.bfloat16, device=device)  # shares hf's tensors
    inputs = random_inputs(cfg, seed=0).to(device)
    inputs = dataclasses.replace(inputs, pixel_values=inputs.pixel_values.to(torch.bfloat16))
    ids, px = inputs.input_ids, inputs.pixel_values
    results: dict[str, object] = {
        "date": datetime.date.today().isoformat(), "geometry": args.geometry,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else "none (--smoke, CPU)",
        "device_map": getattr(model, "hf_device_map", None) if dispatched else None,
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "prompt_len": int(ids.shape[1]),
    }
    with torch.no_grad():
        results["forward_s"] = timed(lambda: model(inputs), args.repeats)
        results["run_with_cache_s"] = timed(lambda: model.run_with_cache(inputs), max(1, args.repeats // 2))
        if hf is not None and not args.skip_hf:
            results["hf_sdpa_s"] = timed(lambda: hf(input_ids=ids, pixel_values=px).logits, args.repeats)
            diff = (model(inputs).float() - hf(input_ids=ids, pixel_values=px).logits.float()).abs().max()
            results["max_abs_logit_diff"] = float(diff)
            hf.set_attn_implementation("eager")
            results["hf_eager_attn_s"] = timed(
                lambda: hf(input_ids=ids, pixel_values=px, output_attentions=True, output_hidden_states=True),
                max(1, args.repeats // 2))
            hf.set_attn_implementation("sdpa")
            results["forward_ratio"] = results["forward_s"] / results["hf_sdpa_s"]
            results["cache_ratio"] = results["run_with_cache_s"] / results["hf_eager_attn_s"]
        results["knockout_sweep_s"] = timed(lambda: knockout_sweep(model, inputs), 1)
        results["forward_peak_mib"] = peak_mib(lambda: model(inputs))
        results["attention_share_peak_mib"] = peak_mib(lambda: attention_share(model, inputs))
        results["cache_patterns_peak_mib"] = peak_mib(
            lambda: model.run_with_cache(inputs, names_filter=lambda n: n.endswith("attn.hook_pattern"))[1])
    print(json.dumps(results, indent=1, default=str))
    print(f"\n| {results['date']} | {results['gpu']} | {args.geometry} bf16 | prompt {results['prompt_len']} |")
    for key in ("forward_s", "hf_sdpa_s", "forward_ratio", "run_with_cache_s", "hf_eager_attn_s", "cache_ratio",
                "knockout_sweep_s", "forward_peak_mib", "attention_share_peak_mib", "cache_patterns_peak_mib"):
        if key in results:
            print(f"| {key} | {results[key]:.4g} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
