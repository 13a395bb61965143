"""The shapes-llava training turns: auxiliary questions about one scene, sentence answers, patch labels.

Each auxiliary answer word after a shape (or colour) word is a one-hop lookup from that word to
its object's patches, the step every question type needs first, supervised directly.
:func:`draw_turns` mixes them with the dataset's own questions (optionally in sentence form) for
the training script (:mod:`mmlens.zoo.train_shapes`); :func:`patch_labels` gives the per-patch
targets of its vision stage. :mod:`mmlens.zoo.shapes_model` re-exports every name here.

Example:
    >>> from mmlens.data.shapes import ShapeObject
    >>> describe_answer([ShapeObject("square", "blue", (40, 8, 56, 24)), ShapeObject("circle", "red", (4, 8, 20, 24))])
    'circle red square blue'
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from mmlens.data.shapes import (
    _ASKERS,  # the dataset's own question builders, asked several times about one scene
    COLOUR_RGB,
    NO,
    QUESTION_TYPES,
    YES,
    REL_MARGIN_PX,
    SHAPE_NAMES,
    ShapeObject,
    ShapesConfig,
    _Scene,
)

Turn = tuple[str, str]
"""A (question, answer) pair; the answer may be several words."""


DESCRIBE = "What shape and colour are in the image?"
COLOURS_QUESTION = "What colour is which shape?"
SHAPES_QUESTION = "Which shape is what colour?"
SIDES_QUESTION = "Which shape is left or right in the image?"
AUX_KINDS = ("describe", "colours", "shapes", "side", "sides", "relations", "pair")
"""Auxiliary turn kinds, in the order :func:`aux_turn` numbers them."""


def describe_answer(objects: Sequence[ShapeObject]) -> str:
    """``"circle red square blue"``: every object's shape and colour, left to right."""
    ordered = sorted(objects, key=lambda o: o.centre_x)
    return " ".join(f"{o.shape} {o.colour}" for o in ordered)


def colours_answer(objects: Sequence[ShapeObject], cfg: ShapesConfig) -> str:
    """``"circle Red square No triangle Blue star No"``: each shape of ``cfg``, then its colour or No."""
    colour = {o.shape: o.colour.capitalize() for o in objects}
    return " ".join(f"{s} {colour.get(s, NO)}" for s in cfg.shapes)


def shapes_answer(objects: Sequence[ShapeObject], cfg: ShapesConfig) -> str:
    """``"red Circle Star green No ..."``: each colour of ``cfg``, then its shapes left to right or No."""
    ordered = sorted(objects, key=lambda o: o.centre_x)
    parts = []
    for c in cfg.colours:
        shapes = [o.shape.capitalize() for o in ordered if o.colour == c]
        parts.append(" ".join([c, *shapes]) if shapes else f"{c} {NO}")
    return " ".join(parts)


def sides_answer(objects: Sequence[ShapeObject], cfg: ShapesConfig) -> str:
    """``"circle Left square No triangle Right star No"``: each shape of ``cfg``, then its image half or No."""
    middle = cfg.image_size / 2
    side = {o.shape: "Left" if o.centre_x < middle else "Right" for o in objects}
    return " ".join(f"{s} {side.get(s, NO)}" for s in cfg.shapes)


def side_turn(rng: np.random.Generator, objects: Sequence[ShapeObject], cfg: ShapesConfig) -> Turn | None:
    """``Is the circle left or right in the image?``: a ChooseRel question against the image middle.

    A one-object stepping stone to the two-object relation: the same words and answer slot, with
    the middle of the image as the reference. Objects within ``REL_MARGIN_PX / 2`` of the middle
    are not asked about; None when every object is.
    """
    middle = cfg.image_size / 2
    clear = [o for o in objects if abs(o.centre_x - middle) >= REL_MARGIN_PX / 2]
    if not clear:
        return None
    obj = clear[int(rng.integers(len(clear)))]
    side = "left" if obj.centre_x < middle else "right"
    a, b = ("left", "right") if rng.random() < 0.5 else ("right", "left")
    return f"Is the {obj.shape} {a} or {b} in the image?", side.capitalize()


def relations_turn(rng: np.random.Generator, objects: Sequence[ShapeObject], cfg: ShapesConfig) -> Turn | None:
    """``Which shape is left or right of the circle?`` answered ``square Right star Left``.

    Every other object (in ``cfg.shapes`` order) is named, then its side relative to the
    reference named in the question: a later shape word compares its own object's position with
    an earlier word's, the step a ChooseRel answer needs. Pairs closer than ``REL_MARGIN_PX`` are
    left out; None when no pair is clear.
    """
    reference = objects[int(rng.integers(len(objects)))]
    others = sorted(
        (o for o in objects if abs(o.centre_x - reference.centre_x) >= REL_MARGIN_PX),
        key=lambda o: cfg.shapes.index(o.shape),
    )
    if not others:
        return None
    answer = " ".join(f"{o.shape} {'Left' if o.centre_x < reference.centre_x else 'Right'}" for o in others)
    return f"Which shape is left or right of the {reference.shape}?", answer


def pair_turn(rng: np.random.Generator, objects: Sequence[ShapeObject]) -> Turn:
    """``What colour are the circle and the square?`` answered ``Red Blue``, in the order named.

    The two lookups a CompareAttr question needs, from the same two-shape phrase, answered one
    after the other; half the pairs share a colour when the scene has such a pair.
    """
    pairs = [(a, b) for a in objects for b in objects if a is not b]
    same = [(a, b) for a, b in pairs if a.colour == b.colour]
    pool = same if same and rng.random() < 0.5 else pairs
    a, b = pool[int(rng.integers(len(pool)))]
    return f"What colour are the {a.shape} and the {b.shape}?", f"{a.colour.capitalize()} {b.colour.capitalize()}"


def aux_turn(kind: int, objects: Sequence[ShapeObject], cfg: ShapesConfig, rng: np.random.Generator) -> Turn:
    """Auxiliary turn number ``kind`` of ``AUX_KINDS``; a side or relations turn that the scene
    cannot carry falls back to describe."""
    if kind == 6:
        return pair_turn(rng, objects)
    if kind == 4:
        return SIDES_QUESTION, sides_answer(objects, cfg)
    if kind in (3, 5):
        turn = (side_turn if kind == 3 else relations_turn)(rng, objects, cfg)
        if turn is not None:
            return turn
    if kind in (0, 3, 5):
        return DESCRIBE, describe_answer(objects)
    if kind == 1:
        return COLOURS_QUESTION, colours_answer(objects, cfg)
    return SHAPES_QUESTION, shapes_answer(objects, cfg)


PHRASE_SUFFIX = "Answer the question using a phrase."
"""Appended to a question asked in its sentence form (:func:`sentence_answer`)."""


def sentence_answer(qtype: str, text: str, answer: str, named: Sequence[ShapeObject]) -> str:
    """The answer to question ``text`` of type ``qtype`` as a sentence, the answer word in lower case.

    ``"The circle is red ."`` where the one-word answer is ``Red``; ``"The circle is left of the
    square ."`` for ``Left``; yes/no questions start with ``Yes ,`` or ``No ,`` and restate the
    scene in lower-case words. Only the first word is capitalised, as in running text, so the
    lower-case forms of colours, shapes and sides are produced in the middle of sentences, the
    life that language pre-training gives them in LLaVA.

    Args:
        qtype: One of ``QUESTION_TYPES``.
        text: The question.
        answer: Its one-word answer.
        named: The objects the question names (:class:`_Question`'s ``named``).
    """
    words = text.rstrip("?").replace(",", " ").split()
    mentioned = [w for w in words if w in SHAPE_NAMES]
    if qtype in ("ChooseAttr", "QueryAttr", "ChooseCat"):
        return f"The {named[0].shape} is {named[0].colour} ."
    if qtype == "ChooseRel":
        return f"The {named[0].shape} is {answer.lower()} of the {named[1].shape} ."
    if qtype == "CompareAttr":
        a, b = named
        if answer == YES:
            return f"Yes , the {a.shape} and the {b.shape} are {a.colour} ."
        return f"No , the {a.shape} is {a.colour} and the {b.shape} is {b.colour} ."
    if answer == YES:  # Exist, LogicalObj: name what is there
        return f"Yes , there is a {named[0].shape} in the image ."
    return "No , there is " + " and ".join(f"no {s}" for s in mentioned) + " in the image ."


def draw_turns(
    rng: np.random.Generator,
    objects: list[ShapeObject],
    cfg: ShapesConfig,
    n_turns: int,
    aux_rate: float,
    aux_kinds: int = 6,
    type_weights: np.ndarray | None = None,
    balance: dict[str, int] | None = None,
    sentence_rate: float = 0.0,
) -> list[Turn]:
    """``n_turns`` turns about one scene: auxiliary with chance ``aux_rate``, else a question.

    Args:
        rng: Source of randomness.
        objects: The scene's objects.
        cfg: The scene configuration.
        n_turns: Turns to draw.
        aux_rate: Chance that a turn is auxiliary (kind uniform among the first ``aux_kinds``).
        aux_kinds: How many of ``AUX_KINDS`` to draw from.
        type_weights: Probabilities of ``QUESTION_TYPES`` (uniform when None); a type the scene
            cannot carry is redrawn.
        balance: When given, a running count per type of Yes minus No answers (updated here) that
            steers yes/no questions towards the rarer answer. Without it, the types whose Yes
            needs a special scene (two objects of one colour) are mostly No in training.
        sentence_rate: Chance that a question is asked in its sentence form instead: the
            question followed by ``PHRASE_SUFFIX``, answered by :func:`sentence_answer`. At 0
            (the shipped recipe) no random number is drawn for it, so the turns are unchanged.

    Returns:
        The turns, in order.
    """
    turns: list[Turn] = []
    while len(turns) < n_turns:
        if rng.random() < aux_rate:
            turns.append(aux_turn(int(rng.integers(aux_kinds)), objects, cfg, rng))
            continue
        qtype = QUESTION_TYPES[int(rng.choice(len(QUESTION_TYPES), p=type_weights))]
        want_yes = bool(rng.random() < 0.5)
        steered = balance is not None and balance.get(qtype, 0) != 0
        if steered:
            want_yes = balance[qtype] < 0
        question = _ASKERS[qtype](_Scene(rng, objects, cfg, want_yes))
        if question is None and steered:  # the scene cannot give the rarer answer: take the other
            question = _ASKERS[qtype](_Scene(rng, objects, cfg, not want_yes))
        if question is not None and sentence_rate > 0 and rng.random() < sentence_rate:
            sentence = sentence_answer(qtype, question.text, question.answer, question.named)
            turns.append((f"{question.text} {PHRASE_SUFFIX}", sentence))
        elif question is not None:
            turns.append((question.text, question.answer))
            if balance is not None and question.answer in (YES, NO):
                balance[qtype] = balance.get(qtype, 0) + (1 if question.answer == YES else -1)
    return turns


def patch_labels(objects: Sequence[ShapeObject], image: Image.Image, patch_size: int) -> np.ndarray:
    """Per patch, ``(shape, colour, column)`` classes of the object covering most of it.

    Classes are ``1 + index`` into ``SHAPE_NAMES`` / ``COLOUR_RGB`` and ``1 +`` the patch column
    of the object's centre, 0 for background; a patch needs at least an eighth of its pixels on
    one object to take that object's classes.

    Returns:
        Integer array of shape ``(grid * grid, 3)``, patches in raster order.
    """
    pixels = np.asarray(image)
    owner = np.zeros(pixels.shape[:2], dtype=np.int64)  # 0: background, k: objects[k - 1]
    drawn = pixels.any(axis=-1)
    for k, obj in enumerate(objects, start=1):
        x0, y0, x1, y1 = obj.box
        owner[y0:y1, x0:x1] = np.where(drawn[y0:y1, x0:x1], k, owner[y0:y1, x0:x1])
    grid = owner.shape[0] // patch_size
    # (grid*ps, grid*ps) -> (grid*grid patches, ps*ps pixels), patches in raster order
    blocks = owner.reshape(grid, patch_size, grid, patch_size).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    counts = np.stack([(blocks == k).sum(axis=1) for k in range(len(objects) + 1)], axis=1)
    counts[:, 0] = patch_size * patch_size // 8  # background wins below an eighth of a patch
    table = [(0, 0, 0)] + [
        (SHAPE_NAMES.index(o.shape) + 1, list(COLOUR_RGB).index(o.colour) + 1, int(o.centre_x // patch_size) + 1)
        for o in objects
    ]
    return np.array(table)[counts.argmax(axis=1)]
