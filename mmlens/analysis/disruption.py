"""Disrupting visual information flows: label/score consistency, E_l and D_l (docs/methods.md#disruption)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from mmlens.conventions import resolve
from mmlens.errors import MMLensError, check_layer
from mmlens.inputs import MMInputs
from mmlens.inputs.tokens import require_nonempty
from mmlens.interventions.knockout import knockout, onward
from mmlens.result import FrameResult
from mmlens.viz.saliency import plot_disruption

FLOWS = {"instruction<-image": "user", "image<-image": "image", "random<-image": "random"}


@dataclass(frozen=True)
class DisruptionResult(FrameResult):
    """Per sample, flow and layer: whether the prediction survived and the top-k Jaccard similarity.

    Combine the flows of one dataset with ``DisruptionResult.concat([vt, vv])`` to get ``D_l``.
    """

    COLUMNS: ClassVar[dict[str, str]] = {
        "sample": "sample id (a study's Sample.id; '0' for a single input)",
        "flow": "disrupted flow (FLOWS key)",
        "layer": "disrupted layer (first layer for scope 'onward')",
        "same_label": "whether the top-1 prediction at `last` is unchanged",
        "jaccard": "Jaccard similarity of the clean and disrupted top-k token sets",
    }

    def per_layer(self) -> pd.DataFrame:
        """Label consistency, score consistency and ``E_l = S − Ŝ``, one row per flow and layer
        (columns flow, layer, label_consistency, score_consistency, n, E).

        ``S`` is the number of samples (each is consistent with itself without disruption) and
        ``Ŝ`` the summed score consistency after disruption ("Unraveling the Shift" App. D).
        """
        g = self.frame.groupby(["flow", "layer"])
        out = g.agg(label_consistency=("same_label", "mean"), score_consistency=("jaccard", "mean"), n=("jaccard", "size"))
        out["E"] = out["n"] - g["jaccard"].sum()
        return out.reset_index()

    def d_metric(self) -> pd.DataFrame:
        """``D_l = log(E_vv,l / E_vt,l)``, one row per layer (columns layer, E_vv, E_vt, D).

        Raises:
            MMLensError: the result lacks the ``image<-image`` or ``instruction<-image`` flow.
        """
        missing = {"image<-image", "instruction<-image"} - set(self.frame["flow"])
        if missing:
            raise MMLensError(f"D_l needs both flows, {sorted(missing)} missing: DisruptionResult.concat the runs of both.")
        table = self.per_layer().pivot(index="layer", columns="flow", values="E")
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.log(table["image<-image"] / table["instruction<-image"])
        return pd.DataFrame(
            {"layer": table.index, "E_vv": table["image<-image"], "E_vt": table["instruction<-image"], "D": d}
        ).reset_index(drop=True)

    def plot(self) -> Figure:
        """Label and score consistency per layer for each flow, and D_l when both flows are
        present ("Unraveling the Shift" Fig. 4–5)."""
        both = {"image<-image", "instruction<-image"} <= set(self.frame["flow"])
        return plot_disruption(self.per_layer(), self.d_metric() if both else None)


def _targets(inputs: MMInputs, flow: str, rng: np.random.Generator) -> torch.Tensor:
    g = inputs.groups
    if flow != "random":
        return g[flow]
    # The control: as many rows as the instruction has, drawn at random among the other text rows.
    real = inputs.attention_mask.bool() & ~g["image"] & ~g["user"]
    out = torch.zeros_like(real)
    for r in range(real.shape[0]):
        pool = real[r].nonzero().flatten().numpy()
        k = min(int(g["user"][r].sum()), len(pool))
        out[r, rng.choice(pool, size=k, replace=False)] = True
    return out


def disruption(
    model,
    inputs: MMInputs,
    flow: str = "instruction<-image",
    layers: Iterable[int] | None = None,
    scope: str | None = None,
    mode: str | None = None,
    *,
    top_k: int = 5,
    seed: int | np.random.Generator = 0,
    convention: str = "paper",
) -> DisruptionResult:
    """Block image keys for a group of queries at each layer and measure how predictions change.

    Over a dataset: :func:`mmlens.studies.disruption_study`.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        inputs: Prepared batch-1 inputs.
        flow: ``"instruction<-image"`` (E_vt), ``"image<-image"`` (E_vv) or ``"random<-image"``
            (the same number of random text rows as the instruction has).
        layers: Layers to disrupt (all by default).
        scope: ``"single"`` layer or ``"onward"`` (layer l to the last; the released code's
            effective scope). None: from ``convention``.
        mode: ``"post_softmax"`` (A = 0 without renormalising, the paper's text) or
            ``"pre_softmax"`` (−∞ mask, the released code). None: from ``convention``.
        top_k: Size of the top-k sets compared by the Jaccard score consistency.
        seed: Seed (or generator, shared across a study's samples) of the random control rows.
        convention: ``"paper"`` (``scope="single"``, ``mode="post_softmax"``) or
            ``"released_code"`` (``"onward"``, ``"pre_softmax"``); see docs/conventions.md.

    Raises:
        MMLensError: an unknown flow or scope, or inputs with more than one batch row.
        EmptyGroupError: the flow's queries are empty (e.g. no instruction tokens).

    References: "Unraveling the Shift" §3.2–3.3, Fig. 4–5, App. D.
    """
    opts = resolve("disruption", convention, scope=scope, mode=mode)
    scope, mode = opts["scope"], opts["mode"]
    if flow not in FLOWS or scope not in ("single", "onward"):
        raise MMLensError(f"flow must be one of {sorted(FLOWS)} and scope 'single' or 'onward'.")
    if len(inputs) != 1:
        raise MMLensError(f"disruption takes batch-1 inputs, got {len(inputs)} rows: disrupt one prompt at a time.")
    n = model.cfg.n_layers
    layers = [check_layer(layer, n) for layer in (layers if layers is not None else range(n))]
    dst = _targets(inputs, FLOWS[flow], np.random.default_rng(seed))
    require_nonempty({f"{FLOWS[flow]} (the queries of {flow})": dst})  # an empty flow would read as "no effect"
    rows = []
    with torch.no_grad():
        clean = model(inputs)[0, -1]
        clean_top = set(clean.topk(top_k).indices.tolist())
        for layer in layers:
            scope_layers = [layer] if scope == "single" else onward(layer, n)
            hooks = knockout(inputs.groups, "image", dst, scope_layers, mode=mode)
            out = model.run_with_hooks(inputs, fwd_hooks=hooks)[0, -1]
            top = set(out.topk(top_k).indices.tolist())
            rows.append(("0", flow, layer, bool(out.argmax() == clean.argmax()), len(top & clean_top) / len(top | clean_top)))
    return DisruptionResult(pd.DataFrame(rows, columns=list(DisruptionResult.COLUMNS)))
