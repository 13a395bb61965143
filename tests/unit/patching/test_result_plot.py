"""PatchingResult: tidy table and the layer x position figure with image panels."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from mmlens import HookedVLM
from mmlens.data.shapes import make_sample
from mmlens.patching import activation_patch, recolour


def test_dataframe_and_plot_on_shapes_llava():
    model = HookedVLM.from_pretrained("shapes-llava")
    sample = make_sample(3, "QueryAttr")
    result = activation_patch(model, sample, recolour(sample)[0])
    df = result.to_dataframe()
    assert list(df.columns) == list(result.COLUMNS)
    assert len(df) == result.raw.numel()
    row = df[(df["layer"] == 2) & (df["index"] == 40)]
    assert row["value"].item() == float(result.values[2, 40]) and row["label"].item() == result.labels[40]
    # The story of the issue: the object's colour sits in its patches at layer 0 and at the last
    # position by the last layer.
    related = result.inputs.groups["related"][0]
    assert result.values[0, related].abs().max() > 10 * result.values[0, ~related & result.inputs.groups["image"][0]].abs().max()
    assert result.values[-1, -1] > 0.9
    fig = result.plot()
    assert isinstance(fig, Figure)
    images = [ax for ax in fig.axes if ax.get_title().startswith("layer ")]
    assert len(images) == model.cfg.n_layers
    norms = {(im.norm.vmin, im.norm.vmax) for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == "RdBu_r"}
    assert len(norms) == 1  # one shared colour scale
    vmax = float(result.values.abs().max())
    assert torch.isclose(torch.tensor(norms.pop()[1]), torch.tensor(vmax))
    heat = fig.axes[0]
    assert "square" in [t.get_text() for t in heat.get_xticklabels()]
    heads = activation_patch(model, sample, recolour(sample)[0], hook="z")
    assert isinstance(heads.plot(), Figure) and heads.raw.shape == (model.cfg.n_layers, model.cfg.n_heads)
