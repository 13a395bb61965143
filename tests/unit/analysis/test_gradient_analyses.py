"""Saliency, Grad-CAM and disruption against independent computations on the HF model."""

from __future__ import annotations

import pytest
import torch
import transformers

from mmlens import HookedVLM
from mmlens.analysis import disruption, grad_cam, group_metrics, saliency
from mmlens.data.shapes import make_sample
from mmlens.errors import MMLensError
from mmlens.inputs import sample_inputs


@pytest.fixture(scope="module")
def setup(checkpoint_factory):
    path = checkpoint_factory(n_kv_heads=2)
    model = HookedVLM.from_pretrained(path)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
    return model, hf, sample_inputs(model, make_sample(7, "ChooseAttr"))


@pytest.mark.parametrize("variant", ["paper", "released_code"])
def test_saliency_matches_hf_eager_attention_gradients(setup, variant):
    model, hf, inputs = setup
    out = hf(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values, output_attentions=True)
    for a in out.attentions:
        a.retain_grad()
    target = out.logits[0, -1].argmax()
    torch.nn.functional.cross_entropy(out.logits[0, -1:], target[None]).backward()
    hf.zero_grad()
    result = saliency(model, inputs, variant=variant, keep_matrices=True)
    assert int(result.target[0]) == int(target)
    g = inputs.groups
    for layer, a in enumerate(out.attentions):
        A, G = a.detach(), a.grad
        I = (A * G).sum(1).abs() if variant == "paper" else (A**2 * G.abs()).mean(1)
        torch.testing.assert_close(result.matrices[:, layer], I, atol=1e-6, rtol=1e-3)
        # Hand-written S_img (paper: columns of V summed over every row) and S_vt.
        v, ins = g["image"][0], g["user"][0]
        assert float(result.metrics["source"]["S_img"][0, layer]) == pytest.approx(float(I[0][:, v].sum() / v.sum()), rel=1e-4)
        assert float(result.metrics["receiving"]["S_img"][0, layer]) == pytest.approx(float(I[0][v, :].sum() / v.sum()), rel=1e-4)
        assert float(result.metrics["source"]["S_vt"][0, layer]) == pytest.approx(float(I[0][ins][:, v].sum() / v.sum()), rel=1e-4)
    assert all(p.grad is None for p in model.parameters())


def test_group_metrics_on_a_hand_made_matrix():
    I = torch.arange(16.0).view(1, 4, 4)
    s = torch.tensor([[1, 0, 0, 0]], dtype=torch.bool)
    v = torch.tensor([[0, 1, 1, 0]], dtype=torch.bool)
    ins = torch.tensor([[0, 0, 0, 1]], dtype=torch.bool)
    m = group_metrics(I, s, v, ins)
    assert float(m["S_sys"]) == 0 + 4 + 8 + 12
    assert float(m["S_img"]) == (1 + 2 + 5 + 6 + 9 + 10 + 13 + 14) / 2
    assert float(m["S_vv"]) == (5 + 6 + 9 + 10) / 2 and float(m["S_vt"]) == (13 + 14) / 2
    assert float(group_metrics(I, s, v, ins, "receiving")["S_sys"]) == 0 + 1 + 2 + 3


@pytest.mark.parametrize("tower", ["decoder", "vision"])
@pytest.mark.parametrize("variant", ["standard", "released_code"])
def test_grad_cam_matches_direct_autograd_on_hf(setup, tower, variant):
    model, hf, inputs = setup
    tok = model.processor.tokenizer
    answer = "Red Blue"
    ans = tok(answer, add_special_tokens=False)["input_ids"]
    ids = torch.cat([inputs.input_ids, torch.tensor([ans])], 1)
    layers = hf.model.language_model.layers if tower == "decoder" else hf.model.vision_tower.encoder.layers[:2]
    modules = [layer.post_attention_layernorm for layer in layers] if tower == "decoder" else list(layers)
    captured = []
    handles = [m.register_forward_hook(lambda m, i, o: captured.append(o)) for m in modules]
    logits = hf(input_ids=ids, pixel_values=inputs.pixel_values).logits
    for h in handles:
        h.remove()
    p = inputs.input_ids.shape[1]
    z = sum(logits[0, p - 1 + t, a] for t, a in enumerate(ans))
    grads = torch.autograd.grad(z, captured)
    ours = grad_cam(model, inputs, answer=answer, layers=range(len(modules)), tower=tower, variant=variant)
    grid = model.vlm_cfg.vision.grid
    nonzero = 0
    for layer, (A, grad) in enumerate(zip(captured, grads)):
        # Decoder: image positions of the prompt (patch order); vision: patch positions (CLS dropped).
        sel = inputs.groups["image"][0] if tower == "decoder" else slice(1, None)
        A, grad = A.detach()[0, :p][sel] if tower == "decoder" else A.detach()[0, sel], grad[0, :p][sel] if tower == "decoder" else grad[0, sel]
        if variant == "standard":
            cam = torch.relu(A @ grad.mean(0))
        else:
            cam = (A * torch.relu(grad).mean(0)).mean(-1)
        heat = cam / cam.max() if cam.max() > 0 else torch.zeros_like(cam)
        if variant == "released_code":
            heat = torch.where(heat < 0.5, 0.0, heat)
        nonzero += int(cam.max() > 0)
        torch.testing.assert_close(ours.raw[0, layer], cam.view(grid, grid), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.heat[0, layer], heat.view(grid, grid), atol=1e-5, rtol=1e-4)
    assert nonzero > 0


def test_smoothing_averages_raw_heat_over_noisy_copies(setup):
    model, _, inputs = setup
    one = grad_cam(model, inputs, answer="Red", layers=[0], smooth=(1, 0.0))
    plain = grad_cam(model, inputs, answer="Red", layers=[0])
    torch.testing.assert_close(one.raw, plain.raw)
    smooth = grad_cam(model, inputs, answer="Red", layers=[0], smooth=(3, 0.1))
    assert not torch.allclose(smooth.raw, plain.raw) and float(smooth.heat.max()) == pytest.approx(1.0)


def test_disruption_with_an_empty_flow_raises_instead_of_reporting_no_effect(setup):
    from dataclasses import replace

    from mmlens.errors import EmptyGroupError

    model, _, inputs = setup
    empty = inputs.groups.with_groups(user=inputs.groups["user"] & False)
    with pytest.raises(EmptyGroupError, match="instruction<-image"):
        disruption(model, replace(inputs, groups=empty), "instruction<-image")


def test_disruption_of_one_input_against_hand_written_knockouts(setup):
    from mmlens.interventions import knockout

    model, _, inputs = setup
    result = disruption(model, inputs, "image<-image", layers=[0, 1], mode="pre_softmax", top_k=3).to_dataframe()
    with torch.no_grad():
        clean = model(inputs)[0, -1]
        for layer in (0, 1):
            out = model.run_with_hooks(inputs, fwd_hooks=knockout(inputs.groups, "image", "image", [layer], mode="pre_softmax"))[0, -1]
            a, b = set(clean.topk(3).indices.tolist()), set(out.topk(3).indices.tolist())
            row = result[result["layer"] == layer].iloc[0]
            assert row["jaccard"] == pytest.approx(len(a & b) / len(a | b))
            assert row["same_label"] == bool(out.argmax() == clean.argmax())


def test_cam_result_table_and_combination(setup):
    model, _, inputs = setup
    cam = grad_cam(model, inputs, answer="Red", layers=[0, 1])
    df = cam.to_dataframe().set_index(["row", "layer", "grid_row", "grid_col"])
    for i, layer in enumerate(cam.layers):
        for r, c in [(0, 0), (1, 2), (cam.heat.shape[-2] - 1, cam.heat.shape[-1] - 1)]:
            assert df.loc[(0, layer, r, c), "heat"] == pytest.approx(float(cam.heat[0, i, r, c]))
            assert df.loc[(0, layer, r, c), "raw"] == pytest.approx(float(cam.raw[0, i, r, c]))
    both = type(cam).concat([cam, cam])
    assert both.answers == ("Red", "Red") and both.heat.shape[0] == 2
    with pytest.raises(MMLensError, match="same layers"):
        type(cam).concat([cam, grad_cam(model, inputs, answer="Red", layers=[0])])
