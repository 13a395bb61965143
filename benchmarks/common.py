"""Timing and memory helpers for the benchmarks: medians of interleaved runs in one process."""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

import psutil
import torch
import transformers

from mmlens.zoo.tiny import tiny_llava, tiny_llava_config


def llava15_cpu_geometry(decoder_layers: int = 8, quick: bool = False) -> transformers.LlavaConfig:
    """LLaVA-1.5 geometry scaled to a CPU: 336-px CLIP with 14-px patches (576 image tokens) and a
    ~100M-parameter Llama decoder (``quick`` shrinks everything for smoke runs)."""
    if quick:
        return tiny_llava_config(n_kv_heads=2, image_size=112, patch_size=14, vocab_size=1000)
    return tiny_llava_config(
        vocab_size=32064, d_model=768, n_layers=decoder_layers, n_heads=12, d_mlp=2048,
        vision_d_model=256, vision_layers=4, vision_heads=4, image_size=336, patch_size=14,
    )


def build(quick: bool = False) -> transformers.LlavaForConditionalGeneration:
    return tiny_llava(llava15_cpu_geometry(quick=quick))


def prompt(cfg: transformers.LlavaConfig, n_text: int = 74, batch: int = 1, seed: int = 0):
    """A prompt of ``n_text`` text tokens around one image (576 + 74 = 650 tokens by default)."""
    g = torch.Generator().manual_seed(seed)
    n_img = cfg.image_seq_length
    ids = torch.randint(5, cfg.text_config.vocab_size, (batch, n_text + n_img), generator=g)
    ids[:, 35 : 35 + n_img] = cfg.image_token_id
    px = torch.randn(batch, 3, cfg.vision_config.image_size, cfg.vision_config.image_size, generator=g)
    return ids, px


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, run round-robin so machine noise hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def exact_rss(module: str) -> None:
    """Re-run this benchmark with glibc returning every large free to the OS at once.

    By default glibc raises its mmap threshold after large frees and keeps freed blocks, so the
    resident size stops tracking live tensors; ``MALLOC_MMAP_THRESHOLD_`` pins it.
    """
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)


def peak_rss_delta(fn: Callable[[], object], interval: float = 0.002) -> float:
    """Peak resident memory above the starting level while ``fn`` runs, in MiB (sampled)."""
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(interval)

    t = threading.Thread(target=sample)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return (max(peak, proc.memory_info().rss) - base) / 2**20

