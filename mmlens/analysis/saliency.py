"""Attention × gradient saliency and the seed-003 flow metrics (methods.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from mmlens.analysis.grad import activation_grads
from mmlens.errors import MMLensError
from mmlens.inputs import MMInputs

VARIANTS = ("paper", "released_code")
METRICS = ("S_sys", "S_img", "S_ins", "S_vv", "S_vt")


def saliency_matrix(
    pattern: Float[Tensor, "batch head_index query_pos key_pos"],
    grad: Float[Tensor, "batch head_index query_pos key_pos"],
    variant: str = "paper",
) -> Float[Tensor, "batch query_pos key_pos"]:
    """I_l from one layer's attention and its gradient.

    ``paper``: ``|Σ_h A_h ⊙ ∂L/∂A_h|`` (abs after summing heads; Wang et al. 2023).
    ``released_code``: ``mean_h(A_h² ⊙ |∂L/∂A_h|)`` (an extra factor A, abs before the mean).
    """
    if variant == "paper":
        return (pattern * grad).sum(1).abs()
    if variant == "released_code":
        return (pattern.pow(2) * grad.abs()).mean(1)
    raise MMLensError(f"variant must be one of {VARIANTS}, not {variant!r}.")


def group_metrics(
    I: Float[Tensor, "batch query_pos key_pos"], system: Tensor, image: Tensor, instruction: Tensor, aggregate: str = "source"
) -> dict[str, Float[Tensor, " batch"]]:
    """S_sys, S_img, S_ins, S_vv and S_vt of one layer (rows receive, columns send).

    ``aggregate="source"`` (the paper's formula) sums a group's columns over all rows;
    ``"receiving"`` (the released code) sums a group's rows over all columns.
    """
    s, v, ins = system.float(), image.float(), instruction.float()

    def flow(rows: Tensor, cols: Tensor) -> Tensor:
        return torch.einsum("bq,bqk,bk->b", rows, I, cols)

    everything = torch.ones_like(s)
    out = {}
    for name, g in (("S_sys", s), ("S_img", v), ("S_ins", ins)):
        total = flow(everything, g) if aggregate == "source" else flow(g, everything)
        out[name] = total / g.sum(-1).clamp(min=1)
    out["S_vv"] = flow(v, v) / v.sum(-1).clamp(min=1)
    out["S_vt"] = flow(ins, v) / v.sum(-1).clamp(min=1)
    return out


@dataclass(frozen=True)
class SaliencyResult:
    """Per-layer flow metrics (both aggregation conventions) and, if asked, the matrices I_l.

    Attributes:
        metrics: ``aggregate → metric name → [batch, layer]``.
        matrices: ``[batch, layer, query_pos, key_pos]`` when ``keep_matrices`` was set.
        target: ``[batch]`` target token ids.
        variant: ``"paper"`` or ``"released_code"``.
    """

    metrics: dict[str, dict[str, Float[Tensor, "batch layer"]]]
    matrices: Tensor | None
    target: Tensor
    variant: str

    def to_dataframe(self) -> pd.DataFrame:
        rows = []
        for agg, table in self.metrics.items():
            for name, values in table.items():
                for b in range(values.shape[0]):
                    for layer in range(values.shape[1]):
                        rows.append((b, layer, agg, name, float(values[b, layer])))
        return pd.DataFrame(rows, columns=["row", "layer", "aggregate", "metric", "value"])


def saliency(
    model,
    inputs: MMInputs,
    target: Tensor | int | None = None,
    variant: str = "paper",
    *,
    keep_matrices: bool = False,
    instruction: str = "user",
) -> SaliencyResult:
    """Saliency I_l = attention × gradient of the target's cross-entropy at ``last``, per layer.

    Gradients are taken at ``blocks.{l}.attn.hook_pattern``. Each layer's matrix is reduced to the
    flow metrics inside its backward hook and dropped, unless ``keep_matrices``.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        inputs: Prepared inputs (groups ``system``, ``image`` and ``instruction`` are used).
        target: Target token id(s); defaults to the model's own prediction at ``last``.
        variant: ``"paper"`` (default) or ``"released_code"``; see :func:`saliency_matrix`.
        keep_matrices: Also return every I_l (``[batch, layer, pos, pos]``).
        instruction: Group playing the instruction set I (default ``user``).

    References: seed 003 §2–3.
    """
    if variant not in VARIANTS:
        raise MMLensError(f"variant must be one of {VARIANTS}, not {variant!r}.")
    g = inputs.groups
    n_layers = model.cfg.n_layers
    patterns: dict[int, Tensor] = {}
    results: dict[str, dict[str, list]] = {a: {m: [None] * n_layers for m in METRICS} for a in ("source", "receiving")}
    kept: list[Tensor | None] = [None] * n_layers

    def keep_pattern(x: Tensor, hook) -> None:
        patterns[hook.layer()] = x.detach()

    def reduce(grad: Tensor, hook) -> None:
        layer = hook.layer()
        I = saliency_matrix(patterns.pop(layer).float(), grad.float(), variant)
        for agg in results:
            for name, value in group_metrics(I, g["system"], g["image"], g[instruction], agg).items():
                results[agg][name][layer] = value
        if keep_matrices:
            kept[layer] = I

    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    with activation_grads(model) as leaves, model.hooks(
        fwd_hooks=leaves + [(n, keep_pattern) for n in names], bwd_hooks=[(n, reduce) for n in names]
    ):
        logits = model(inputs)
        last = logits[g.require("last")]  # [batch, d_vocab]
        tgt = last.argmax(-1) if target is None else torch.as_tensor(target).expand(last.shape[0])
        loss = torch.nn.functional.cross_entropy(last.float(), tgt, reduction="sum")
        loss.backward()
    metrics = {a: {m: torch.stack(v, dim=1).detach() for m, v in t.items()} for a, t in results.items()}
    matrices = torch.stack(kept, dim=1).detach() if keep_matrices else None
    return SaliencyResult(metrics, matrices, tgt.detach(), variant)


def flow_metrics(model, inputs: MMInputs, target: Tensor | int | None = None, variant: str = "paper") -> pd.DataFrame:
    """S_sys, S_img, S_ins, S_vv and S_vt per layer under both aggregation conventions, as a
    tidy DataFrame (columns row, layer, aggregate, metric, value)."""
    return saliency(model, inputs, target, variant).to_dataframe()
