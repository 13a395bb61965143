"""Grad-CAM and LLaVA-CAM over image tokens, for decoder and vision-encoder layers (methods.md §6)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from mmlens.analysis.grad import activation_grads
from mmlens.errors import MMLensError, check_layer
from mmlens.geometry_anyres import BASE
from mmlens.inputs import MMInputs
from mmlens.models.anyres import n_views
from mmlens.samples import greedy_answer

VARIANTS = ("standard", "released_code")


@dataclass(frozen=True)
class CamResult:
    """Heat maps on the patch grid.

    Attributes:
        heat: ``[batch, layer, grid, grid]``, max-normalised (and thresholded for ``released_code``).
        raw: ``[batch, layer, grid, grid]`` before normalisation (averaged over noisy copies when smoothed).
        layers: The layers, in order.
        tower: ``"decoder"`` or ``"vision"``.
        answers: The teacher-forced answer of each row.
    """

    heat: Float[Tensor, "batch layer grid_h grid_w"]
    raw: Float[Tensor, "batch layer grid_h grid_w"]
    layers: tuple[int, ...]
    tower: str
    answers: tuple[str, ...]


def _teacher_forced(model, inputs: MMInputs, answers: Sequence[str]):
    """Prompt + answer ids (answers right-padded) and, per row, the (position, token) pairs of z."""
    tok = model.processor.tokenizer
    ans = [tok(a, add_special_tokens=False)["input_ids"] for a in answers]
    width = max(len(a) for a in ans)
    b, p = inputs.input_ids.shape
    extra = torch.zeros(b, width, dtype=torch.long)
    extra_mask = torch.zeros(b, width, dtype=torch.long)
    targets = []
    for r, a in enumerate(ans):
        extra[r, : len(a)] = torch.tensor(a)
        extra_mask[r, : len(a)] = 1
        targets += [(r, p - 1 + t, tok_id) for t, tok_id in enumerate(a)]  # row last+t predicts token t
    ids = torch.cat([inputs.input_ids, extra], 1)
    mask = torch.cat([inputs.attention_mask, extra_mask], 1)
    return ids, mask, targets


def _cam(feats: Tensor, grads: Tensor, variant: str) -> Tensor:
    """Raw class-activation map ``[batch, n_pos]`` from features and gradients ``[batch, n_pos, d]``."""
    if variant == "standard":
        alpha = grads.mean(1, keepdim=True)
        return torch.relu((alpha * feats).sum(-1))
    alpha = torch.relu(grads).mean(1, keepdim=True)
    return (alpha * feats).mean(-1)


def _normalise(raw: Tensor, variant: str) -> Tensor:
    peak = raw.flatten(-2).max(-1).values[..., None, None]
    heat = torch.where(peak > 0, raw / peak.clamp(min=1e-12), torch.zeros_like(raw))
    return torch.where(heat < 0.5, torch.zeros_like(heat), heat) if variant == "released_code" else heat


def grad_cam(
    model,
    inputs: MMInputs,
    answer: str | Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    tower: str = "decoder",
    variant: str = "standard",
    smooth: tuple[int, float] | None = None,
    seed: int = 0,
) -> CamResult:
    """Grad-CAM of the answer's logits over image patches, per layer.

    The answer is teacher-forced (prompt + all answer tokens in one forward) and the target is
    ``z = Σ_t logit[last + t, answer_t]``. Features are the MLP input (post-attention norm output)
    at image positions for the decoder, or block outputs at patch positions (CLS dropped) for
    the vision tower.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        inputs: Prepared inputs (pad or crop geometry, any batch). For anyres models (LLaVA-NeXT,
            LLaVA-OneVision) the map covers the base view, which shows the whole image; tile
            patches and newline slots are left out.
        answer: Answer text per row; the model's greedy answer when None.
        layers: Layers of ``tower`` (all when None).
        tower: ``"decoder"`` or ``"vision"``.
        variant: ``"standard"`` (α = mean gradient, ReLU(Σ α A), max-normalised) or
            ``"released_code"`` (ReLU the gradients before pooling, channel mean, values < 0.5 → 0).
        smooth: ``(n, sigma)``: LLaVA-CAM, averaging the raw heat over ``n`` copies of the image
            with N(0, sigma²) noise on [0, 1] pixels (the code used n=50, sigma=0.1).
        seed: Seed of the smoothing noise.

    References: seed 000 §3.1, seed 001 §3.1.
    """
    if variant not in VARIANTS or tower not in ("decoder", "vision"):
        raise MMLensError(f"variant must be one of {VARIANTS} and tower 'decoder' or 'vision'.")
    n_layers = model.cfg.n_layers if tower == "decoder" else model.vlm_cfg.vision.n_layers
    layers = tuple(check_layer(layer, n_layers, tower) for layer in (layers if layers is not None else range(n_layers)))
    if answer is None:
        answer = [greedy_answer(model, _row(inputs, r)) for r in range(len(inputs))]
    answers = [answer] * len(inputs) if isinstance(answer, str) else list(answer)
    ids, mask, targets = _teacher_forced(model, inputs, answers)
    copies = [inputs.pixel_values]
    if smooth is not None:
        n, sigma = smooth
        std = torch.tensor(model.processor.image_processor.image_std).view(1, 3, 1, 1)
        gen = torch.Generator().manual_seed(seed)
        # Noise on [0, 1] pixels is noise / std on normalised pixels.
        copies = [inputs.pixel_values + torch.randn(inputs.pixel_values.shape, generator=gen) * sigma / std for _ in range(n)]
    raw = torch.stack([_raw_cam(model, inputs, ids, mask, px, targets, layers, tower, variant) for px in copies]).mean(0)
    return CamResult(_normalise(raw, variant), raw, layers, tower, tuple(answers))


def _row(inputs: MMInputs, r: int) -> MMInputs:
    from dataclasses import replace

    sizes = None if inputs.image_sizes is None else inputs.image_sizes[r : r + 1]
    return replace(inputs, input_ids=inputs.input_ids[r : r + 1], attention_mask=inputs.attention_mask[r : r + 1],
                   pixel_values=inputs.pixel_values[r : r + 1], image_sizes=sizes)


def _raw_cam(model, inputs, ids, mask, pixel_values, targets, layers, tower, variant) -> Tensor:
    grid = model.vlm_cfg.vision.grid
    names = (
        [f"blocks.{layer}.ln2.hook_normalized" for layer in layers]
        if tower == "decoder"
        else [f"vision_encoder.blocks.{layer}.hook_resid_post" for layer in layers]
    )
    stash: dict[str, Tensor] = {}

    def keep(x: Tensor, hook) -> None:
        stash[hook.name] = x

    with activation_grads(model) as leaves, model.hooks(fwd_hooks=leaves + [(n, keep) for n in names]):
        logits = model(input_ids=ids, pixel_values=pixel_values, attention_mask=mask, image_sizes=inputs.image_sizes)
        r, pos, tok = (torch.tensor(v) for v in zip(*targets))
        z = logits[r, pos, tok].sum()
        grads = torch.autograd.grad(z, [stash[n] for n in names])
    maps = []
    b = ids.shape[0]
    # Image positions that show a base-view patch (not CLS, not anyres tiles or newline slots).
    image = (inputs.image_grid.row >= 0) & (inputs.image_grid.kind == BASE)
    for layer, name, grad in zip(layers, names, grads):
        feat = stash[name].detach()
        if tower == "decoder":
            # Features are the MLP input w ⊙ x̂; by the chain rule ∂z/∂(w ⊙ x̂) = (∂z/∂x̂) / w.
            w = model.blocks[layer].ln2.w.detach()
            feat, grad = feat * w, torch.where(w != 0, grad / w, torch.zeros_like(grad))
            p = inputs.input_ids.shape[1]
            sel = image[:, :p]
            order = (inputs.image_grid.row * grid + inputs.image_grid.col)[sel].view(b, -1)
            f = feat[:, :p][sel].view(b, -1, feat.shape[-1])
            g = grad[:, :p][sel].view(b, -1, grad.shape[-1])
            f = torch.gather(f, 1, order.argsort(1)[..., None].expand_as(f))
            g = torch.gather(g, 1, order.argsort(1)[..., None].expand_as(g))
        else:
            skip = int(model.vlm_cfg.vision.has_cls)
            views = _base_views(model, inputs)
            f, g = feat[views, skip:], grad[views, skip:]
        maps.append(_cam(f.float(), g.float(), variant).view(b, grid, grid))
    return torch.stack(maps, 1).detach()


def _base_views(model, inputs: MMInputs) -> Tensor:
    """Indices of each image's base view among the views the vision tower ran on."""
    if inputs.image_sizes is None:
        return torch.arange(len(inputs))
    cfg = model.vlm_cfg
    counts = [n_views(size, cfg.image_grid_pinpoints, cfg.vision.image_size) for size in inputs.image_sizes.tolist()]
    return torch.tensor([0, *counts[:-1]]).cumsum(0)
