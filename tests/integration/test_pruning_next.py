"""Token pruning on LLaVA-NeXT batches whose prompts hold different numbers of image tokens:
per-row keep counts, rankings recomputed by hand from the previous layer's attention, newline
slots ranked by default and kept with ``keep_newlines=True``."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmlens import HookedVLM
from mmlens.pruning import FastV, HiMAP, Truncate
from mmlens.pruning.spec import parse_policy
from tests.integration.test_prepare_anyres import _next

QUESTIONS = ["is there a star ?", "what colour is the square ?"]
SIZES = [(70, 40), (30, 64)]  # (width, height): 2x2 and 2x1 tile grids


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = tmp_path_factory.mktemp("next-pruning")
    processor = _next(path)
    model = HookedVLM.from_pretrained(str(path), processor=processor)
    images = [Image.effect_noise(size, 60).convert("RGB") for size in SIZES]
    batch = model.prepare(images, QUESTIONS, template="llava_hf")
    alone = [model.prepare(im, q, template="llava_hf") for im, q in zip(images, QUESTIONS)]
    image = batch.groups["image"]
    assert image.sum(-1)[0] != image.sum(-1)[1]  # the point of these tests
    return model, batch, alone


def test_the_model_finds_the_newline_slots_prepare_laid_out(setup):
    model, batch, _ = setup
    found = model.newline_slots(batch.input_ids, batch.image_sizes)
    assert torch.equal(found, batch.image_grid.newline_slots())
    # One per patch row of the un-padded tile grid: 70x40 on a 2x2 canvas keeps 4 of its 8 rows
    # (int(40 * 8 / 70) = 4); 30x64 on a 2x1 canvas keeps all 8.
    assert found.sum(-1).tolist() == [4, 8]


@pytest.mark.parametrize("mode", ["mask", "drop"])
@pytest.mark.parametrize("keep_newlines", [False, True])
def test_fastv_keeps_each_rows_top_half_by_hand(setup, mode, keep_newlines):
    model, batch, _ = setup
    with torch.no_grad():
        _, cache = model.run_with_cache(batch, names_filter="blocks.0.attn.hook_pattern")
        plan = FastV(1, 0.5, mode=mode, keep_newlines=keep_newlines).plan(model.cfg.n_layers)
        model(batch, prune=plan)
    kept = plan.kept[1]
    mask = batch.attention_mask.float()
    # FastV's paper ranking: attention each key receives, head mean, averaged over real query rows.
    score = torch.einsum("bqk,bq->bk", cache["pattern", 0].mean(1), mask) / mask.sum(-1, keepdim=True)
    image, newline = batch.groups["image"], batch.image_grid.newline_slots()
    for r in range(2):
        ranked = image[r] & ~newline[r] if keep_newlines else image[r]
        n_keep = round(int(ranked.sum()) * 0.5)
        expected = set(score[r].masked_fill(~ranked, float("-inf")).topk(n_keep).indices.tolist())
        if keep_newlines:
            expected |= set(newline[r].nonzero().flatten().tolist())
        got = {int(i) for i in kept[r] if i >= 0 and image[r, i]}
        assert got == expected
        # Text (and left-padding) positions are never pruned.
        assert {int(i) for i in kept[r] if i >= 0 and not image[r, i]} == set((~image[r]).nonzero().flatten().tolist())


@pytest.mark.parametrize(
    "policy",
    [FastV(1, 0.5), FastV(1, 0.5, mode="mask"), HiMAP(1, 0.5, 2, 0.5), HiMAP(1, 0.5, 2, 0.5, keep_newlines=True),
     Truncate(1, keep=5, mode="drop"), FastV(1, 0.75, rank_by="last_row", keep_newlines=True)],
)
def test_a_mixed_batch_equals_each_prompt_alone(setup, policy):
    model, batch, alone = setup
    with torch.no_grad():
        together = model(batch, prune=policy)[:, -1]
        for r, row in enumerate(alone):
            torch.testing.assert_close(together[r], model(row, prune=policy)[0, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["mask", "drop"])
def test_two_stages_keep_a_quarter_of_each_row(setup, mode):
    model, batch, _ = setup
    with torch.no_grad():
        plan = HiMAP(1, 0.5, 2, 0.5, mode=mode).plan(model.cfg.n_layers)
        model(batch, prune=plan)
    kept = plan.kept[2]
    image = batch.groups["image"]
    got = [sum(1 for i in kept[r] if i >= 0 and image[r, i]) for r in range(2)]
    assert got == [round(round(int(n) * 0.5) * 0.5) for n in image.sum(-1)]


def test_a_mixed_batch_generates_as_each_prompt_alone(setup):
    model, batch, alone = setup
    policy = HiMAP(1, 0.5, 2, 0.75)
    out = model.generate(batch, max_new_tokens=4, prune=policy, eos_token_id=-1)
    for r, row in enumerate(alone):
        single = model.generate(row, max_new_tokens=4, prune=policy, eos_token_id=-1)
        assert out[r, -4:].tolist() == single[0, -4:].tolist()


def test_keep_newlines_in_specs():
    assert parse_policy("fastv:2,0.5,all_rows,drop,true") == FastV(2, 0.5, rank_by="all_rows", keep_newlines=True)
    assert parse_policy("himap:2,0.5,8,0.75,column,mask,false") == HiMAP(2, 0.5, 8, 0.75, phi_dp="column", mode="mask")
