"""The shapes-llava-deep options: sentence-form turns, a deeper architecture, checkpoints; defaults unchanged."""

from __future__ import annotations

import hashlib
import json
import numpy as np
import pytest
import transformers

from mmlens.data.shapes import QUESTION_TYPES, ShapeObject, ShapesConfig, draw_scene
from mmlens.zoo.shapes_model import PHRASE_SUFFIX, draw_turns, sentence_answer, shapes_llava_config, shapes_processor
from mmlens.zoo.train_shapes import DEEP, TrainConfig, main

# A red star on the right, a blue circle on the left, a blue square in the middle.
OBJECTS = [
    ShapeObject("star", "red", (40, 0, 60, 20)),
    ShapeObject("circle", "blue", (0, 0, 20, 20)),
    ShapeObject("square", "blue", (22, 30, 38, 46)),
]
COLOUR = {o.shape: o.colour for o in OBJECTS}


def _only(qtype: str) -> np.ndarray:
    return np.eye(len(QUESTION_TYPES))[QUESTION_TYPES.index(qtype)]


def test_default_turns_are_those_of_the_shipped_recipe() -> None:
    """The turns drawn without the new option match, digest for digest, those of the code that trained shapes-llava."""
    cfg, out = ShapesConfig(), []
    for i in range(50):
        rng = np.random.default_rng(i)
        _, objects = draw_scene(rng, cfg)
        out.append(draw_turns(rng, objects, cfg, 8, 0.4))
    assert hashlib.sha256(repr(out).encode()).hexdigest()[:16] == "31b5f6ace8a01065"


def test_default_config_is_unchanged() -> None:
    config = TrainConfig()
    assert config.sentence_rate == 0 and config.checkpoint_every == 0
    assert (config.arch.n_layers, config.arch.d_model, config.turns_per_image, config.aux_rate) == (4, 256, 8, 0.4)


@pytest.mark.parametrize("qtype", ["QueryAttr", "ChooseAttr"])
def test_sentence_turns_name_the_colour_in_lower_case(qtype: str) -> None:
    cfg = ShapesConfig()
    for i in range(20):
        turns = draw_turns(np.random.default_rng(i), OBJECTS, cfg, 3, 0.0, type_weights=_only(qtype), sentence_rate=1.0)
        for question, answer in turns:
            assert question.endswith(f"? {PHRASE_SUFFIX}")
            shape = next(w for w in question.replace("?", " ").split() if w in COLOUR)
            assert answer == f"The {shape} is {COLOUR[shape]} ."


def test_sentence_turns_of_relations_and_yes_no_types() -> None:
    cfg = ShapesConfig()
    for i in range(30):
        rng = np.random.default_rng(i)
        ((question, answer),) = draw_turns(rng, OBJECTS, cfg, 1, 0.0, type_weights=_only("ChooseRel"), sentence_rate=1.0)
        a, b = (w for w in question.replace("?", " ").split() if w in COLOUR)
        centre = {o.shape: o.centre_x for o in OBJECTS}
        assert answer == f"The {a} is {'left' if centre[a] < centre[b] else 'right'} of the {b} ."
    assert sentence_answer("Exist", "Is there a triangle in the image?", "No", ()) == "No , there is no triangle in the image ."
    assert sentence_answer("LogicalObj", "Is there a star or a circle?", "Yes", OBJECTS[:1]) == "Yes , there is a star in the image ."
    no_pair = sentence_answer("CompareAttr", "Are the star and the circle the same colour?", "No", OBJECTS[:2])
    assert no_pair == "No , the star is red and the circle is blue ."


def test_sentence_rate_mixes_both_forms_and_the_plain_form_stays_capitalised() -> None:
    cfg, turns = ShapesConfig(), []
    for i in range(40):
        turns += draw_turns(np.random.default_rng(i), OBJECTS, cfg, 5, 0.0, type_weights=_only("QueryAttr"), sentence_rate=0.5)
    sentences = [a for q, a in turns if q.endswith(PHRASE_SUFFIX)]
    plain = [a for q, a in turns if not q.endswith(PHRASE_SUFFIX)]
    assert 0.3 < len(sentences) / len(turns) < 0.7
    assert set(plain) == {"Red", "Blue"} and all(a.split()[-2] in {"red", "blue"} for a in sentences)


def test_deep_architecture_fits_the_size_budget() -> None:
    processor = shapes_processor(DEEP.arch)
    model = transformers.LlavaForConditionalGeneration(shapes_llava_config(DEEP.arch, processor))
    assert model.config.text_config.num_hidden_layers >= 8
    assert sum(p.numel() for p in model.parameters()) * 4 <= 25e6  # fp32 safetensors, bytes


def test_command_line_sets_arch_fields_and_writes_checkpoints(tmp_path) -> None:
    main(["--small", "--out", str(tmp_path), "--steps", "2", "--set", "arch.n_layers=2",
          "--set", "sentence_rate=0.5", "--set", "checkpoint_every=1"])  # fmt: skip
    assert json.loads((tmp_path / "config.json").read_text())["text_config"]["num_hidden_layers"] == 2
    assert (tmp_path / "step-1" / "model.safetensors").exists() and (tmp_path / "step-2" / "tokenizer.json").exists()
    logged = json.loads((tmp_path / "training_log.json").read_text())["config"]
    assert logged["sentence_rate"] == 0.5 and logged["arch"]["n_layers"] == 2
    with pytest.raises(SystemExit):
        main(["--small", "--out", str(tmp_path), "--set", "arch.depth=2"])
