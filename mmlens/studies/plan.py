"""Know before you run: parameters, memory, devices and forward passes of a model and a study.

Everything comes from the checkpoint's config (no weights are read) and documented formulas.
All memory figures are in bytes for one prompt of ``prompt_len`` positions (image tokens
included) at batch 1 unless stated. A packed tower (Qwen2-VL, Qwen2.5-VL) gives an image as many
tokens as its size asks: the plan resizes one image of a given size by the processor's rule
(:func:`mmlens.studies.plan_image.packed_image`) and counts its patches and tokens.

Formulas (decoder width ``d``, heads ``H`` of width ``dh``, key/value heads ``Hkv``, MLP width
``d_mlp``, vocabulary ``V``, ``P`` positions, batch ``b``, element size ``e``):

* weights: ``params × e``, parameters counted on a model built on the ``meta`` device;
* forward working set of one block (fused attention): ``b·P·(3d + (H + 2Hkv)·dh + 3·d_mlp)·e``
  (residual, its norm and the attention output; q, k, v; gate, up and activation);
* with the attention pattern materialised (knockout, attention shares, any hook on
  ``attn.hook_pattern``/``hook_attn_scores``): plus ``2·b·H·P²·e`` (scores and pattern of one layer);
* logits: ``b·P·V·e``; peak forward activations = max(block working set, logits + ``b·P·d·e``);
* caching every decoder hook (``run_with_cache()``): per layer
  ``b·P·(7d + 2 + 3H·dh + 3Hkv·dh + 2H·P + m·d_mlp)·e`` with ``m`` = 3 (gated MLP) or 2, plus
  ``b·P·(3d + 1)·e`` for ``hook_embed``, ``hook_merged_embed`` and ``ln_final`` — the sizes of
  the hooks in ``docs/hook_names.md``;
* knockout sweep ("Cross-modal Information Flow", reuse path of
  :mod:`mmlens.analysis.knockout_sweep`): one clean forward, then per flow one batched call per
  distinct window start ``s`` with as many rows as windows starting there, each running blocks
  ``s..L-1`` on the positions from the flow's first target query on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from mmlens.analysis.knockout_sweep import PAPER_FLOWS
from mmlens.config import DecoderConfig, VLMConfig
from mmlens.errors import MMLensError
from mmlens.geometry import ResizedGeometry
from mmlens.interventions.knockout import paper_window_size, window

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}
GIB = 1024**3
GENERATE_TOKENS = 4
"""``greedy_answer``'s ``max_new_tokens`` (the correctness filter of the studies)."""


def human_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it at least 1 (``"13.48 GiB"``)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Layout:
    """Where a prompt's groups sit: what the knockout sweep's reuse depends on.

    Attributes:
        prompt_len: Positions of the prompt, image tokens included.
        question_start: First position of the ``question`` group (right after the image in the
            ``vicuna_v1`` template); ``last`` is ``prompt_len - 1``.
    """

    prompt_len: int
    question_start: int

    def first_query(self, target: str) -> int:
        """First query position a flow into ``target`` blocks (``question`` or ``last``)."""
        return self.prompt_len - 1 if target == "last" else self.question_start


@dataclass(frozen=True)
class SweepCost:
    """Work of one knockout sweep on one prompt.

    Attributes:
        calls: Model invocations (the clean forward and the batched partial runs).
        rows: Batch rows over all calls (one per knocked-out window, plus the clean run).
        block_positions: Σ rows × blocks run × positions recomputed (a full forward is
            ``n_layers × prompt_len``).
        widest: Rows of the widest batched call (windows sharing a start layer).
    """

    calls: int
    rows: int
    block_positions: int
    widest: int

    def full_forward_equivalents(self, n_layers: int, prompt_len: int) -> float:
        return self.block_positions / (n_layers * prompt_len)


def knockout_cost(
    n_layers: int,
    layout: Layout,
    flows: Mapping[str, tuple[str, str]] = PAPER_FLOWS,
    window_size: int | None = None,
) -> SweepCost:
    """What :func:`~mmlens.analysis.knockout_sweep` runs for one prompt, every centre layer.

    Flows into ``question`` recompute from ``layout.question_start``, flows into ``last`` only
    the last position; windows sharing a start layer run as one batch.
    """
    k = paper_window_size(n_layers) if window_size is None else window_size
    starts: dict[int, int] = {}
    for centre in range(n_layers):
        w = window(centre, k, n_layers)
        starts[w.start] = starts.get(w.start, 0) + 1
    calls, rows, work = 1, 1, n_layers * layout.prompt_len
    for _, target in flows.values():
        recomputed = layout.prompt_len - layout.first_query(target)
        for start, m in starts.items():
            calls += 1
            rows += m
            work += m * (n_layers - start) * recomputed
    return SweepCost(calls, rows, work, max(starts.values()))


def decoder_activation_bytes(cfg: DecoderConfig, prompt_len: int, dtype_bytes: int, batch: int = 1) -> dict[str, int]:
    """Peak activation memory of one decoder forward by the module docstring's formulas.

    Returns:
        ``forward`` (fused attention), ``forward_with_patterns`` (pattern of one layer
        materialised) and ``cache_all`` (every decoder hook cached).
    """
    d, h, kv, dh, f, v, p = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab, prompt_len
    block = batch * p * (3 * d + (h + 2 * kv) * dh + 3 * f)
    pattern = 2 * batch * h * p * p
    logits = batch * p * v + batch * p * d
    per_layer = batch * p * (7 * d + 2 + 3 * h * dh + 3 * kv * dh + 2 * h * p + (3 if cfg.gated_mlp else 2) * f)
    cache = cfg.n_layers * per_layer + batch * p * (3 * d + 1)
    return {
        "forward": max(block, logits) * dtype_bytes,
        "forward_with_patterns": max(block + pattern, logits) * dtype_bytes,
        "cache_all": cache * dtype_bytes,
    }


def count_parameters(cfg: VLMConfig) -> dict[str, int]:
    """Parameters per part (``vision``, ``projector``, ``decoder``, ``total``) of the hooked model,
    counted on a copy built on the ``meta`` device (no memory, no weights read)."""
    from mmlens.models import HookedVLM

    with torch.device("meta"):
        model = HookedVLM(cfg)
    parts = {"vision": 0, "projector": 0, "decoder": 0}
    for name, p in model.named_parameters():  # tied weights are listed once
        head = name.split(".")[0]
        part = "vision" if head in ("vision_encoder", "qformer") else "projector" if head in (
            "vision_projector", "image_newline") else "decoder"
        parts[part] += p.numel()
    return {**parts, "total": sum(parts.values())}


@dataclass(frozen=True)
class Plan:
    """The estimate :func:`make_plan` prints.

    Attributes:
        parameters: Per part and ``total``.
        dtype: Name of the parameter dtype.
        weight_bytes: ``total × element size``.
        activation_bytes: See :func:`decoder_activation_bytes`, plus ``vision`` (one image's tower).
        prompt_len: Positions per prompt.
        device_memory: Bytes per device assumed when counting devices.
        devices: Devices of ``device_memory`` that hold the weights and the study's peak.
        study: Study name (or None) and its per-sample and total forward counts.
        image: The planned image of a packed tower (None: a fixed count per image).
    """

    parameters: dict[str, int]
    dtype: str
    weight_bytes: int
    activation_bytes: dict[str, int]
    prompt_len: int
    device_memory: int
    devices: int
    study: dict = field(default_factory=dict)
    image: ResizedGeometry | None = None

    def image_lines(self) -> list[str]:
        """The planned image of a packed tower, as one line (none for a fixed count)."""
        im = self.image
        if im is None:
            return []
        patches = im.n_tokens * im.merge**2
        return [f"image {im.width}x{im.height} px, resized by the processor to {im.resized_width}x{im.resized_height}: "
                f"{patches:,} patches, {im.n_tokens:,} image tokens"]  # fmt: skip

    def lines(self) -> list[str]:
        """The plan as the lines ``mmlens plan`` prints."""
        gib = human_bytes
        p = self.parameters
        out = [
            f"parameters: {p['total']:,} (vision {p['vision']:,}, projector {p['projector']:,}, decoder {p['decoder']:,})",
            *self.image_lines(),
            f"weights ({self.dtype}): {gib(self.weight_bytes)}",
            f"peak activations, one prompt of {self.prompt_len} positions: forward {gib(self.activation_bytes['forward'])}, "
            f"with attention patterns {gib(self.activation_bytes['forward_with_patterns'])}, "
            f"caching every decoder hook {gib(self.activation_bytes['cache_all'])}; "
            f"vision tower, one view {gib(self.activation_bytes['vision'])}",
            f"devices needed ({gib(self.device_memory)} each): {self.devices}",
        ]
        if self.study:
            s = self.study
            out.append(f"study {s['name']}: {s['calls_per_sample']} forward calls per sample "
                       f"({s['full_forwards_per_sample']:.1f} full-forward equivalents), "
                       f"{s['calls']:,} calls for {s['n']} samples")
        return out


def study_cost(name: str, cfg: VLMConfig, layout: Layout, window_size: int | None = None) -> dict:
    """Forward calls and full-forward equivalents per sample of a study.

    ``flow``: greedy answer (prefill + at most ``GENERATE_TOKENS - 1`` one-token steps), knockout sweep
    of the six flows, logit lens (one forward), attention shares (one forward). ``knockout``:
    the greedy answer and the sweep. ``saliency``: one forward and its backward (counted as two).

    Raises:
        MMLensError: an unknown study.
    """
    n, p = cfg.decoder.n_layers, layout.prompt_len
    generate_calls, generate_work = GENERATE_TOKENS, 1 + (GENERATE_TOKENS - 1) / p
    sweep = knockout_cost(n, layout, PAPER_FLOWS, window_size)
    sweep_work = sweep.full_forward_equivalents(n, p)
    if name == "flow":
        calls, work = generate_calls + sweep.calls + 2, generate_work + sweep_work + 2
    elif name == "knockout":
        calls, work = generate_calls + sweep.calls, generate_work + sweep_work
    elif name == "saliency":
        calls, work = 2, 2.0
    else:
        raise MMLensError(f"mmlens plan knows the studies flow, knockout and saliency, not {name!r}.")
    return {"name": name, "calls_per_sample": calls, "full_forwards_per_sample": work, "sweep": sweep}


def model_config(name_or_path: str) -> VLMConfig:
    """A checkpoint's :class:`~mmlens.config.VLMConfig` from its ``config.json`` alone; checkpoints
    in the original LLaVA layout are loaded (their config needs the vision tower's directory).

    Raises:
        UnknownNameError: neither a registered name nor a local directory.
        UnsupportedArchitectureError: no adapter for the architecture.
    """
    from pathlib import Path

    import transformers

    from mmlens.adapters import load_checkpoint
    from mmlens.adapters.llava_original import original_architecture
    from mmlens.adapters.registry import VLM_ADAPTERS, lookup
    from mmlens.errors import UnknownNameError
    from mmlens.zoo.registry import resolve_model_name

    path = resolve_model_name(name_or_path)
    if not (Path(path) / "config.json").is_file():
        raise UnknownNameError(f"{name_or_path!r} is neither a registered model name nor a directory with a "
                               "config.json: pass a Hugging Face checkpoint directory or a name from mmlens.zoo.MODELS.")
    if original_architecture(path):
        return load_checkpoint(path, with_processor=False)[0]
    hf_config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    arch = (hf_config.architectures or ["?"])[0]
    return lookup(VLM_ADAPTERS, arch, "architecture").config(hf_config)


def make_plan(
    cfg: VLMConfig,
    dtype: str = "bf16",
    prompt_len: int | None = None,
    study: str | None = None,
    n: int = 1,
    device_memory: int = 80 * GIB,
    question_len: int = 24,
    image: ResizedGeometry | None = None,
) -> Plan:
    """Estimate a model's and a study's needs from its config.

    Args:
        cfg: The model's config (:func:`mmlens.adapters.load_config`).
        dtype: ``fp32``, ``bf16`` or ``fp16``.
        prompt_len: Positions per prompt, image tokens included (default: one image + 64 text).
        study: ``flow``, ``knockout``, ``saliency`` or None.
        n: Samples of the study.
        device_memory: Bytes per device.
        question_len: Positions from the question's first token to the end (the text after the
            image), for the knockout sweep's reuse.
        image: For a packed tower (Qwen2-VL), the image whose tokens and patches are counted
            (:func:`~mmlens.studies.plan_image.packed_image`); None for a tower with a fixed count per image.

    Raises:
        MMLensError: an unknown dtype or study, a prompt shorter than its image, or a packed
            tower without ``image``.
    """
    if cfg.vision.packed and image is None:
        raise MMLensError(f"{cfg.architecture} gives an image as many tokens as its size asks: pass image="
                          "packed_image(cfg, width, height) (mmlens plan --image-size WxH).")  # fmt: skip
    if dtype not in DTYPE_BYTES:
        raise MMLensError(f"dtype must be one of {sorted(DTYPE_BYTES)}, not {dtype!r}.")
    e = DTYPE_BYTES[dtype]
    n_image = image.n_tokens if image is not None else cfg.image_seq_length
    prompt_len = n_image + 64 if prompt_len is None else prompt_len
    if prompt_len <= question_len:
        raise MMLensError(f"prompt_len={prompt_len} is too short: give more than question_len={question_len} positions.")
    params = count_parameters(cfg)
    acts = decoder_activation_bytes(cfg.decoder, prompt_len, e)
    v = cfg.vision
    v_pos = image.n_tokens * image.merge**2 if image is not None else v.n_patches + int(v.has_cls)
    acts["vision"] = (v_pos * (3 * v.d_model + (v.n_heads + 2 * v.n_kv_heads) * v.d_head + 3 * v.d_mlp)) * e
    layout = Layout(prompt_len, prompt_len - question_len)
    cost = study_cost(study, cfg, layout) if study else {}
    peak = acts["forward_with_patterns"] if study in ("flow", "knockout") else acts["forward"]
    if study in ("flow", "knockout"):  # the widest batched call, bounded as if it recomputed every position
        batch = cost["sweep"].widest
        peak = max(peak, decoder_activation_bytes(cfg.decoder, prompt_len, e, batch=batch)["forward_with_patterns"])
    if study == "saliency":
        peak = acts["cache_all"]  # gradients of every pattern are kept for the backward
    devices = max(1, math.ceil((params["total"] * e + peak) / device_memory))
    study_info = {}
    if cost:
        study_info = {k: cost[k] for k in ("name", "calls_per_sample", "full_forwards_per_sample")}
        study_info.update(n=n, calls=cost["calls_per_sample"] * n)
    return Plan(params, dtype, params["total"] * e, acts, prompt_len, device_memory, devices, study_info, image)
