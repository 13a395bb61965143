"""Offline, image-aware views of attention and of any per-position values.

:func:`attention_view` shows the image with its patch grid beside the prompt's tokens: hover (or
click, to pin) a text token and its attention — one head or the mean of heads, at the chosen
layer — is painted over the image patches and the text; hover a patch and the text tokens that
read it light up. :func:`position_view` paints any per-position vector (patching effects,
saliency columns, Grad-CAM, one row per layer) the same way. A view is one self-contained HTML
file: the image is an embedded PNG, the data compact float16 JSON, and the script and styles
(``mmlens/viz/static``) are inlined, so it works with no network at any moment.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image

from mmlens.errors import MMLensError
from mmlens.inputs import MMInputs
from mmlens.viz.view_layout import image_layout, token_labels

__all__ = ["View", "attention_view", "position_view", "token_labels"]


@dataclass(frozen=True)
class View:
    """A self-contained HTML view: ``.save(path)``, ``str(view)``, and inline display in Jupyter.

    Attributes:
        html: The complete HTML document (no external resources).
    """

    html: str

    def save(self, path: str | Path) -> Path:
        """Write the HTML file (open it in any browser, offline) and return its path."""
        path = Path(path)
        path.write_text(self.html, encoding="utf-8")
        return path

    def __str__(self) -> str:
        return self.html

    def __repr__(self) -> str:
        # Short: a notebook stores repr() as the output's plain-text twin of the HTML.
        return f"View({len(self.html) / 1e6:.2f} MB of self-contained HTML; .save(path) writes it)"

    def _repr_html_(self) -> str:
        # An iframe keeps the view's script and styles apart from the notebook's; no remote probe.
        return (f'<iframe srcdoc="{html.escape(self.html, quote=True)}" style="width:100%;height:560px;'
                'border:1px solid #ddd" sandbox="allow-scripts"></iframe>')


def attention_view(
    model,
    inputs: MMInputs,
    layers: Sequence[int] | None = None,
    row: int = 0,
    image: Image.Image | None = None,
    title: str = "",
) -> View:
    """Decoder attention of every text token over the image and the text, layer by layer.

    Stores, for each chosen layer and head, the attention rows of the text (and special) tokens
    as float16; a view of every layer of the shipped ``shapes-llava`` is about 0.1 MB. For 7B
    models pick a few ``layers`` (each layer costs ``heads × text × pos × 2`` bytes).

    Args:
        model: A :class:`~mmlens.HookedVLM` (its tokenizer labels the tokens).
        inputs: Prepared inputs; one batch row is shown.
        layers: Decoder layers to include (default: all).
        row: Batch row.
        image: The original image to draw; default: the model's own input, un-normalised and
            mapped back onto the original image's frame (pad or crop shown as the model sees it).
        title: Shown above the view.

    Raises:
        MMLensError: a layer out of range.
    """
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad or not layers:
        raise MMLensError(
            f"layers {bad or layers} are not decoder layers 0..{n_layers - 1}: pick layers in that range."
        )
    names = {f"blocks.{l}.attn.hook_pattern" for l in layers}
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=lambda name: name in names)
    keep = inputs.attention_mask[row].bool().cpu()
    pos, panels = image_layout(model, inputs, row, image)
    queries = [j for j, p in enumerate(pos) if p["k"] in ("text", "special")]
    q = torch.tensor(queries, dtype=torch.long)
    rows = [cache["pattern", l][row].float().cpu()[:, keep][:, :, keep][:, q] for l in layers]  # [head, q, pos]
    data = torch.stack(rows)
    spec = {
        "mode": "attention",
        "layers": layers,
        "heads": int(data.shape[1]),
        "queries": queries,
        "scales": [["row", "max of this row"], ["one", "0 to 1"]],
    }
    return _render(title or "attention", pos, panels, data, spec)


def position_view(
    model,
    inputs: MMInputs,
    values: Float[torch.Tensor, " pos"] | Float[torch.Tensor, "n pos"],
    names: Sequence[str] | None = None,
    row: int = 0,
    image: Image.Image | None = None,
    title: str = "",
    value_name: str = "value",
    row_name: str = "layer",
) -> View:
    """Any per-position values of one batch row painted on the image patches and the tokens.

    E.g. a patching or knockout effect per position, a saliency column, a Grad-CAM map expanded
    to positions, or one such vector per layer (``values[layer, pos]``, with a selector).
    Negative values are painted blue, positive red, on a scale the view states.

    Args:
        model: The :class:`~mmlens.HookedVLM` the inputs were prepared for (labels the tokens).
        inputs: Prepared inputs.
        values: ``[pos]`` or ``[n, pos]`` over the merged sequence of ``row`` (padding included).
        names: A name per row of a 2-D ``values`` (default: ``"{row_name} {i}"``).
        row: Batch row.
        image: The original image (default: reconstructed from the model input).
        title: Shown above the view.
        value_name: What the values are (shown with the colour scale).
        row_name: What the first axis of a 2-D ``values`` indexes.

    Raises:
        MMLensError: values whose last axis is not the sequence length, or names of the wrong length.
    """
    v = values.detach().float().cpu().reshape(-1, values.shape[-1])
    if v.shape[1] != inputs.input_ids.shape[1]:
        raise MMLensError(
            f"values have {v.shape[1]} positions but the inputs have {inputs.input_ids.shape[1]}: give one value "
            "per position of the merged sequence (image positions included)."
        )
    names = [f"{row_name} {i}" for i in range(len(v))] if names is None else list(names)
    if len(names) != len(v):
        raise MMLensError(f"got {len(names)} names for {len(v)} rows of values: give one name per row.")
    pos, panels = image_layout(model, inputs, row, image)
    data = v[:, inputs.attention_mask[row].bool().cpu()]
    scales = [["all", "shared by all rows"], ["row", "max of this row"]] if len(v) > 1 else [["all", "max |value|"]]
    spec = {"mode": "values", "rows": names, "row_name": row_name, "value_name": value_name, "scales": scales}
    return _render(title or value_name, pos, panels, data, spec)


def _render(title: str, pos: list[dict], panels: list[dict], data: torch.Tensor, spec: dict) -> View:
    if not torch.isfinite(data).all():
        raise MMLensError("the values hold NaN or infinity: replace them (e.g. torch.nan_to_num) before viewing.")
    half = data.numpy().astype("<f2")
    payload = dict(spec, title=title, pos=pos, panels=panels, signed=bool((half < 0).any()),
                   data=base64.b64encode(half.tobytes()).decode("ascii"))
    text = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    static = resources.files("mmlens.viz") / "static"
    css, js = (static / "view.css").read_text(), (static / "view.js").read_text()
    doc = (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{css}</style></head><body>"
        '<div class="mmv" id="mmlens-root"></div>'
        f'<script type="application/json" id="mmlens-data">{text}</script>'
        f"<script>{js}</script></body></html>"
    )
    return View(doc)
