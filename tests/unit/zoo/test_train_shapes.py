"""Smoke tests of the shapes-llava training script: packing is exact, a few steps train and save."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from mmlens.data.shapes import QUESTION_TYPES, ShapeObject, make_sample, shapes_dataset
from mmlens.zoo.shapes_model import TRAIN_SPLIT, EVAL_SPLITS, accuracy_by_type, prompt
from mmlens.zoo.train_shapes import (
    SMALL,
    describe_answer,
    main,
    make_batch,
    pack,
    prefix_ids,
    train,
)


def test_training_seeds_avoid_held_out_splits() -> None:
    assert TRAIN_SPLIT > max(EVAL_SPLITS)


def test_describe_answer_lists_objects_left_to_right() -> None:
    objects = [ShapeObject("star", "red", (40, 0, 60, 20)), ShapeObject("circle", "blue", (0, 0, 20, 20))]
    assert describe_answer(objects) == "circle blue star red"


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
    main(["--small", "--out", str(tmp_path), "--steps", "2"])
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json"):
        assert (tmp_path / name).exists(), name
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    acc = accuracy_by_type(loaded, loaded_processor, shapes_dataset(7, seed=5, types=QUESTION_TYPES))
    assert set(acc) == {*QUESTION_TYPES, "all"}
