"""FLOPs of the decoder with and without token pruning (docs/methods.md#flops).

``estimate`` is "Unraveling the Shift" eq. 10 (FastV's): image tokens only, Ω(n) = 4nd² + 2n²d + 2ndm per
layer. ``exact`` counts every matmul the decoder runs (2 FLOPs per multiply-add): q/k/v/o
projections with grouped-query widths, the full score and value products, SwiGLU's three
projections, the unembedding, for all tokens, and each decoding step over its cache.
"""

from __future__ import annotations

from typing import Any

from mmlens.adapters import VLM_ADAPTERS
from mmlens.adapters.registry import lookup
from mmlens.config import DecoderConfig, VLMConfig
from mmlens.errors import MMLensError


def _decoder_config(cfg: Any) -> DecoderConfig:
    if isinstance(cfg, DecoderConfig):
        return cfg
    if isinstance(cfg, VLMConfig):
        return cfg.decoder
    if hasattr(cfg, "vision_config"):  # a Hugging Face config, e.g. LLaVA-1.5-7B's without weights
        arch = (getattr(cfg, "architectures", None) or ["LlavaForConditionalGeneration"])[0]
        return lookup(VLM_ADAPTERS, arch, "architecture").config(cfg).decoder
    raise MMLensError(f"flops needs a DecoderConfig, VLMConfig or Hugging Face LLaVA config, not {type(cfg).__name__}.")


def image_tokens_per_layer(policy: Any, n_layers: int, n_image: int) -> list[int]:
    """How many image tokens each decoder layer processes under ``policy`` (None: all)."""
    counts = [n_image] * n_layers
    if policy is None:
        return counts
    n = n_image
    stages = policy.plan(n_layers).stages
    for layer in range(n_layers):
        if layer in stages:
            n = min(n, stages[layer].keep(n))
        counts[layer] = n
    return counts


def omega(n: int, d: int, m: int) -> float:
    """FastV's per-layer estimate for n image tokens: 4nd² + 2n²d + 2ndm."""
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def _layer_exact(cfg: DecoderConfig, s: int, t: int) -> float:
    """Exact FLOPs of one block for ``s`` query positions over ``t`` keys."""
    d, h, kv, dh, m = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp
    proj = 2 * s * d * (h * dh) * 2 + 2 * s * d * (kv * dh) * 2  # q and o; k and v
    attn = 2 * h * s * t * dh * 2  # scores and pattern @ values
    mlp = 2 * s * d * m * (3 if cfg.gated_mlp else 2)
    return proj + attn + mlp


def flops(
    cfg: Any,
    n_text: int,
    n_image: int,
    policy: Any = None,
    new_tokens: int = 0,
    method: str = "estimate",
) -> float:
    """FLOPs of a prompt of ``n_text`` text and ``n_image`` image tokens (and generation).

    Args:
        cfg: A decoder/VLM config or a Hugging Face LLaVA config (no weights needed).
        n_text: Text tokens of the prompt.
        n_image: Image tokens of the prompt.
        policy: A pruning policy (``Truncate``, ``FastV``, ``HiMAP``) or None.
        new_tokens: Generated tokens (``exact`` only; each attends over its layer's cache).
        method: ``"estimate"`` ("Unraveling the Shift" eq. 10: image tokens only, prefill only) or ``"exact"``.

    Returns:
        FLOPs (divide by 1e12 for the papers' TFLOPs).
    """
    dec = _decoder_config(cfg)
    counts = image_tokens_per_layer(policy, dec.n_layers, n_image)
    if method == "estimate":
        return float(sum(omega(n, dec.d_model, dec.d_mlp) for n in counts))
    if method != "exact":
        raise MMLensError(f"method must be 'estimate' or 'exact', not {method!r}.")
    if getattr(policy, "mode", "drop") == "mask":
        counts = [n_image] * dec.n_layers  # hidden tokens are still computed in mask mode
    total = 0.0
    for n in counts:
        s = n_text + n
        total += _layer_exact(dec, s, s)
        total += sum(_layer_exact(dec, 1, s + step + 1) for step in range(new_tokens))
    unembed = 2 * dec.d_model * dec.d_vocab
    return total + unembed * (n_text + counts[-1] + new_tokens)
