"""Attention × gradient saliency and the flow metrics of "Unraveling the Shift" (docs/methods.md#saliency-flow)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from mmlens.analysis.grad import activation_grads
from mmlens.conventions import resolve
from mmlens.errors import MMLensError
from mmlens.inputs import MMInputs
from mmlens.inputs.tokens import require_nonempty
from mmlens.result import Result
from mmlens.viz.saliency import plot_flow_metrics

VARIANTS = ("paper", "released_code")
VISION_FLOWS = ("mean", "sum")
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
    I: Float[Tensor, "batch query_pos key_pos"],
    system: Tensor,
    image: Tensor,
    instruction: Tensor,
    aggregate: str = "source",
    vision_flows: str = "mean",
) -> dict[str, Float[Tensor, " batch"]]:
    """S_sys, S_img, S_ins, S_vv and S_vt of one layer (rows receive, columns send).

    ``aggregate="source"`` (the paper's formula) sums a group's columns over all rows;
    ``"receiving"`` (the released code) sums a group's rows over all columns.
    ``vision_flows="mean"`` divides S_vv and S_vt by |V| (the paper's eq. 5–6); ``"sum"`` keeps
    the raw sums (the released code; |V| times larger).
    """
    if vision_flows not in VISION_FLOWS:
        raise MMLensError(f"vision_flows must be one of {VISION_FLOWS}, not {vision_flows!r}.")
    s, v, ins = system.float(), image.float(), instruction.float()

    def flow(rows: Tensor, cols: Tensor) -> Tensor:
        return torch.einsum("bq,bqk,bk->b", rows, I, cols)

    everything = torch.ones_like(s)
    out = {}
    for name, g in (("S_sys", s), ("S_img", v), ("S_ins", ins)):
        total = flow(everything, g) if aggregate == "source" else flow(g, everything)
        out[name] = total / g.sum(-1).clamp(min=1)
    n_v = v.sum(-1).clamp(min=1) if vision_flows == "mean" else torch.ones_like(v[:, 0])
    out["S_vv"] = flow(v, v) / n_v
    out["S_vt"] = flow(ins, v) / n_v
    # A flow from or to an empty group was not measured: NaN, never 0.0.
    for name, used in (("S_sys", (s,)), ("S_img", (v,)), ("S_ins", (ins,)), ("S_vv", (v,)), ("S_vt", (ins, v))):
        for grp in used:
            out[name] = out[name].masked_fill(grp.sum(-1) == 0, float("nan"))
    return out


@dataclass(frozen=True)
class SaliencyResult(Result):
    """Per-layer flow metrics (both aggregation conventions) and, if asked, the matrices I_l.

    Attributes:
        metrics: ``aggregate → metric name → [batch, layer]``.
        matrices: ``[batch, layer, query_pos, key_pos]`` when ``keep_matrices`` was set.
        target: ``[batch]`` target token ids.
        variant: ``"paper"`` or ``"released_code"``.
        vision_flows: ``"mean"`` (S_vv, S_vt divided by |V|) or ``"sum"`` (raw sums).
    """

    COLUMNS: ClassVar[dict[str, str]] = {
        "row": "batch row (input index after concat)",
        "layer": "decoder layer",
        "aggregate": "'source' (the paper's formula) or 'receiving' (the released code)",
        "metric": "S_sys, S_img, S_ins, S_vv or S_vt",
        "value": "the metric's value (its scale follows the loss gradient: compare ratios)",
    }

    metrics: dict[str, dict[str, Float[Tensor, "batch layer"]]]
    matrices: Tensor | None
    target: Tensor
    variant: str
    vision_flows: str = "mean"

    def to_dataframe(self) -> pd.DataFrame:
        rows = []
        for agg, table in self.metrics.items():
            for name, values in table.items():
                for b in range(values.shape[0]):
                    for layer in range(values.shape[1]):
                        rows.append((b, layer, agg, name, float(values[b, layer])))
        return pd.DataFrame(rows, columns=list(self.COLUMNS))

    def plot(self, aggregate: str = "source") -> Figure:
        """Mean S_sys/S_img/S_ins and S_vv/S_vt per layer ("Unraveling the Shift" Fig. 2–3)."""
        return plot_flow_metrics(self.to_dataframe(), aggregate)

    @classmethod
    def concat(cls, results: Sequence[SaliencyResult]) -> SaliencyResult:
        """Stack the rows of results of one variant (matrices are kept only when every result
        has them and their lengths agree).

        Raises:
            MMLensError: no results, or results of different variants or vision_flows.
        """
        if not results or any((r.variant, r.vision_flows) != (results[0].variant, results[0].vision_flows) for r in results):
            raise MMLensError("SaliencyResult.concat needs results of the same variant and vision_flows.")
        first = results[0]
        metrics = {a: {m: torch.cat([r.metrics[a][m] for r in results]) for m in t} for a, t in first.metrics.items()}
        shapes = {None if r.matrices is None else tuple(r.matrices.shape[1:]) for r in results}
        matrices = torch.cat([r.matrices for r in results]) if len(shapes) == 1 and None not in shapes else None
        return cls(metrics, matrices, torch.cat([r.target for r in results]), first.variant, first.vision_flows)


def saliency(
    model,
    inputs: MMInputs,
    target: Tensor | int | None = None,
    variant: str | None = None,
    *,
    keep_matrices: bool = False,
    instruction: str = "user",
    vision_flows: str | None = None,
    convention: str = "paper",
    allow_empty: bool = False,
) -> SaliencyResult:
    """Saliency I_l = attention × gradient of the target's cross-entropy at ``last``, per layer.

    Gradients are taken at ``blocks.{l}.attn.hook_pattern``. Each layer's matrix is reduced to the
    flow metrics inside its backward hook and dropped, unless ``keep_matrices``.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        inputs: Prepared inputs (groups ``system``, ``image`` and ``instruction`` are used).
        target: Target token id(s); defaults to the model's own prediction at ``last``.
        variant: ``"paper"`` or ``"released_code"``; see :func:`saliency_matrix`. None: from
            ``convention``.
        keep_matrices: Also return every I_l (``[batch, layer, pos, pos]``).
        instruction: Group playing the instruction set I (default ``user``).
        vision_flows: ``"mean"`` (S_vv and S_vt divided by |V|, the paper) or ``"sum"`` (raw sums,
            the released code); None: from ``convention``.
        convention: ``"paper"`` or ``"released_code"`` (docs/conventions.md); explicit options
            win. The released code's gold-answer target is chosen by the caller (``target``; see
            :func:`mmlens.studies.saliency_study`), and both aggregations are always returned.
        allow_empty: Accept an empty ``system``, ``image`` or ``instruction`` group (its metrics
            are NaN) instead of raising :class:`~mmlens.errors.EmptyGroupError`.

    References: "Unraveling the Shift" §2.2, §3.1.
    """
    opts = resolve("saliency", convention, variant=variant, vision_flows=vision_flows)
    variant, vision_flows = opts["variant"], opts["vision_flows"]
    if variant not in VARIANTS or vision_flows not in VISION_FLOWS:
        raise MMLensError(f"variant must be one of {VARIANTS} and vision_flows one of {VISION_FLOWS}; got {variant!r}, {vision_flows!r}.")
    g = inputs.groups
    require_nonempty({name: g[name] for name in ("system", "image", instruction)}, allow_empty)
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
            for name, value in group_metrics(I, g["system"], g["image"], g[instruction], agg, vision_flows).items():
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
    return SaliencyResult(metrics, matrices, tgt.detach(), variant, vision_flows)

