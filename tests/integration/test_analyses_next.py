"""Every analysis and the pruning policies run end to end on tiny LLaVA-NeXT and LLaVA-OneVision
models over inputs from ``prepare`` (anyres pixels, per-image token counts, newline slots, left
padding, OneVision's shrunk grids)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmlens import HookedVLM
from mmlens.analysis import KnockoutResult, attention_share, grad_cam, knockout_sweep, logit_lens, saliency
from mmlens.pruning import FastV, HiMAP, Truncate
from tests.integration.test_prepare_anyres import _next, _onevision

QUESTIONS = ["is there a star ?", "what colour is the square ?"]


@pytest.fixture(scope="module", params=["next", "onevision-shrunk"])
def setup(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"{request.param}-analyses")
    processor = _next(path) if request.param == "next" else _onevision(path, "anyres_max_1")
    model = HookedVLM.from_pretrained(str(path), processor=processor)
    images = [Image.effect_noise((70, 40), 60).convert("RGB"), Image.effect_noise((30, 64), 60).convert("RGB")]
    batch = model.prepare(images, QUESTIONS, template="llava_hf")
    alone = [model.prepare(im, q, template="llava_hf") for im, q in zip(images, QUESTIONS)]
    return model, batch, alone


def test_knockout_sweep(setup):
    model, _, alone = setup
    result = KnockoutResult.concat([knockout_sweep(model, x, flows=["image->last", "last->last"], window_size=1) for x in alone])
    assert len(result.to_dataframe()) == 2 * 2 * model.cfg.n_layers


def test_logit_lens_and_attention_share(setup):
    model, inputs, _ = setup
    lens = logit_lens(model, inputs, ["star"])
    assert lens.to_dataframe()["prob"].between(0, 1).all()
    shares = attention_share(model, inputs).share.sum(-1)
    torch.testing.assert_close(shares, torch.ones_like(shares), atol=1e-5, rtol=0)


def test_saliency(setup):
    model, inputs, _ = setup
    result = saliency(model, inputs)
    assert all(torch.isfinite(v).all() for m in result.metrics.values() for v in m.values())


@pytest.mark.parametrize("tower", ["decoder", "vision"])
def test_grad_cam_maps_the_base_view(setup, tower):
    model, inputs, _ = setup
    cam = grad_cam(model, inputs, answer="star", tower=tower)
    g = model.vlm_cfg.vision.grid
    assert cam.heat.shape[-2:] == (g, g) and torch.isfinite(cam.heat).all()


@pytest.mark.parametrize("policy", [FastV(1, 0.5), HiMAP(1, 0.5, 2, 0.5), Truncate(1, keep=5, mode="drop")])
def test_pruning_runs_and_generates(setup, policy):
    """One prompt at a time (mixed batches: tests/integration/test_pruning_next.py)."""
    model, _, alone = setup
    for row in alone:
        with torch.no_grad():
            logits = model(row, prune=policy)
        assert torch.isfinite(logits).all()
        out = model.generate(row, max_new_tokens=3, prune=policy)
        assert out.shape == (1, row.input_ids.shape[1] + 3)
