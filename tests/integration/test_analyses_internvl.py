"""Every analysis and the pruning policies run end to end on a tiny InternVL model over inputs
from ``prepare`` (tiles + thumbnail, different tile counts per row, left padding), with checks
against Hugging Face's own InternVL: the logit lens against its hidden states, attention shares
against its eager attention weights, Grad-CAM on the thumbnail against gradients taken in
Hugging Face's vision tower, and FastV's kept tokens against its attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from mmlens import HookedVLM
from mmlens.analysis import KnockoutResult, attention_share, grad_cam, knockout_sweep, logit_lens, saliency
from mmlens.analysis.lens import first_token
from mmlens.geometry import BASE, TILE
from mmlens.models.decoder import positions_from_mask
from mmlens.pruning import FastV, HiMAP, Truncate
from mmlens.zoo.tiny import save_tiny_checkpoint, tiny_internvl_config

QUESTIONS = ["Is the circle red?", "Which shape is left of the square?"]
ALL_KEYS = ("system", "image", "user", "image_start", "image_end")  # these partition an InternVL prompt


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("internvl-analyses"), tiny_internvl_config())
    model = HookedVLM.from_pretrained(str(path))
    hf = transformers.InternVLForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
    images = [Image.effect_noise((70, 30), 60).convert("RGB"), Image.effect_noise((40, 40), 60).convert("RGB")]
    batch = model.prepare(images, QUESTIONS, template="internvl")
    alone = [model.prepare(im, q, template="internvl") for im, q in zip(images, QUESTIONS)]
    return model, hf, batch, alone


def hf_reference(hf, inputs, **kwargs):
    return hf(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=inputs.pixel_values,
              position_ids=positions_from_mask(inputs.attention_mask), **kwargs)


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
        ref = hf_reference(hf, inputs, output_hidden_states=True)
    last = inputs.groups["last"]
    lm = hf.model.language_model
    # HF's last hidden state is already normalised; earlier ones get the final norm here.
    states = [lm.norm(h[last]) for h in ref.hidden_states[:-1]] + [ref.hidden_states[-1][last]]
    probs = torch.stack([hf.lm_head(s).softmax(-1) for s in states], dim=1)[..., list(lens.tokens)]
    torch.testing.assert_close(lens.probs, probs, atol=1e-5, rtol=0)
    assert lens.tokens[0] == first_token(model.processor.tokenizer, "red")


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


def hf_vision_cam(hf, inputs, answer_ids, layer, base_views):
    """Standard Grad-CAM of block ``layer`` of Hugging Face's tower on each row's thumbnail."""
    stash = {}
    handle = hf.model.vision_tower.encoder.layer[layer].register_forward_hook(lambda m, i, o: stash.__setitem__("x", o))
    try:
        b, p = inputs.input_ids.shape
        ids = torch.cat([inputs.input_ids, answer_ids.expand(b, -1)], 1)
        mask = torch.cat([inputs.attention_mask, torch.ones(b, answer_ids.shape[1], dtype=torch.long)], 1)
        logits = hf(input_ids=ids, attention_mask=mask, pixel_values=inputs.pixel_values,
                    position_ids=positions_from_mask(mask)).logits
        z = sum(logits[:, p - 1 + t, tok].sum() for t, tok in enumerate(answer_ids[0].tolist()))
        feats = stash["x"]
        (grad,) = torch.autograd.grad(z, feats)
    finally:
        handle.remove()
    f, g = feats[base_views, 1:].detach(), grad[base_views, 1:]
    return torch.relu((g.mean(1, keepdim=True) * f).sum(-1))


def test_grad_cam_on_the_thumbnail_matches_hugging_face(setup):
    model, hf, inputs, _ = setup
    answer_ids = torch.tensor([model.processor.tokenizer("red", add_special_tokens=False)["input_ids"]])
    cam = grad_cam(model, inputs, answer="red", tower="vision", layers=[1])
    g = model.vlm_cfg.vision.grid
    assert cam.heat.shape == (2, 1, g, g)
    views = inputs.image_grid.views
    base = torch.tensor([v.n_views - 1 for v in views]) + torch.tensor([0, views[0].n_views])
    expected = hf_vision_cam(hf, inputs, answer_ids, 1, base).view(2, g, g)
    torch.testing.assert_close(cam.raw[:, 0], expected, atol=1e-5, rtol=1e-4)


def test_grad_cam_of_the_decoder_covers_the_token_grid(setup):
    """The decoder map is the thumbnail's pixel-shuffled token grid; a row alone gives the same map."""
    model, _, inputs, alone = setup
    cam = grad_cam(model, inputs, answer="red", tower="decoder", layers=[0, 2])
    t = model.vlm_cfg.token_grid
    assert cam.heat.shape == (2, 2, t, t) and torch.isfinite(cam.heat).all() and (cam.raw > 0).any()
    first = grad_cam(model, alone[0], answer="red", tower="decoder", layers=[0, 2])
    torch.testing.assert_close(cam.raw[:1], first.raw, atol=1e-5, rtol=1e-4)
    kinds = inputs.image_grid.kind[inputs.groups["image"]]
    assert (kinds == BASE).sum() == 2 * t * t and (kinds == TILE).any()


def test_grad_cam_finds_its_own_answer_row_by_row(setup):
    model, _, inputs, _ = setup
    cam = grad_cam(model, inputs, tower="vision", layers=[0])
    assert len(cam.answers) == 2 and torch.isfinite(cam.heat).all()


def test_fastv_keeps_the_most_attended_image_tokens(setup):
    """FastV (released code's ranking) at layer K keeps the image tokens the last position
    attends to most in layer K - 1 (mean over heads), here read from Hugging Face's eager
    attention weights."""
    model, hf, _, alone = setup
    inputs = alone[0]
    plan = FastV(1, 0.5, rank_by="last_row").plan(model.cfg.n_layers)
    with torch.no_grad():
        model(inputs, prune=plan)
        attention = hf_reference(hf, inputs, output_attentions=True).attentions[0]
    image = inputs.groups["image"][0]
    scores = attention[0, :, -1].mean(0)[image]
    n_keep = int(image.sum()) // 2
    expected = image.nonzero().flatten()[scores.topk(n_keep).indices].sort().values
    kept = plan.kept[1][0]
    kept_image = kept[(kept >= 0) & image[kept.clamp(min=0)]]
    assert torch.equal(kept_image.sort().values, expected)


@pytest.mark.parametrize("policy", [FastV(1, 0.5), HiMAP(1, 0.5, 2, 0.5), Truncate(1, keep=5, mode="drop")])
def test_pruning_runs_and_generates(setup, policy):
    model, _, batch, alone = setup
    for row in [*alone, batch]:
        with torch.no_grad():
            logits = model(row, prune=policy)
        assert torch.isfinite(logits).all()
        out = model.generate(row, max_new_tokens=3, prune=policy)
        assert out.shape == (len(row), row.input_ids.shape[1] + 3)


def test_views_on_the_original_image(setup):
    """Per-position values land on the pixels their tokens cover: every pixel of a tiled image is
    covered by one tile token and one thumbnail token, so tile-only values average to a half."""
    from mmlens.viz.image import heat_to_image, position_heat_to_image

    model, _, inputs, alone = setup
    row = alone[0]
    kind = row.image_grid.kind[0]
    heat = position_heat_to_image(row, (kind == TILE).float())
    assert heat.shape == (30, 70) and np.allclose(heat, 0.5)
    assert np.allclose(position_heat_to_image(row, (kind == TILE).float(), views="tiles"), 1.0)
    # A token-grid map: the top-left token covers the top-left quarter of the squashed image.
    t = model.vlm_cfg.token_grid
    onehot = np.zeros((t, t), dtype=np.float32)
    onehot[0, 0] = 1.0
    pixels = heat_to_image(row, onehot)
    assert pixels[:15, :35].min() == 1.0 and pixels[15:, :].max() == 0.0 and pixels[:, 35:].max() == 0.0
    cam = grad_cam(model, inputs, answer="red", tower="decoder", layers=[0])
    assert len(cam.plot(inputs, Image.new("RGB", (70, 30))).axes) >= 1
