"""Tests for the synthetic shapes VQA world: determinism, answers, boxes and vocabulary."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mmlens.data.shapes import (
    QUESTION_TYPES,
    REL_MARGIN_PX,
    SEED_STRIDE,
    VOCAB_WORDS,
    ShapesConfig,
    draw_scene,
    make_sample,
    shapes_dataset,
)
from mmlens.data.sample import Sample

N_PER_TYPE = 40


@pytest.fixture(scope="module")
def by_type() -> dict[str, list[Sample]]:
    return {t: shapes_dataset(N_PER_TYPE, seed=3, types=[t]) for t in QUESTION_TYPES}


def _objects(sample: Sample) -> dict[str, dict]:
    return {o["shape"]: o for o in sample.meta["objects"]}


def _centre_x(box: tuple) -> float:
    return (box[0] + box[2]) / 2


def _expected(sample: Sample) -> str:
    """Recompute the answer from the question text and the scene objects alone."""
    objs, q = _objects(sample), sample.question
    if m := re.fullmatch(r"Is the (\w+) (\w+) or (\w+)\?", q):
        return objs[m[1]]["colour"].capitalize()
    if m := re.fullmatch(r"Which shape is (\w+), the (\w+) or the (\w+)\?", q):
        (hit,) = [s for s in (m[2], m[3]) if objs[s]["colour"] == m[1]]
        return hit.capitalize()
    if m := re.fullmatch(r"Is the (\w+) (?:left or right|right or left) of the (\w+)\?", q):
        return "Left" if _centre_x(objs[m[1]]["box"]) < _centre_x(objs[m[2]]["box"]) else "Right"
    if m := re.fullmatch(r"Are the (\w+) and the (\w+) the same colour\?", q):
        return "Yes" if objs[m[1]]["colour"] == objs[m[2]]["colour"] else "No"
    if m := re.fullmatch(r"Is there a (\w+) or a (\w+)\?", q):
        return "Yes" if m[1] in objs or m[2] in objs else "No"
    if m := re.fullmatch(r"What colour is the (\w+)\?", q):
        return objs[m[1]]["colour"].capitalize()
    if m := re.fullmatch(r"Is there a (\w+) in the image\?", q):
        return "Yes" if m[1] in objs else "No"
    raise AssertionError(f"unparsed question {q!r}")


def test_same_seed_same_sample_and_pixels() -> None:
    a, b = make_sample(11), make_sample(11)
    assert (a.question, a.answer, a.task, a.meta) == (b.question, b.answer, b.task, b.meta)
    assert np.array_equal(np.asarray(a.load_image()), np.asarray(b.load_image()))
    assert make_sample(12).meta != a.meta


def test_dataset_reproducible_with_ids_and_round_robin() -> None:
    first = shapes_dataset(14, seed=2, types=QUESTION_TYPES)
    again = shapes_dataset(14, seed=2, types=QUESTION_TYPES)
    assert [s.question for s in first] == [s.question for s in again]
    assert [s.id for s in first] == [f"shapes-2-{i}" for i in range(14)]
    assert [s.task for s in first] == list(QUESTION_TYPES) * 2
    held_out = shapes_dataset(14, seed=3)
    assert {s.meta["seed"] for s in first}.isdisjoint(s.meta["seed"] for s in held_out)
    assert first[5].meta["seed"] == 2 * SEED_STRIDE + 5


@pytest.mark.parametrize("qtype", QUESTION_TYPES)
def test_answers_match_recomputation(by_type: dict[str, list[Sample]], qtype: str) -> None:
    for s in by_type[qtype]:
        assert s.task == qtype
        assert s.answer == _expected(s), s.question


@pytest.mark.parametrize("qtype", QUESTION_TYPES)
def test_options_and_answer_form(by_type: dict[str, list[Sample]], qtype: str) -> None:
    for s in by_type[qtype]:
        assert " " not in s.answer and s.answer[0].isupper()
        if qtype == "QueryAttr":
            assert s.options == () and s.true_option is None and s.false_option is None
            continue
        assert len(s.options) == 2 and s.answer in s.options
        assert s.true_option == s.answer
        assert s.false_option in s.options and s.false_option != s.answer
        if qtype in ("CompareAttr", "LogicalObj", "Exist"):
            assert s.options == ("Yes", "No")
        else:  # choice options appear in the question in the same order
            lower = s.question.lower()
            assert lower.index(s.options[0].lower()) < lower.index(s.options[1].lower())


def test_both_option_orders_occur(by_type: dict[str, list[Sample]]) -> None:
    for qtype in ("ChooseAttr", "ChooseCat", "ChooseRel"):
        firsts = {s.options[0] == s.answer for s in by_type[qtype]}
        assert firsts == {True, False}, qtype


def test_boxes_name_the_mentioned_present_objects(by_type: dict[str, list[Sample]]) -> None:
    for samples in by_type.values():
        for s in samples:
            objs = _objects(s)
            words = set(re.findall(r"\w+", s.question))
            assert set(s.boxes) == words & set(objs), s.question
            for name, box in s.boxes.items():
                assert box == objs[name]["box"]


def test_choice_preconditions(by_type: dict[str, list[Sample]]) -> None:
    for s in by_type["ChooseRel"]:
        a, b = s.boxes.values()
        assert abs(_centre_x(a) - _centre_x(b)) >= REL_MARGIN_PX
    for s in by_type["ChooseCat"]:
        colours = [o["colour"] for o in s.meta["objects"]]
        assert colours.count(_objects(s)[s.answer.lower()]["colour"]) == 1
        assert set(s.boxes) == {o.lower() for o in s.options}  # both options are in the scene


def test_boxes_are_tight_disjoint_and_single_coloured() -> None:
    cfg = ShapesConfig()
    rng = np.random.default_rng(0)
    for _ in range(60):
        image, objects = draw_scene(rng, cfg)
        pixels = np.asarray(image)
        assert 2 <= len(objects) <= 3 and len({o.shape for o in objects}) == len(objects)
        for i, obj in enumerate(objects):
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= cfg.image_size and 0 <= y0 < y1 <= cfg.image_size
            assert cfg.size_range[0] - 1 <= max(x1 - x0, y1 - y0) <= cfg.size_range[1]
            crop = pixels[y0:y1, x0:x1]
            fg = np.any(crop != cfg.background, axis=-1)
            ys, xs = np.nonzero(fg)
            drawn = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
            assert np.abs(np.subtract(drawn, obj.box)).max() <= 1
            assert len({tuple(p) for p in crop[fg]}) == 1  # one flat fill, no other object
            for other in objects[i + 1 :]:
                ox0, oy0, ox1, oy1 = other.box
                assert x1 <= ox0 or ox1 <= x0 or y1 <= oy0 or oy1 <= y0
        outside = np.ones(pixels.shape[:2], dtype=bool)
        for obj in objects:
            outside[obj.box[1] : obj.box[3], obj.box[0] : obj.box[2]] = False
        assert np.all(pixels[outside] == cfg.background)


def test_exist_is_balanced() -> None:
    answers = [s.answer for s in shapes_dataset(200, seed=5, types=["Exist"])]
    assert 0.35 <= answers.count("Yes") / len(answers) <= 0.65


def test_all_words_in_vocab() -> None:
    vocab = set(VOCAB_WORDS)
    for s in shapes_dataset(140, seed=7):
        tokens = re.findall(r"\w+|[^\w\s]", f"{s.question} {s.answer}")
        assert set(tokens) <= vocab, s.question
        assert all(o in vocab for o in s.options)


def test_unknown_type_raises() -> None:
    with pytest.raises(ValueError, match="ChooseAttr"):
        make_sample(0, "Count")
    with pytest.raises(ValueError, match="QueryAttr"):
        shapes_dataset(3, types=["Exist", "Colour"])


def test_config_is_respected() -> None:
    grey = (200, 200, 200)
    cfg = ShapesConfig(image_size=96, n_objects=(2, 2), size_range=(20, 30), background=grey)
    s = make_sample(4, "Exist", cfg)
    assert s.load_image().size == (96, 96) and len(s.meta["objects"]) == 2
    with pytest.raises(ValueError):
        ShapesConfig(shapes=("circle", "hexagon"))
