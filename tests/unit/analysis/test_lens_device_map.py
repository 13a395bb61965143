"""The logit lens under a ``device_map`` (blocks, final norm and unembedding offloaded) is the
single-device lens, number for number."""

from __future__ import annotations

import pytest
import torch

from mmlens import HookedVLM
from mmlens.analysis import logit_lens
from mmlens.analysis import lens as lens_module
from mmlens.analysis.lens import residual_at_last
from mmlens.data.shapes import make_sample
from mmlens.inputs import sample_inputs

MAP = {
    "vision_encoder": "cpu", "vision_projector": "cpu", "embed": "cpu", "blocks.0": "cpu", "blocks.1": "disk",
    "blocks.2": "cpu", "blocks.3": "disk", "ln_final": "disk", "unembed": "disk",
}  # fmt: skip


@pytest.fixture(scope="module")
def models(checkpoint_factory, tmp_path_factory):
    path = checkpoint_factory(n_kv_heads=2, n_layers=4)
    spread = HookedVLM.from_pretrained(path, device_map=MAP, offload_folder=tmp_path_factory.mktemp("offload"))
    return HookedVLM.from_pretrained(path), spread


def test_offloaded_lens_equals_the_single_device_lens(models):
    plain, spread = models
    assert spread.unembed.weight.device.type == "meta"  # W_U itself is not there to multiply by
    sample = make_sample(1, "ChooseAttr")
    inputs = sample_inputs(plain, sample)
    words = [sample.answer, sample.false_option]
    torch.testing.assert_close(residual_at_last(spread, inputs), residual_at_last(plain, inputs), atol=0, rtol=0)
    for final_norm in ("all", "last_only"):
        a = logit_lens(plain, inputs, words=words, final_norm=final_norm)
        b = logit_lens(spread, inputs, words=words, final_norm=final_norm)
        assert a.probs.std(dim=1).min() > 0  # the lens moves across boundaries: the comparison means something
        torch.testing.assert_close(b.probs, a.probs, atol=0, rtol=0)
        assert b.to_dataframe().equals(a.to_dataframe())


def test_every_boundary_is_gathered_on_the_lens_device(models, monkeypatch):
    """On GPUs the blocks' residuals live on several devices; each row goes to the unembedding's
    device before the stack (here a stand-in device, ``meta``, that no block computes on)."""
    plain, _ = models
    inputs = sample_inputs(plain, make_sample(1, "ChooseAttr"))
    monkeypatch.setattr(lens_module, "lens_device", lambda model: torch.device("meta"))
    resid = residual_at_last(plain, inputs)
    assert resid.device.type == "meta" and resid.shape == (1, plain.cfg.n_layers + 1, plain.cfg.d_model)
