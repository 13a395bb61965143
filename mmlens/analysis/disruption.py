"""Disrupting visual information flows: label/score consistency, E_l and D_l (methods.md §5)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mmlens.data.sample import Sample
from mmlens.errors import MMLensError, check_layer
from mmlens.inputs import MMInputs
from mmlens.interventions.knockout import knockout, onward
from mmlens.samples import sample_inputs

FLOWS = {"instruction<-image": "user", "image<-image": "image", "random<-image": "random"}


@dataclass(frozen=True)
class DisruptionResult:
    """Per sample and layer: whether the prediction survived and the top-5 Jaccard similarity."""

    df: pd.DataFrame

    def per_layer(self) -> pd.DataFrame:
        """Label consistency, score consistency and ``E_l = S − Ŝ`` per flow and layer.

        ``S`` is the number of samples (each is consistent with itself without disruption) and
        ``Ŝ`` the summed score consistency after disruption (seed 003 App. D).
        """
        g = self.df.groupby(["flow", "layer"])
        out = g.agg(label_consistency=("same_label", "mean"), score_consistency=("jaccard", "mean"), n=("jaccard", "size"))
        out["E"] = out["n"] - g["jaccard"].sum()
        return out.reset_index()


def d_metric(result: DisruptionResult) -> pd.DataFrame:
    """``D_l = log(E_vv,l / E_vt,l)`` per layer (needs both flows in ``result``)."""
    table = result.per_layer().pivot(index="layer", columns="flow", values="E")
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.log(table["image<-image"] / table["instruction<-image"])
    return pd.DataFrame({"layer": table.index, "E_vv": table["image<-image"], "E_vt": table["instruction<-image"], "D": d}).reset_index(drop=True)


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
    samples: Sequence[Sample] | Sequence[MMInputs],
    flow: str = "instruction<-image",
    layers: Iterable[int] | None = None,
    scope: str = "single",
    mode: str = "post_softmax",
    *,
    template: str = "vicuna_v1",
    top_k: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> DisruptionResult:
    """Block image keys for a group of queries at each layer and measure how predictions change.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        samples: Samples or prepared batch-1 inputs.
        flow: ``"instruction<-image"`` (E_vt), ``"image<-image"`` (E_vv) or ``"random<-image"``
            (the same number of random text rows as the instruction has).
        layers: Layers to disrupt (all by default).
        scope: ``"single"`` layer or ``"onward"`` (layer l to the last; the released code's
            effective scope).
        mode: ``"post_softmax"`` (A = 0 without renormalising, the paper's text) or
            ``"pre_softmax"`` (−∞ mask, the released code).
        top_k: Size of the top-k sets compared by the Jaccard score consistency.
        seed: Seed of the random control rows.

    References: seed 003 §3.2–3.3, Fig. 4–5, App. D.
    """
    if flow not in FLOWS or scope not in ("single", "onward"):
        raise MMLensError(f"flow must be one of {sorted(FLOWS)} and scope 'single' or 'onward'.")
    n = model.cfg.n_layers
    layers = [check_layer(layer, n) for layer in (layers if layers is not None else range(n))]
    rng = np.random.default_rng(seed)
    rows = []
    for i, item in enumerate(tqdm(samples, desc=f"disrupt {flow}", disable=not progress)):
        inputs = sample_inputs(model, item, template) if isinstance(item, Sample) else item
        sid = item.id if isinstance(item, Sample) else str(i)
        dst = _targets(inputs, FLOWS[flow], rng)
        with torch.no_grad():
            clean = model(inputs)[0, -1]
            clean_top = set(clean.topk(top_k).indices.tolist())
            for layer in layers:
                scope_layers = [layer] if scope == "single" else onward(layer, n)
                hooks = knockout(inputs.groups, "image", dst, scope_layers, mode=mode)
                out = model.run_with_hooks(inputs, fwd_hooks=hooks)[0, -1]
                top = set(out.topk(top_k).indices.tolist())
                rows.append((sid, flow, layer, bool(out.argmax() == clean.argmax()), len(top & clean_top) / len(top | clean_top)))
    return DisruptionResult(pd.DataFrame(rows, columns=["sample", "flow", "layer", "same_label", "jaccard"]))
