"""Every analysis and the pruning policies run end to end on tiny Qwen2-VL and Qwen2.5-VL models over
inputs from ``prepare`` (images of different sizes, left padding), with checks against Hugging Face's
own models: the logit lens against its hidden states, attention shares against its eager attention
weights, vision Grad-CAM against gradients taken in its tower, FastV's pruned forward against its
decoder layers run on the kept tokens with their original M-RoPE positions, and the knockout sweep
(which reruns a suffix of the prompt) against a plain forward with the knockout hooks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from mmlens import HookedVLM, InvalidInputError, MMLensError
from mmlens.analysis import attention_share, grad_cam, knockout_sweep, logit_lens, saliency
from mmlens.interventions import knockout
from mmlens.pruning import FastV, HiMAP, Truncate
from mmlens.zoo.tiny_qwen_vl import save_tiny_qwen_vl, tiny_qwen2_5_vl_config, tiny_qwen2_vl_config
from tests.integration.test_parity_qwen2_vl import hf_patch_order

CONFIGS = {"qwen2-vl": tiny_qwen2_vl_config, "qwen2.5-vl": tiny_qwen2_5_vl_config}
QUESTIONS = ["Is the circle red?", "Which shape is left of the square?"]
ALL_KEYS = ("system", "image", "user", "image_start", "image_end")  # these partition a Qwen2-VL prompt


@pytest.fixture(scope="module", params=list(CONFIGS))
def setup(request, tmp_path_factory):
    path = save_tiny_qwen_vl(tmp_path_factory.mktemp("qwen-analyses"), CONFIGS[request.param]())
    model = HookedVLM.from_pretrained(str(path))
    hf = transformers.AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager").eval()
    images = [Image.effect_noise((70, 30), 60).convert("RGB"), Image.effect_noise((40, 40), 60).convert("RGB")]
    batch = model.prepare(images, QUESTIONS, template="qwen2_vl")
    alone = [model.prepare(im, q, template="qwen2_vl") for im, q in zip(images, QUESTIONS)]
    return model, hf, batch, alone


def hf_reference(hf, inputs, **kwargs):
    return hf(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=inputs.pixel_values,
              image_grid_thw=inputs.image_grid_thw, mm_token_type_ids=inputs.groups["image"].int(), **kwargs)


def test_knockout_sweep_equals_a_plain_forward_with_the_knockout(setup):
    """The sweep reruns only the suffix after the first blocked query, with the clean keys as a
    prefix: its M-RoPE positions must be the full forward's."""
    model, _, _, alone = setup
    inputs = alone[0]
    frame = knockout_sweep(model, inputs, flows=["image->last", "question->last"], window_size=1).to_dataframe()
    assert len(frame) == 2 * model.cfg.n_layers
    token = int(frame["token"][0])
    for _, row in frame.iterrows():
        src = "image" if row["flow"] == "image->last" else "question"
        with torch.no_grad():
            logits = model.run_with_hooks(inputs, fwd_hooks=knockout(inputs, src, "last", int(row["layer"])))
        expected = float(logits[0, -1].float().softmax(-1)[token])
        assert abs(row["p_knockout"] - expected) < 1e-5, row


def test_logit_lens_matches_hugging_face_hidden_states(setup):
    model, hf, inputs, _ = setup
    lens = logit_lens(model, inputs, ["red", "circle"], final_norm="all")
    with torch.no_grad():
        ref = hf_reference(hf, inputs, output_hidden_states=True)
    last = inputs.groups["last"]
    lm = hf.model.language_model
    # HF's last hidden state is already normalised; earlier ones get the final norm here.
    states = [lm.norm(h[last]) for h in ref.hidden_states[:-1]] + [ref.hidden_states[-1][last]]
    probs = torch.stack([hf.lm_head(s).softmax(-1) for s in states], dim=1)[..., list(lens.tokens)]
    torch.testing.assert_close(lens.probs, probs, atol=1e-5, rtol=0)


def test_attention_share_matches_hugging_face_attentions(setup):
    model, hf, inputs, _ = setup
    shares = attention_share(model, inputs, groups=ALL_KEYS, head_reduce="mean")
    torch.testing.assert_close(shares.share.sum(-1), torch.ones_like(shares.share.sum(-1)), atol=1e-5, rtol=0)
    with torch.no_grad():
        attentions = hf_reference(hf, inputs, output_attentions=True).attentions
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
    """Standard Grad-CAM of block ``layer`` of Hugging Face's tower, per image over its patches, on
    the (rows, cols) patch grid."""
    stash = {}
    handle = hf.model.visual.blocks[layer].register_forward_hook(lambda m, i, o: stash.__setitem__("x", o))
    try:
        b, p = inputs.input_ids.shape
        ids = torch.cat([inputs.input_ids, answer_ids.expand(b, -1)], 1)
        mask = torch.cat([inputs.attention_mask, torch.ones(b, answer_ids.shape[1], dtype=torch.long)], 1)
        logits = hf(input_ids=ids, attention_mask=mask, pixel_values=inputs.pixel_values,
                    image_grid_thw=inputs.image_grid_thw, mm_token_type_ids=(ids == hf.config.image_token_id).int()).logits
        z = sum(logits[:, p - 1 + t, tok].sum() for t, tok in enumerate(answer_ids[0].tolist()))
        feats = stash["x"]
        (grad,) = torch.autograd.grad(z, feats)
    finally:
        handle.remove()
    grid = inputs.image_grid_thw
    order = hf_patch_order(hf, grid)  # HF row k holds processor-order patch order[k]
    f, g = torch.empty_like(feats), torch.empty_like(grad)
    f[order], g[order] = feats.detach(), grad
    hw = transformers.vision_utils.get_vision_position_ids(grid, 2)
    maps = []
    for fi, gi, pos in zip(f.split(grid.prod(-1).tolist()), g.split(grid.prod(-1).tolist()), hw.split(grid.prod(-1).tolist())):
        cam = torch.relu((gi.mean(0, keepdim=True) * fi).sum(-1))
        out = torch.zeros(int(grid[0, 1]), int(grid[0, 2]))
        out[pos[:, 0], pos[:, 1]] = cam
        maps.append(out)
    return torch.stack(maps)


def test_vision_grad_cam_matches_hugging_face(setup):
    model, hf, _, _ = setup
    images = [Image.effect_noise((70, 30), 60).convert("RGB"), Image.effect_noise((70, 30), 20).convert("RGB")]
    inputs = model.prepare(images, QUESTIONS, template="qwen2_vl")
    answer_ids = torch.tensor([model.processor.tokenizer("red", add_special_tokens=False)["input_ids"]])
    cam = grad_cam(model, inputs, answer="red", tower="vision", layers=[1])
    rows, cols = (int(v) for v in inputs.image_grid_thw[0, 1:])
    assert cam.heat.shape == (2, 1, rows, cols)
    torch.testing.assert_close(cam.raw[:, 0], hf_vision_cam(hf, inputs, answer_ids, 1), atol=1e-5, rtol=1e-4)


def test_decoder_grad_cam_covers_the_merged_grid(setup):
    """The decoder map is the 2×2-merged token grid; a row alone gives the same map; rows with other
    grids are refused (their maps cannot be stacked)."""
    model, _, batch, alone = setup
    images = [Image.effect_noise((70, 30), 60).convert("RGB"), Image.effect_noise((70, 30), 20).convert("RGB")]
    inputs = model.prepare(images, QUESTIONS, template="qwen2_vl")
    # (The last block's MLP input at image positions reaches no answer row: its map is zero.)
    cam = grad_cam(model, inputs, answer="blue", tower="decoder", layers=[0, 1])
    rows, cols = (int(v) // 2 for v in inputs.image_grid_thw[0, 1:])
    assert cam.heat.shape == (2, 2, rows, cols) and torch.isfinite(cam.heat).all() and (cam.raw > 0).any()
    first = grad_cam(model, inputs.row(0), answer="blue", tower="decoder", layers=[0, 1])
    torch.testing.assert_close(cam.raw[:1], first.raw, atol=1e-5, rtol=1e-4)
    assert len(cam.plot(inputs, images[0]).axes) >= 1
    with pytest.raises(InvalidInputError, match="inputs.row"):
        grad_cam(model, batch, answer="red", tower="decoder", layers=[0])


def test_fastv_keeps_m_rope_positions_of_the_kept_tokens(setup):
    """FastV in drop mode equals Hugging Face's layers from K on run on the kept tokens alone, fed
    their original [3, batch, pos] M-RoPE positions explicitly."""
    model, hf, _, alone = setup
    inputs = alone[0]
    plan = FastV(1, 0.5, mode="drop").plan(model.cfg.n_layers)
    with torch.no_grad():
        ours = model(inputs, prune=plan)
        ref = hf_reference(hf, inputs, output_hidden_states=True)
        positions, _ = hf.model.get_rope_index(inputs.input_ids, inputs.groups["image"].int(), inputs.image_grid_thw,
                                               attention_mask=inputs.attention_mask)
        kept = plan.kept[1][0]
        assert len(kept) < inputs.input_ids.shape[1]
        lm = hf.model.language_model
        h = ref.hidden_states[1][:, kept]
        n = h.shape[1]
        causal = torch.full((n, n), torch.finfo(h.dtype).min).triu(1)[None, None]
        rotary = lm.rotary_emb(h, positions[:, :, kept])
        for layer in lm.layers[1:]:
            h = layer(h, attention_mask=causal, position_embeddings=rotary)
        expected = hf.lm_head(lm.norm(h))
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    # The positions matter: the same tokens renumbered 0..n-1 give other logits.
    with torch.no_grad():
        renumbered = model(inputs, prune=FastV(1, 0.5, mode="drop"), position_ids=torch.arange(inputs.input_ids.shape[1])[None])
    assert (renumbered - ours).abs().max() > 1e-3


@pytest.mark.parametrize("policy", [FastV(1, 0.5), HiMAP(1, 0.5, 2, 0.5), Truncate(1, keep=5, mode="drop")])
def test_pruning_runs_and_generates(setup, policy):
    model, _, batch, alone = setup
    for row in [*alone, batch]:
        with torch.no_grad():
            logits = model(row, prune=policy)
        assert torch.isfinite(logits).all()
        out = model.generate(row, max_new_tokens=3, prune=policy)
        assert out.shape == (len(row), row.input_ids.shape[1] + 3)


def test_activation_patching_of_the_image_tokens(setup):
    """Denoising all image positions at decoder layer 0 restores the clean run exactly (the text is
    the same and the grids are equal), so the patched metric equals the clean probability."""
    from mmlens.patching import activation_patch

    model, _, _, _ = setup
    images = [Image.effect_noise((70, 30), 60).convert("RGB"), Image.effect_noise((70, 30), 20).convert("RGB")]
    clean, other = (model.prepare(im, QUESTIONS[0], template="qwen2_vl") for im in images)
    corrupt = dataclasses.replace(clean, pixel_values=other.pixel_values)
    result = activation_patch(model, clean, corrupt, hook="resid_pre", positions="image", metric="prob",
                              answers=("red", "blue"), layers=[0, 1])
    token = model.processor.tokenizer("red", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        expected = model(clean)[0, -1].softmax(-1)[token]
    torch.testing.assert_close(result.raw[0, 0], expected, atol=1e-5, rtol=0)
    assert result.raw.shape == (2, 1) and torch.isfinite(result.values).all()
    with pytest.raises(MMLensError, match="packs all images"):
        activation_patch(model, clean, corrupt, hook="vision_resid_pre", metric="prob", answers=("red", "blue"))


def test_views_on_the_original_image(setup):
    """Per-position values land on the pixels their tokens cover: the tokens tile the image."""
    from mmlens.viz.image import heat_to_image, position_heat_to_image

    model, _, _, alone = setup
    row = alone[0]
    image = row.groups["image"][0]
    heat = position_heat_to_image(row, image.float())
    assert heat.shape == (30, 70) and np.allclose(heat, 1.0)
    rows, cols = (int(v) // 2 for v in row.image_grid_thw[0, 1:])
    onehot = np.zeros((rows, cols), dtype=np.float32)
    onehot[0, 0] = 1.0
    pixels = heat_to_image(row, onehot)
    box = row.image_grid.boxes[0, image][0]  # the top-left token's pixels
    x1, y1 = int(np.ceil(float(box[2]) - 0.5)), int(np.ceil(float(box[3]) - 0.5))
    assert pixels[:y1, :x1].min() == 1.0 and pixels[y1:, :].max() == 0.0 and pixels[:, x1:].max() == 0.0


def test_attention_view_draws_tokens_at_their_boxes(setup):
    from mmlens.viz.attention_view import attention_view
    from mmlens.viz.view_layout import image_layout

    model, _, _, alone = setup
    row, picture = alone[0], Image.new("RGB", (70, 30))
    pos, (panel,) = image_layout(model, row, 0, picture)
    boxes = [p["b"] for p in pos if p["k"] == "img"]
    geometry = row.image_grid.views[0]
    assert len(boxes) == geometry.n_tokens and panel["img"] == [0.0, 0.0, 1.0, 1.0]
    x0, y0, x1, y1 = geometry.token_box(0, 1)
    assert boxes[1] == pytest.approx([x0 / 70, y0 / 30, x1 / 70, y1 / 30], abs=1e-4)
    assert "<html" in attention_view(model, row, layers=[0], image=picture).html.lower()
    with pytest.raises(MMLensError, match="image="):
        attention_view(model, row, layers=[0])
