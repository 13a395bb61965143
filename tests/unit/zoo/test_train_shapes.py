"""Smoke tests of the shapes-llava training script: packing is exact, turns are right, a few steps train and save."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

import numpy as np
from PIL import Image

from mmlens.data.shapes import QUESTION_TYPES, ShapeObject, ShapesConfig, draw_scene, make_sample, shapes_dataset
from mmlens.zoo.shapes_model import (
    AUX_KINDS,
    EVAL_SPLITS,
    TRAIN_SPLIT,
    accuracy_by_type,
    aux_turn,
    colours_answer,
    describe_answer,
    draw_turns,
    pack,
    patch_labels,
    prefix_ids,
    prompt,
    relations_turn,
    shapes_answer,
    sides_answer,
)
from mmlens.zoo.train_shapes import SMALL, VISION_SPLIT, main, make_batch, train

# A star on the right, a circle on the left, a blue square in the middle.
OBJECTS = [
    ShapeObject("star", "red", (40, 0, 60, 20)),
    ShapeObject("circle", "blue", (0, 0, 20, 20)),
    ShapeObject("square", "blue", (22, 30, 38, 46)),
]


def test_training_seeds_avoid_held_out_splits() -> None:
    assert min(TRAIN_SPLIT, VISION_SPLIT) > max(EVAL_SPLITS)


def test_auxiliary_answers() -> None:
    cfg = ShapesConfig()
    assert describe_answer(OBJECTS) == "circle blue square blue star red"
    assert colours_answer(OBJECTS, cfg) == "circle Blue square Blue triangle No star Red"
    assert shapes_answer(OBJECTS, cfg) == "red Star green No blue Circle Square yellow No"
    assert sides_answer(OBJECTS, cfg) == "circle Left square Left triangle No star Right"


def test_relations_name_every_clear_object_relative_to_the_reference() -> None:
    cfg = ShapesConfig()
    turns = {relations_turn(np.random.default_rng(i), OBJECTS, cfg) for i in range(20)}
    assert turns == {
        ("Which shape is left or right of the star?", "circle Left square Left"),
        ("Which shape is left or right of the circle?", "square Right star Right"),
        ("Which shape is left or right of the square?", "circle Left star Right"),
    }


def test_every_aux_kind_yields_a_turn() -> None:
    rng = np.random.default_rng(0)
    for kind in range(len(AUX_KINDS)):
        question, answer = aux_turn(kind, OBJECTS, ShapesConfig(), rng)
        assert question.endswith("?") and answer


def test_draw_turns_is_seeded() -> None:
    cfg = ShapesConfig()
    a, b = (draw_turns(np.random.default_rng(3), OBJECTS, cfg, 12, 0.4) for _ in range(2))
    assert a == b and len(a) == 12


def test_patch_labels_name_the_covering_object() -> None:
    image = Image.new("RGB", (64, 64))
    image.paste((230, 25, 25), (40, 0, 60, 20))  # the red star's box, filled
    labels = patch_labels(OBJECTS[:1], image, 8).reshape(8, 8, 3)
    assert labels[0, 5].tolist() == [4, 1, 7]  # star, red, centre column 50 // 8 + 1
    assert labels[4, 4].tolist() == [0, 0, 0]


def test_packed_turns_match_single_turn_prompts() -> None:
    """Each packed turn sees what its single-turn processor prompt holds, at the same positions."""
    model, processor = train(replace(SMALL, steps=0), progress=False)
    prefix = prefix_ids(processor, SMALL.arch.n_patches)
    samples = [make_sample(i, qtype) for i, qtype in enumerate(QUESTION_TYPES[:3])]
    image = samples[0].load_image()  # one image for all turns; only the question text varies
    batch = pack(processor, prefix, [[(s.question, s.answer) for s in samples]])
    labels = batch.pop("labels")[0]
    slots = [i - 1 for i in range(1, len(labels)) if labels[i] != -100 and labels[i - 1] == -100]
    pixel_values = processor.image_processor([image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        packed = model(**batch, pixel_values=pixel_values).logits[0]
        for slot, sample in zip(slots, samples, strict=True):
            single = processor(images=[image], text=[prompt(sample.question)], return_tensors="pt")
            ids = single["input_ids"][0]
            turn = batch["input_ids"][0, slot + 1 - (len(ids) - len(prefix)) : slot + 1]
            assert ids[: len(prefix)].tolist() == prefix and turn.tolist() == ids[len(prefix) :].tolist()
            assert batch["position_ids"][0, slot].item() == len(ids) - 1
            answer = processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0, slot + 1].item())
            assert answer == sample.answer
            alone = model(**single).logits[0, -1]
            torch.testing.assert_close(packed[slot], alone, atol=1e-4, rtol=1e-4)


def test_batches_are_reproducible() -> None:
    _, processor = train(replace(SMALL, steps=0), progress=False)
    prefix = prefix_ids(processor, SMALL.arch.n_patches)
    a, b = make_batch(processor, SMALL, 3, prefix), make_batch(processor, SMALL, 3, prefix)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_small_training_runs_and_saves_a_loadable_checkpoint(tmp_path) -> None:
    history: list[dict] = []
    config = replace(SMALL, steps=6, eval_every=3)
    model, processor = train(config, progress=False, history=history)
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert math.isfinite(history[0]["patch_loss"])
    main(["--small", "--out", str(tmp_path), "--steps", "2"])
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json"):
        assert (tmp_path / name).exists(), name
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    acc = accuracy_by_type(loaded, loaded_processor, shapes_dataset(7, seed=5, types=QUESTION_TYPES))
    assert set(acc) == {*QUESTION_TYPES, "all"}


def test_training_continues_from_a_saved_checkpoint(tmp_path) -> None:
    main(["--small", "--out", str(tmp_path / "a"), "--steps", "1"])
    start = LlavaForConditionalGeneration.from_pretrained(tmp_path / "a").state_dict()
    main(["--small", "--init", str(tmp_path / "a"), "--out", str(tmp_path / "b"), "--steps", "1",
          "--seed", "1", "--set", "vision_steps=0"])  # fmt: skip
    after = LlavaForConditionalGeneration.from_pretrained(tmp_path / "b").state_dict()
    assert start.keys() == after.keys()
    changed = [k for k in start if not torch.equal(start[k], after[k])]
    assert changed and "model.language_model.layers.0.self_attn.q_proj.weight" in changed


def test_pair_turn_names_both_colours_in_order() -> None:
    from mmlens.zoo.shapes_model import pair_turn

    colour = {o.shape: o.colour.capitalize() for o in OBJECTS}
    for i in range(20):
        question, answer = pair_turn(np.random.default_rng(i), OBJECTS)
        a, b = question.removeprefix("What colour are the ").removesuffix("?").split(" and the ")
        assert answer == f"{colour[a]} {colour[b]}" and a != b


def test_balance_evens_out_yes_and_no() -> None:
    cfg, compare = ShapesConfig(), np.eye(len(QUESTION_TYPES))[QUESTION_TYPES.index("CompareAttr")]
    counts = {}
    for balance in (None, {}):
        answers = []
        for i in range(200):
            rng = np.random.default_rng(i)
            _, objects = draw_scene(rng, cfg)
            answers += [a for _, a in draw_turns(rng, objects, cfg, 4, 0.0, type_weights=compare, balance=balance)]
        counts[balance is None] = answers.count("Yes") / len(answers)
    assert counts[True] < 0.35 and abs(counts[False] - 0.5) < 0.08  # unbalanced: mostly No
