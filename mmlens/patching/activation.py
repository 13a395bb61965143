"""Activation patching: write one run's activation into another and measure the change.

References: "Towards Best Practices of Activation Patching" (metrics, denoising vs noising);
"Interpretability in the Wild" (logit difference). The runs are computed by
:mod:`mmlens.patching.runs`, which starts each patched run at the patched layer and position.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from jaxtyping import Bool
from torch import Tensor

from mmlens.data.sample import Sample
from mmlens.errors import MMLensError
from mmlens.inputs import MMInputs, sample_inputs
from mmlens.patching.counterfactuals import check_aligned
from mmlens.patching.metrics import Metric, normalise, resolve_metric
from mmlens.patching.result import PatchingResult
from mmlens.patching.runs import CachedRun, Job, cache_run, check_batch_one, first_edit, metric_position, run_jobs
from mmlens.patching.sites import Site, check_layers, get_site

Positions = Union[str, Sequence[str], Tensor, Mapping[str, Tensor]]
"""``"each"``, ``"all"``, a group name, a list of group names, ``[pos]`` / ``[k, pos]`` masks, or
name → ``[pos]`` mask."""

DIRECTIONS = ("denoise", "noise")


@dataclass
class Pair:
    """Clean and corrupt runs, cached, with the metric resolved."""

    clean: CachedRun
    corrupt: CachedRun
    metric: Metric
    metric_name: str
    at: int
    image: Any

    def base_source(self, direction: str) -> tuple[CachedRun, CachedRun]:
        if direction not in DIRECTIONS:
            raise MMLensError(f"direction must be 'denoise' (clean into corrupt) or 'noise' (corrupt into clean), not {direction!r}.")
        return (self.corrupt, self.clean) if direction == "denoise" else (self.clean, self.corrupt)

    def value(self, run: CachedRun) -> float:
        return float(self.metric(run.logits[None])[0])


def as_inputs(model, x: MMInputs | Sample, template: str = "auto") -> tuple[MMInputs, Any]:
    """Inputs and (for a sample) its image."""
    if isinstance(x, Sample):
        return sample_inputs(model, x, template), x.load_image()
    return x, None


def cache_pair(
    model, clean: MMInputs | Sample, corrupt: MMInputs | Sample, names: Iterable[str], metric: Any,
    answers: Any, at: str | int, edited: Tensor | None = None,
) -> Pair:
    """Check the pair lines up, run both once, resolve the metric."""
    clean_in, image = as_inputs(model, clean)
    corrupt_in, _ = as_inputs(model, corrupt)
    check_batch_one(clean_in, corrupt_in)
    if edited is None and "edited" in clean_in.groups:  # a text_pair: the replaced word may differ
        edited = clean_in.groups["edited"]
    check_aligned(clean_in, corrupt_in, edited=edited)
    pos = metric_position(clean_in, at)
    names = list(names)
    c, x = cache_run(model, clean_in, names, pos), cache_run(model, corrupt_in, names, pos)
    fn, name = resolve_metric(model, metric, c.logits, x.logits, answers)
    return Pair(c, x, fn, name, pos, image)


def columns(model, inputs: MMInputs, site: Site, positions: Positions, n_pos: int) -> tuple[list[Tensor], list[str], str]:
    """``(masks [n_pos] per column, labels, axis)`` for a position-type site."""
    if isinstance(positions, str) and positions == "each":
        if site.tower == "vision":
            cls = int(model.vlm_cfg.vision.has_cls)
            labels = ["cls"] * cls + [f"v{i}" for i in range(n_pos - cls)]
            keep = range(n_pos)
        else:
            labels = position_labels(model, inputs)
            keep = inputs.groups["image"][0].nonzero().flatten().tolist() if site.name == "image_embed" else range(n_pos)
            labels = [labels[i] for i in keep]
        masks = []
        for i in keep:
            m = torch.zeros(n_pos, dtype=torch.bool)
            m[i] = True
            masks.append(m)
        return masks, labels, "position"
    named = named_masks(inputs, positions, n_pos, site)
    return list(named.values()), list(named), "group"


def named_masks(inputs: MMInputs, positions: Positions, n_pos: int, site: Site) -> dict[str, Tensor]:
    """Name → ``[n_pos]`` mask for group names, masks or a mapping of masks."""
    if isinstance(positions, str):
        if positions == "all":
            return {"all": torch.ones(n_pos, dtype=torch.bool)}
        positions = [positions]
    if isinstance(positions, Tensor):
        rows = positions.reshape(-1, positions.shape[-1]).bool()
        named = {f"mask{i}": r for i, r in enumerate(rows)}
    elif isinstance(positions, Mapping):
        named = {k: v.reshape(-1).bool() for k, v in positions.items()}
    else:
        if site.tower == "vision":
            raise MMLensError("vision-tower sites take positions='each', 'all' or masks over the tower's positions, not group names.")
        named = {g: inputs.groups[g][0] for g in positions}
    for k, v in named.items():
        if v.shape[-1] != n_pos:
            raise MMLensError(f"position mask {k!r} has {v.shape[-1]} entries but the site has {n_pos} positions.")
    return named


def position_labels(model, inputs: MMInputs) -> list[str]:
    """Token strings; image positions as ``img(r,c)`` (their patch), anyres newline slots as ``nl``."""
    ids = inputs.input_ids[0].tolist()
    tok = getattr(getattr(model, "processor", None), "tokenizer", None)
    words = tok.convert_ids_to_tokens(ids) if tok is not None else [str(i) for i in ids]
    grid = inputs.image_grid
    labels = []
    for i, word in enumerate(words):
        r, c = int(grid.row[0, i]), int(grid.col[0, i])
        if grid.image_index[0, i] < 0:
            labels.append(str(word))  # ids outside the tokenizer's vocabulary give None
        else:
            labels.append(f"img({r},{c})" if r >= 0 else "nl")
    return labels


def build_jobs(
    site: Site, layers: list[int], base: CachedRun, source: CachedRun, masks: list[Tensor], n_heads: int
) -> list[Job]:
    """One job per (layer, column), each edit restricted to where source and base differ."""
    jobs = []
    for layer in layers:
        name = site.hook(layer)
        differ = (source.acts[name] != base.acts[name])[0]
        if site.per_head:  # z: [pos, head, d_head] -> [pos, head]; pattern: [head, q, k] -> [head, q]
            differ = differ.any(-1)
            for h in range(n_heads):
                edit = torch.zeros_like(differ)
                pm = masks[0]
                if site.name == "z":
                    edit[:, h] = pm & differ[:, h]
                else:
                    edit[h] = pm & differ[h]
                jobs.append(Job(layer, first_edit(edit[..., None], site), edit[..., None]))
        else:
            differ = differ.any(-1)
            for pm in masks:
                edit = (pm & differ)[:, None]
                jobs.append(Job(layer, first_edit(edit, site), edit))
    return jobs


def activation_patch(
    model: Any,
    clean: MMInputs | Sample,
    corrupt: MMInputs | Sample,
    hook: str = "resid_pre",
    positions: Positions = "each",
    metric: str | Metric | None = None,
    direction: str = "denoise",
    *,
    layers: Sequence[int] | None = None,
    answers: tuple[int | str, int | str] | None = None,
    at: str | int = "last",
    edited: Bool[Tensor, "batch pos"] | None = None,
    batch_size: int = 16,
) -> PatchingResult:
    """Patch one site at every layer and every position (or group, or head); measure the metric.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        clean: Clean inputs (batch 1) or a :class:`~mmlens.data.sample.Sample`.
        corrupt: Corrupt inputs lined up with ``clean`` (see :mod:`mmlens.patching.counterfactuals`).
        hook: ``resid_pre|resid_mid|resid_post|attn_out|mlp_out`` (decoder), ``z`` or ``pattern``
            (one column per head), ``image_embed`` (one column per image token), or
            ``vision_resid_pre|...`` (vision tower, one column per tower position).
        positions: ``"each"`` (one column per position), group names or masks (one column per
            group: its positions are patched together), ``"all"``. Head sites patch the
            positions it selects (``"each"`` = all; ``pattern``: the query rows).
        metric: None / ``"logit_diff"`` (clean answer − corrupt answer logit), ``"prob"`` (clean
            answer's probability) or a callable on ``[batch, d_vocab]`` logits at ``at``.
        direction: ``"denoise"``: clean activations into the corrupt run; ``"noise"``: corrupt
            activations into the clean run.
        layers: Layers to patch (default all of the site's tower).
        answers: ``(clean, corrupt)`` answer tokens (ids or strings) for the default metrics.
        at: Position of the metric: a single-position group or an index.
        edited: Text positions allowed to differ between the prompts (an edited word).
        batch_size: Patched runs per forward.

    Returns:
        A :class:`PatchingResult` with ``raw`` and ``values`` of shape ``[layer, column]``.

    Raises:
        MisalignedInputsError: the inputs do not line up or are not batch 1.
        DegenerateMetricError: the metric does not tell the clean and corrupt runs apart.
    """
    site = get_site(hook)
    if site.tower == "vision" and model.vlm_cfg.image_grid_pinpoints:
        raise MMLensError("vision-tower patching supports single-view models (LLaVA-1.5 style), not anyres tiling.")
    if site.tower == "vision" and model.vlm_cfg.vision.packed:
        raise MMLensError(
            "vision-tower patching runs one copy of the image per patched column, but Qwen2-VL's tower packs all "
            "images into one sequence: patch its image tokens in the decoder instead (hook='image_embed' or "
            "'resid_pre' with positions='image')."
        )
    n_layers = model.vlm_cfg.vision.n_layers if site.tower == "vision" else model.cfg.n_layers
    layers = check_layers(list(range(n_layers)) if layers is None else list(layers), n_layers, site)
    names = [site.hook(layer) for layer in layers]
    pair = cache_pair(model, clean, corrupt, names, metric, answers, at, edited)
    base, source = pair.base_source(direction)
    inputs = pair.clean.inputs
    n_pos = pair.clean.acts[names[0]].shape[site.pos_axis]
    if site.per_head:
        n_heads = model.cfg.n_heads
        every = isinstance(positions, str) and positions in ("each", "all")
        pos_masks = [torch.ones(n_pos, dtype=torch.bool)] if every else [
            torch.stack(list(named_masks(inputs, positions, n_pos, site).values())).any(0)]
        jobs = build_jobs(site, layers, base, source, pos_masks, n_heads)
        labels, axis, pos_index = [f"h{h}" for h in range(n_heads)], "head", []
    else:
        masks, labels, axis = columns(model, inputs, site, positions, n_pos)
        jobs = build_jobs(site, layers, base, source, masks, 0)
        pos_index = [int(m.nonzero()[0]) for m in masks] if axis == "position" else []
    raw = run_jobs(model, site, base, source, jobs, pair.metric, pair.at, batch_size).view(len(layers), -1)
    clean_value, corrupt_value = pair.value(pair.clean), pair.value(pair.corrupt)
    return PatchingResult(
        raw=raw, values=normalise(raw, clean_value, corrupt_value), method="activation", hook=site.name,
        axis=axis, layers=tuple(layers), labels=tuple(labels), positions=tuple(pos_index),
        clean_metric=clean_value, corrupt_metric=corrupt_value, metric=pair.metric_name,
        direction=direction, inputs=inputs, image=pair.image,
    )
