"""The result of every patching method: a layer × column grid of metric values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd
from jaxtyping import Float
from torch import Tensor

from mmlens.inputs import MMInputs
from mmlens.result import Result


@dataclass(frozen=True, eq=False)
class PatchingResult(Result):
    """Metric of every patched run, raw and normalised.

    Attributes:
        raw: ``[layer, column]`` metric of each patched run (activation and path patching) or
            its first-order estimate (attribution patching).
        values: ``(raw − corrupt_metric) / (clean_metric − corrupt_metric)``: 1 = the clean
            run's metric, 0 = the corrupt run's. Denoising (clean activations into the corrupt
            run) reads "how much of the clean behaviour this site restores"; noising (corrupt
            activations into the clean run) reads "how much survives", 1 − value being the damage.
        method: ``"activation"``, ``"path"`` or ``"attribution"`` (``"attribution (integrated, k
            steps)"`` and ``"attribution (exact block)"`` for those estimates).
        hook: The patched site (``"resid_pre"``, ``"z"``, ...).
        axis: What the columns are: ``"position"``, ``"head"`` or ``"group"``.
        layers: The layer of each row.
        labels: A label per column (token, ``img(r,c)``, head or group name).
        positions: For ``axis == "position"``, the sequence position of each column (vision
            sites: the tower's position, CLS first); empty otherwise.
        clean_metric: The metric on the clean run.
        corrupt_metric: The metric on the corrupt run.
        metric: The metric's name.
        direction: ``"denoise"`` or ``"noise"``.
        inputs: The clean inputs (geometry and tokens for :meth:`plot`).
        image: The clean image, when known (for :meth:`plot`).
    """

    raw: Float[Tensor, "layer column"]
    values: Float[Tensor, "layer column"]
    method: str
    hook: str
    axis: str
    layers: tuple[int, ...]
    labels: tuple[str, ...]
    positions: tuple[int, ...]
    clean_metric: float
    corrupt_metric: float
    metric: str
    direction: str
    inputs: MMInputs | None = field(default=None, repr=False)
    image: Any = field(default=None, repr=False)

    COLUMNS: ClassVar[dict[str, str]] = {
        "method": "activation, path or attribution patching (with its estimate: integrated k steps, exact block)",
        "hook": "the patched site (resid_pre, attn_out, z, ...)",
        "direction": "denoise (clean into corrupt) or noise (corrupt into clean)",
        "metric": "name of the metric (logit_diff, prob, or the callable's name)",
        "layer": "layer of the patched site",
        "axis": "what index counts: position, head or group",
        "index": "sequence position, head index or group number",
        "label": "token, image patch, head or group name",
        "raw": "metric of the patched run (attribution: its linear estimate)",
        "value": "(raw - corrupt) / (clean - corrupt)",
    }

    def to_dataframe(self) -> pd.DataFrame:
        rows = []
        index = self.positions if self.axis == "position" else range(len(self.labels))
        for i, layer in enumerate(self.layers):
            for j, (idx, label) in enumerate(zip(index, self.labels)):
                rows.append((self.method, self.hook, self.direction, self.metric, layer, self.axis, int(idx), label,
                             float(self.raw[i, j]), float(self.values[i, j])))
        return pd.DataFrame(rows, columns=list(self.COLUMNS))

    def plot(self, image: Any = None, title: str | None = None, **kwargs: Any) -> Any:
        """Layer × column heat map; image positions painted on the image, one panel per layer.

        Denoising results show ``values`` (1: the clean answer restored); noising results show
        the damage ``1 − values`` (0: no effect), so both read "the bigger, the more it matters".

        Args:
            image: The clean image (default the one stored with the result).
            title: Figure title (default: method, hook and direction).
            **kwargs: Passed to :func:`mmlens.viz.patching.plot_patching` (``cmap``, ``max_layers``).
        """
        from mmlens.viz.patching import plot_patching

        on_image = self.axis == "position" and not self.hook.startswith("vision_")
        noise = self.direction == "noise"
        kwargs.setdefault("label", "damage (1 − value)" if noise else "value (1: clean restored)")
        return plot_patching(
            1 - self.values if noise else self.values, list(self.layers), list(self.labels),
            positions=list(self.positions) if on_image else None,
            inputs=self.inputs if on_image else None,
            image=image if image is not None else self.image,
            title=title or f"{self.method} patching of {self.hook} ({self.direction})",
            xlabel=self.axis,
            **kwargs,
        )
