"""Groups, attention-derived geometry and every analysis on a tiny InstructBLIP model over inputs
from ``prepare`` (a local ``InstructBlipProcessor``, left padding), with independent checks
against Hugging Face's own InstructBLIP: the query→patch map against its cross-attention
weights, the logit lens against its hidden states, attention shares against its attention
weights, and vision Grad-CAM (through the Q-Former) against gradients taken in its tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from mmlens import HookedVLM, InvalidInputError
from mmlens.analysis import KnockoutResult, attention_share, grad_cam, knockout_sweep, logit_lens, saliency
from mmlens.data.shapes import make_sample
from mmlens.inputs import sample_inputs
from mmlens.models.decoder import positions_from_mask
from mmlens.models.qformer_geometry import query_patch_map
from mmlens.viz.image import position_heat_to_image
from mmlens.zoo.tiny_blip import save_tiny_instructblip

QUESTIONS = ["Is the circle red?", "Which shape is left of the square?"]
ALL_KEYS = ("system", "image", "user")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = save_tiny_instructblip(tmp_path_factory.mktemp("instructblip-analyses"))
    model = HookedVLM.from_pretrained(str(path))
    hf = transformers.InstructBlipForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
    images = [Image.effect_noise((32, 32), 60).convert("RGB"), Image.effect_noise((32, 32), 90).convert("RGB")]
    batch = model.prepare(images, QUESTIONS, template="instructblip")
    alone = [model.prepare(im, q, template="instructblip") for im, q in zip(images, QUESTIONS)]
    return model, hf, batch, alone


def hf_reference(hf, inputs, **kwargs):
    return hf(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=inputs.pixel_values,
              qformer_input_ids=inputs.qformer_input_ids, qformer_attention_mask=inputs.qformer_attention_mask,
              position_ids=positions_from_mask(inputs.attention_mask), **kwargs)


def test_prepare_gives_query_tokens_and_the_instruction(setup):
    model, hf, inputs, _ = setup
    assert not bool(inputs.attention_mask.all())  # left padding
    assert inputs.groups["image"].sum(-1).tolist() == [model.vlm_cfg.qformer.n_queries] * 2
    # The Q-Former's instruction is the question as InstructBlipProcessor tokenizes it.
    ref = model.processor(text=QUESTIONS[1], return_tensors="pt")
    row = inputs.qformer_attention_mask[1].bool()
    assert torch.equal(inputs.qformer_input_ids[1][row], ref["qformer_input_ids"][0])


def test_query_geometry_is_the_argmax_of_hugging_face_cross_attention(setup):
    model, hf, inputs, _ = setup
    weights = query_patch_map(model, inputs)
    with torch.no_grad():
        towers = hf.get_image_features(inputs.pixel_values, inputs.qformer_input_ids, inputs.qformer_attention_mask,
                                       output_attentions=True)
    expected = torch.stack(list(towers.qformer_outputs.cross_attentions)).mean(dim=(0, 2))[..., 1:]
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(weights, expected, atol=1e-5, rtol=0)
    grid, image = inputs.image_grid, inputs.groups["image"]
    side = model.vlm_cfg.vision.grid
    top = (grid.row * side + grid.col)[image].view(2, -1)
    assert torch.equal(top, weights.argmax(-1))
    # A box over one patch relates exactly the queries whose top patch it is; the whole image relates all.
    r, c = divmod(int(top[0, 0]), side)
    p = model.vlm_cfg.vision.patch_size
    one = inputs.patches_in_box((c * p + 1, r * p + 1, c * p + p - 1, r * p + p - 1))
    assert torch.equal(one[image].view(2, -1), top == top[0, 0])
    assert bool(inputs.patches_in_box((0, 0, 32, 32))[image].all())


def test_sample_groups_and_heat_map_on_the_image(setup):
    model, _, _, _ = setup
    sample = make_sample(0, "ChooseAttr")
    inputs = sample_inputs(model, sample, template="instructblip")
    image = inputs.groups["image"]
    assert torch.equal(inputs.groups["related"] | inputs.groups["other"], image)
    assert not bool((inputs.groups["related"] & inputs.groups["other"]).any())
    values = image[0].float() * torch.arange(image.shape[1])
    heat = position_heat_to_image(inputs, values)
    assert heat.shape == sample.load_image().size[::-1] and np.isfinite(heat).all() and heat.max() > 0


def test_knockout_sweep(setup):
    model, _, _, alone = setup
    result = KnockoutResult.concat([knockout_sweep(model, x, flows=["image->last", "last->last"], window_size=1) for x in alone])
    frame = result.to_dataframe()
    assert len(frame) == 2 * 2 * model.cfg.n_layers
    assert frame.select_dtypes("number").notna().all().all()


def test_logit_lens_matches_hugging_face_hidden_states(setup):
    model, hf, inputs, _ = setup
    lens = logit_lens(model, inputs, ["red", "circle"], final_norm="all")
    with torch.no_grad():
        ref = hf_reference(hf, inputs, output_hidden_states=True).language_model_outputs
    last = inputs.groups["last"]
    lm = hf.language_model
    states = [lm.model.norm(h[last]) for h in ref.hidden_states[:-1]] + [ref.hidden_states[-1][last]]
    probs = torch.stack([lm.lm_head(s).softmax(-1) for s in states], dim=1)[..., list(lens.tokens)]
    torch.testing.assert_close(lens.probs, probs, atol=1e-5, rtol=0)


def test_attention_share_matches_hugging_face_attentions(setup):
    model, hf, inputs, _ = setup
    shares = attention_share(model, inputs, groups=ALL_KEYS, head_reduce="mean")
    with torch.no_grad():
        attentions = hf_reference(hf, inputs, output_attentions=True).language_model_outputs.attentions
    last = inputs.groups["last"].float()
    for layer, a in enumerate(attentions):
        row = torch.einsum("bhqk,bq->bhk", a, last)
        for g, name in enumerate(ALL_KEYS):
            expected = (row * inputs.groups[name][:, None].float()).sum(-1)
            torch.testing.assert_close(shares.head_share[:, layer, :, g], expected, atol=1e-5, rtol=0)


def test_saliency(setup):
    model, _, inputs, _ = setup
    result = saliency(model, inputs)
    assert all(torch.isfinite(v).all() for m in result.metrics.values() for v in m.values())


def hf_vision_cam(hf, inputs, answer_ids, layer):
    """Standard Grad-CAM of block ``layer`` of Hugging Face's BLIP tower (gradients through its Q-Former)."""
    stash = {}
    handle = hf.vision_model.encoder.layers[layer].register_forward_hook(lambda m, i, o: stash.__setitem__("x", o))
    try:
        b, p = inputs.input_ids.shape
        ids = torch.cat([inputs.input_ids, answer_ids.expand(b, -1)], 1)
        mask = torch.cat([inputs.attention_mask, torch.ones(b, answer_ids.shape[1], dtype=torch.long)], 1)
        logits = hf(input_ids=ids, attention_mask=mask, pixel_values=inputs.pixel_values,
                    qformer_input_ids=inputs.qformer_input_ids, qformer_attention_mask=inputs.qformer_attention_mask,
                    position_ids=positions_from_mask(mask)).logits
        z = sum(logits[:, p - 1 + t, tok].sum() for t, tok in enumerate(answer_ids[0].tolist()))
        feats = stash["x"]
        (grad,) = torch.autograd.grad(z, feats)
    finally:
        handle.remove()
    f, g = feats[:, 1:].detach(), grad[:, 1:]
    return torch.relu((g.mean(1, keepdim=True) * f).sum(-1))


def test_grad_cam_through_the_qformer_matches_hugging_face(setup):
    model, hf, inputs, _ = setup
    answer_ids = torch.tensor([model.processor.tokenizer("red", add_special_tokens=False)["input_ids"]])
    cam = grad_cam(model, inputs, answer="red", tower="vision", layers=[0])
    g = model.vlm_cfg.vision.grid
    assert cam.heat.shape == (2, 1, g, g) and (cam.raw > 0).any()
    expected = hf_vision_cam(hf, inputs, answer_ids, 0).view(2, g, g)
    torch.testing.assert_close(cam.raw[:, 0], expected, atol=1e-5, rtol=1e-4)


def test_decoder_grad_cam_explains_that_queries_have_no_grid(setup):
    model, _, inputs, _ = setup
    with pytest.raises(InvalidInputError, match="tower='vision'"):
        grad_cam(model, inputs, answer="red", tower="decoder")


def test_activation_patching_of_the_query_tokens(setup):
    """Denoising all query-token positions at decoder layer 0 restores the clean run exactly (the
    text is the same), so the patched metric equals the clean probability computed directly."""
    import dataclasses

    from mmlens.patching import activation_patch

    model, _, _, alone = setup
    clean = alone[0]
    corrupt = dataclasses.replace(clean, pixel_values=alone[1].pixel_values)
    result = activation_patch(model, clean, corrupt, hook="resid_pre", positions="image", metric="prob",
                              answers=("red", "blue"), layers=[0, 1])
    token = model.processor.tokenizer("red", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        expected = model(clean)[0, -1].softmax(-1)[token]
    torch.testing.assert_close(result.raw[0, 0], expected, atol=1e-5, rtol=0)
    assert result.raw.shape == (2, 1) and torch.isfinite(result.values).all()


def test_fastv_prunes_query_tokens_and_keeps_the_same_logits_without_pruning(setup):
    """FastV ranks the query tokens like any image tokens and keeps half of them."""
    from mmlens.pruning import FastV

    model, _, _, alone = setup
    inputs = alone[0]
    with torch.no_grad():
        clean = model(inputs)
        plan = FastV(1, 0.5).plan(model.cfg.n_layers)
        pruned = model(inputs, prune=plan)
    n_image = int(inputs.groups["image"].sum())
    kept = plan.kept[1][0]
    assert int(inputs.groups["image"][0][kept[kept >= 0]].sum()) == n_image // 2
    assert torch.isfinite(pruned).all() and (pruned[:, -1] - clean[:, -1]).abs().max() > 1e-6
