"""Grad-CAM and LLaVA-CAM over image tokens, for decoder and vision-encoder layers (docs/methods.md#grad-cam)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from mmlens.analysis.grad import activation_grads
from mmlens.analysis.lens import word_tokens
from mmlens.components.packed_vision import patch_coordinates
from mmlens.conventions import resolve
from mmlens.errors import InvalidInputError, MMLensError, check_layer
from mmlens.geometry import BASE
from mmlens.inputs import MMInputs
from mmlens.geometry import n_views
from mmlens.inputs import greedy_answer
from mmlens.result import Result
from mmlens.viz.saliency import plot_cam

VARIANTS = ("standard", "released_code")
TARGET_ROWS = ("answer", "released_code")


@dataclass(frozen=True)
class CamResult(Result):
    """Heat maps on the patch grid.

    Attributes:
        heat: ``[batch, layer, grid, grid]``, max-normalised (and thresholded for ``released_code``).
        raw: ``[batch, layer, grid, grid]`` before normalisation (averaged over noisy copies when smoothed).
        layers: The layers, in order.
        tower: ``"decoder"`` or ``"vision"``.
        answers: The teacher-forced answer of each row.
    """

    COLUMNS: ClassVar[dict[str, str]] = {
        "row": "batch row (input index after concat)",
        "layer": "layer of `tower`",
        "grid_row": "patch row on the (base view's) patch grid",
        "grid_col": "patch column",
        "heat": "normalised heat (what `plot` draws)",
        "raw": "heat before normalisation",
    }

    heat: Float[Tensor, "batch layer grid_h grid_w"]
    raw: Float[Tensor, "batch layer grid_h grid_w"]
    layers: tuple[int, ...]
    tower: str
    answers: tuple[str, ...]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per batch row, layer and patch."""
        b, n, h, w = self.heat.shape
        idx = pd.MultiIndex.from_product([range(b), self.layers, range(h), range(w)], names=list(self.COLUMNS)[:4])
        return pd.DataFrame({"heat": self.heat.flatten().tolist(), "raw": self.raw.flatten().tolist()}, index=idx).reset_index()

    def plot(self, inputs: MMInputs | None = None, image: Image.Image | None = None, row: int = 0) -> Figure:
        """One map per layer: overlaid on the original image when ``inputs`` and ``image`` are
        given ("From Redundancy to Relevance (v1)" Fig. 3–4), else on the patch grid."""
        titles = [f"{self.tower} layer {layer}" for layer in self.layers]
        question = inputs.prompts[row].split("\n")[-1][:60] + " → " if inputs is not None else ""
        label = "Grad-CAM heat (each layer max-normalised)"
        return plot_cam(self.heat[row], titles, inputs, image, row, f"{question}{self.answers[row]}", label=label)

    @classmethod
    def concat(cls, results: Sequence[CamResult]) -> CamResult:
        """Stack the rows of results over the same layers of the same tower.

        Raises:
            MMLensError: no results, or results over different layers, towers or grids.
        """
        first = results[0] if results else None
        if first is None or any((r.layers, r.tower, r.heat.shape[2:]) != (first.layers, first.tower, first.heat.shape[2:]) for r in results):
            raise MMLensError("CamResult.concat needs results over the same layers of the same tower.")
        answers = tuple(a for r in results for a in r.answers)
        return cls(torch.cat([r.heat for r in results]), torch.cat([r.raw for r in results]), first.layers, first.tower, answers)


def _teacher_forced(model, inputs: MMInputs, answers: Sequence[str], target_rows: str = "answer"):
    """Prompt + answer ids (answers right-padded) and, per row, the (position, token) pairs of z.

    ``target_rows="answer"``: row ``last + t`` predicts answer token ``t``. ``"released_code"``:
    the released code's rows ``n_text + t`` where ``n_text`` counts the prompt with its image as
    one placeholder token (so the rows fall ``n_image - 1`` positions early, usually inside the
    image block), and its tokens are the generated ones, the end-of-sequence token included.
    """
    tok = model.processor.tokenizer
    ans = [word_tokens(tok, a) for a in answers]  # an unknown answer would score <unk>: raise instead
    b, p = inputs.input_ids.shape
    first = p - 1 + torch.zeros(b, dtype=torch.long)
    if target_rows == "released_code":
        eos = model.vlm_cfg.eos_token_id
        ans = [a + ([] if eos is None else [eos]) for a in ans]
        first = p - inputs.groups["image"].sum(-1) + 1
        if any(int(first[r]) + len(a) > p for r, a in enumerate(ans)):
            raise MMLensError(
                "target_rows='released_code' puts the answer rows past the prompt (fewer image tokens than "
                "answer tokens + 2): the released code fails there too; use target_rows='answer'."
            )
    width = max(len(a) for a in ans)
    extra = torch.zeros(b, width, dtype=torch.long)
    extra_mask = torch.zeros(b, width, dtype=torch.long)
    targets = []
    for r, a in enumerate(ans):
        extra[r, : len(a)] = torch.tensor(a)
        extra_mask[r, : len(a)] = 1
        targets += [(r, int(first[r]) + t, tok_id) for t, tok_id in enumerate(a)]  # row first+t scores token t
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
    variant: str | None = None,
    smooth: tuple[int, float] | None = None,
    seed: int = 0,
    *,
    target_rows: str | None = None,
    convention: str = "paper",
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
            patches and newline slots are left out. For InternVL it covers the thumbnail (or the
            only view): the tower's patch grid, or for the decoder the pixel-shuffled token grid.
            For Qwen2-VL, the image's own grid: its patch rows × columns (vision), or the 2×2-merged
            token grid (decoder); every row of a batch must then have the same grid (run rows of
            other sizes separately, ``inputs.row(r)``).
        answer: Answer text per row (one string: the same for every row); the model's greedy
            answer when None. All its tokens are scored.
        layers: Layers of ``tower`` (all when None).
        tower: ``"decoder"`` or ``"vision"``.
        variant: ``"standard"`` (α = mean gradient, ReLU(Σ α A), max-normalised) or
            ``"released_code"`` (ReLU the gradients before pooling, channel mean, values < 0.5 → 0).
            None: from ``convention``.
        smooth: ``(n, sigma)``: LLaVA-CAM, averaging the raw heat over ``n`` copies of the image
            with N(0, sigma²) noise on [0, 1] pixels (the code used n=50, sigma=0.1).
        seed: Seed of the smoothing noise.
        target_rows: ``"answer"`` (row ``last + t`` scores answer token ``t``) or
            ``"released_code"`` (the released code's rows, counted as if the image were one
            token, and the end-of-sequence token added); None: from ``convention``.
        convention: ``"paper"`` or ``"released_code"`` (docs/conventions.md); explicit options win.

    Raises:
        UnknownWordError: an answer the tokenizer cannot represent (the map would be ``<unk>``'s).
        InvalidInputError: a list of answers whose length is not the batch size, or (Qwen2-VL)
            batch rows whose images have different grids.

    References: "From Redundancy to Relevance" §3.1, App. A.1; "From Redundancy to Relevance (v1)" §3.1.
    """
    opts = resolve("grad_cam", convention, variant=variant, target_rows=target_rows)
    variant, target_rows = opts["variant"], opts["target_rows"]
    if variant not in VARIANTS or target_rows not in TARGET_ROWS or tower not in ("decoder", "vision"):
        raise MMLensError(
            f"variant must be one of {VARIANTS}, target_rows one of {TARGET_ROWS} and tower 'decoder' or 'vision'; "
            f"got {variant!r}, {target_rows!r}, {tower!r}."
        )
    if tower == "decoder" and model.vlm_cfg.qformer is not None:
        raise InvalidInputError(
            "InstructBLIP's image tokens are Q-Former queries, not a patch grid: use tower='vision' (Grad-CAM "
            "on the vision blocks, gradients through the Q-Former to the patches)."
        )
    n_layers = model.cfg.n_layers if tower == "decoder" else model.vlm_cfg.vision.n_layers
    layers = tuple(check_layer(layer, n_layers, tower) for layer in (layers if layers is not None else range(n_layers)))
    if answer is None:
        answer = [greedy_answer(model, _row(inputs, r)) for r in range(len(inputs))]
    answers = [answer] * len(inputs) if isinstance(answer, str) else list(answer)
    if len(answers) != len(inputs):
        raise InvalidInputError(f"got {len(answers)} answers for {len(inputs)} input rows: give one answer per row (or one string).")
    ids, mask, targets = _teacher_forced(model, inputs, answers, target_rows)
    copies = [inputs.pixel_values]
    if smooth is not None:
        n, sigma = smooth
        std = torch.tensor(model.processor.image_processor.image_std).view(1, 3, 1, 1)
        if inputs.pixel_values.dim() == 2:  # packed patches (Qwen2-VL): rows of (channel, frame, y, x)
            std = std.flatten().repeat_interleave(inputs.pixel_values.shape[-1] // 3)
        gen = torch.Generator().manual_seed(seed)
        # Noise on [0, 1] pixels is noise / std on normalised pixels.
        copies = [inputs.pixel_values + torch.randn(inputs.pixel_values.shape, generator=gen) * sigma / std for _ in range(n)]
    raw = torch.stack([_raw_cam(model, inputs, ids, mask, px, targets, layers, tower, variant) for px in copies]).mean(0)
    return CamResult(_normalise(raw, variant), raw, layers, tower, tuple(answers))


def _row(inputs: MMInputs, r: int) -> MMInputs:
    return inputs.row(r)


def _raw_cam(model, inputs, ids, mask, pixel_values, targets, layers, tower, variant) -> Tensor:
    grid = model.vlm_cfg.vision.grid
    token_grid = model.vlm_cfg.token_grid  # image tokens per side of a view (InternVL: after pixel shuffle)
    packed = _packed_grid(model, inputs) if model.vlm_cfg.vision.packed else None
    names = (
        [f"blocks.{layer}.ln2.hook_normalized" for layer in layers]
        if tower == "decoder"
        else [f"vision_encoder.blocks.{layer}.hook_resid_post" for layer in layers]
    )
    stash: dict[str, Tensor] = {}

    def keep(x: Tensor, hook) -> None:
        stash[hook.name] = x

    with activation_grads(model) as leaves, model.hooks(fwd_hooks=leaves + [(n, keep) for n in names]):
        logits = model(input_ids=ids, pixel_values=pixel_values, attention_mask=mask, image_sizes=inputs.image_sizes,
                       qformer_input_ids=inputs.qformer_input_ids, qformer_attention_mask=inputs.qformer_attention_mask,
                       image_grid_thw=inputs.image_grid_thw)
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
            cols = token_grid if packed is None else packed[1] // model.vlm_cfg.vision.merge_size
            order = (inputs.image_grid.row * cols + inputs.image_grid.col)[sel].view(b, -1)
            f = feat[:, :p][sel].view(b, -1, feat.shape[-1])
            g = grad[:, :p][sel].view(b, -1, grad.shape[-1])
            f = torch.gather(f, 1, order.argsort(1)[..., None].expand_as(f))
            g = torch.gather(g, 1, order.argsort(1)[..., None].expand_as(g))
        elif packed is not None:
            f, g = (_packed_patch_grid(x, inputs.image_grid_thw, model.vlm_cfg.vision.merge_size) for x in (feat, grad))
        else:
            skip = int(model.vlm_cfg.vision.has_cls)
            views = _base_views(model, inputs)
            f, g = feat[views, skip:], grad[views, skip:]
        side = (token_grid, token_grid) if tower == "decoder" else (grid, grid)
        if packed is not None:
            merge = model.vlm_cfg.vision.merge_size
            side = (packed[0] // merge, packed[1] // merge) if tower == "decoder" else packed
        maps.append(_cam(f.float(), g.float(), variant).view(b, *side))
    return torch.stack(maps, 1).detach()


def _packed_grid(model, inputs: MMInputs) -> tuple[int, int]:
    """Qwen2-VL: the (rows, columns) patch grid every batch row's image shares.

    Raises:
        InvalidInputError: rows whose images have different grids (their maps cannot be stacked).
    """
    grids = {tuple(int(v) for v in g[1:]) for g in inputs.image_grid_thw.tolist()}
    if len(grids) != 1 or len(inputs.image_grid_thw) != len(inputs):
        raise InvalidInputError(
            f"Grad-CAM stacks one map per row, but these rows' images have patch grids {sorted(grids)} (rows x "
            "columns): run grad_cam on each row alone (inputs.row(r)), or resize the images to one size."
        )
    return grids.pop()


def _packed_patch_grid(x: Tensor, grid_thw: Tensor, merge: int) -> Tensor:
    """Packed tower activations ``[1, v_pos, d]`` as ``[n_img, rows · cols, d]``, each image's
    patches row-major (the processor packs them ``merge × merge`` block by block)."""
    counts = grid_thw.prod(-1).tolist()
    coords = patch_coordinates(grid_thw.cpu(), merge)
    out = []
    for image, c in zip(x[0].split(counts), coords.split(counts)):
        order = (c[:, 2] * int(c[:, 3].max() + 1) + c[:, 3]).argsort().to(x.device)
        out.append(image[order])
    return torch.stack(out)


def _base_views(model, inputs: MMInputs) -> Tensor:
    """Indices of each image's base view among the views the vision tower ran on."""
    if model.vlm_cfg.tiled_views:  # InternVL: each image's views in turn, the thumbnail (or only view) last
        counts = [v.n_views for v in inputs.image_grid.views]
        return torch.tensor([0, *counts[:-1]]).cumsum(0) + torch.tensor([v.base_view for v in inputs.image_grid.views])
    if inputs.image_sizes is None:
        return torch.arange(len(inputs))
    cfg = model.vlm_cfg
    counts = [n_views(size, cfg.image_grid_pinpoints, cfg.vision.image_size) for size in inputs.image_sizes.tolist()]
    return torch.tensor([0, *counts[:-1]]).cumsum(0)
