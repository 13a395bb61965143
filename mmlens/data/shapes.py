"""A seeded synthetic VQA world: coloured shapes on a plain background with known boxes.

Each object in a scene is a distinct shape, so "the circle" is unambiguous and the box of every
object a question names is known exactly: the ground truth that patch-level analyses (attention
to the named object, knockouts of its patches) are scored against.

Example:
    >>> sample = make_sample(0, "QueryAttr")
    >>> sample.answer in {"Red", "Green", "Blue", "Yellow"}
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageDraw

from mmlens.data.sample import Sample

PixelBox = tuple[int, int, int, int]
"""An integer pixel box ``(x0, y0, x1, y1)``, ``x1``/``y1`` exclusive."""

RGB = tuple[int, int, int]
_T = TypeVar("_T")
COLOUR_RGB: dict[str, RGB] = {
    "red": (230, 25, 25), "green": (25, 190, 40), "blue": (30, 70, 240), "yellow": (245, 225, 20),
}  # fmt: skip
"""Saturated fills, far apart in RGB so that colour is never the hard part."""

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star")

QUESTION_TYPES: tuple[str, ...] = (
    "ChooseAttr", "ChooseCat", "ChooseRel", "CompareAttr", "LogicalObj", "QueryAttr", "Exist",
)  # fmt: skip

YES, NO = "Yes", "No"
REL_MARGIN_PX = 8
"""Least horizontal distance between two centres for a left/right question to be asked."""

SEED_STRIDE = 1_000_000
"""Sample ``i`` of ``shapes_dataset(seed=s)`` uses seed ``s * SEED_STRIDE + i``."""

_MAX_SCENES, _MAX_PLACEMENTS = 1000, 200

_QUESTION_WORDS = (
    "is", "the", "or", "which", "shape", "left", "right", "of", "are", "and", "same",
    "colour", "there", "a", "in", "image", "what", "yes", "no",
)  # fmt: skip
SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions."
)
"""The LLaVA-1.5 system sentence."""
ANSWER_SUFFIX = "Answer the question using a single word or phrase."
"""The LLaVA-1.5 short-answer instruction, often appended to VQA questions."""
_PROMPT_WORDS = (
    *SYSTEM_PROMPT.replace(".", " . ").replace(",", " , ").replace("'", " ' ").split(),
    *ANSWER_SUFFIX.replace(".", " . ").split(),
    "USER", ":", "ASSISTANT", "?", ",", ".",
)  # fmt: skip

_CASED = [f for w in (*_QUESTION_WORDS, *SHAPE_NAMES, *COLOUR_RGB) for f in (w, w.capitalize())]
VOCAB_WORDS: tuple[str, ...] = tuple(dict.fromkeys([*_CASED, *_PROMPT_WORDS]))
"""Every word of any question, answer or LLaVA-1.5 prompt, in a fixed order."""


@dataclass(frozen=True)
class ShapesConfig:
    """How scenes are drawn.

    Attributes:
        image_size: Side of the square image in pixels.
        n_objects: Inclusive range of the number of objects per scene.
        size_range: Inclusive range of an object's side in pixels.
        background: RGB fill of the background.
        shapes: Shape names to draw from (a subset of ``SHAPE_NAMES``).
        colours: Colour names to draw from (keys of ``COLOUR_RGB``).
        margin: Least gap in pixels between two objects' boxes.
    """

    image_size: int = 64
    n_objects: tuple[int, int] = (2, 3)
    size_range: tuple[int, int] = (16, 24)
    background: RGB = (0, 0, 0)
    shapes: tuple[str, ...] = SHAPE_NAMES
    colours: tuple[str, ...] = tuple(COLOUR_RGB)
    margin: int = 2

    def __post_init__(self) -> None:
        unknown = sorted(set(self.shapes) - set(SHAPE_NAMES) | set(self.colours) - set(COLOUR_RGB))
        if unknown or len(self.colours) < 2:
            raise ValueError(f"need known shapes and >= 2 known colours; unknown: {unknown}")
        if not 1 <= self.n_objects[0] <= self.n_objects[1] <= len(self.shapes):
            raise ValueError(f"n_objects {self.n_objects} must lie in [1, {len(self.shapes)}]")
        if not 3 <= self.size_range[0] <= self.size_range[1] <= self.image_size:
            raise ValueError(f"size_range {self.size_range} must lie in [3, {self.image_size}]")


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object.

    Attributes:
        shape: Shape name, e.g. ``"circle"``.
        colour: Colour name, e.g. ``"red"``.
        box: Tight box of the drawn pixels, ``x1``/``y1`` exclusive.
    """

    shape: str
    colour: str
    box: PixelBox

    @property
    def centre_x(self) -> float:
        """Horizontal centre of the box in pixels."""
        return (self.box[0] + self.box[2]) / 2


def _outline(shape: str, box: PixelBox) -> list[tuple[float, float]]:
    """Polygon vertices of ``shape`` stretched to fill ``box`` (inclusive pixel coordinates)."""
    x0, y0, x1, y1 = box
    w, h = x1 - 1 - x0, y1 - 1 - y0
    if shape == "triangle":
        unit = [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    else:  # star: five outer points, five inner points, pointing up
        angles = np.pi / 2 - np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.4)
        pts = np.stack([radii * np.cos(angles), -radii * np.sin(angles)], axis=1)
        unit = ((pts - pts.min(axis=0)) / np.ptp(pts, axis=0)).tolist()
    return [(x0 + u * w, y0 + v * h) for u, v in unit]


def _draw_mask(shape: str, box: PixelBox, image_size: int) -> Image.Image:
    """Return an ``L`` mask of one shape filling ``box``."""
    mask = Image.new("L", (image_size, image_size), 0)
    draw, inclusive = ImageDraw.Draw(mask), (box[0], box[1], box[2] - 1, box[3] - 1)
    if shape == "circle":
        draw.ellipse(inclusive, fill=255)
    elif shape == "square":
        draw.rectangle(inclusive, fill=255)
    else:
        draw.polygon(_outline(shape, box), fill=255)
    return mask


def _place(rng: np.random.Generator, cfg: ShapesConfig) -> list[PixelBox]:
    """Draw square boxes that keep ``cfg.margin`` apart, starting afresh when they do not fit."""
    for _ in range(_MAX_SCENES):
        n = int(rng.integers(cfg.n_objects[0], cfg.n_objects[1] + 1))
        boxes: list[PixelBox] = []
        for _ in range(_MAX_PLACEMENTS):
            side = int(rng.integers(cfg.size_range[0], cfg.size_range[1] + 1))
            x0, y0 = (int(v) for v in rng.integers(0, cfg.image_size - side + 1, size=2))
            cand = (x0, y0, x0 + side, y0 + side)
            if all(_apart(cand, b, cfg.margin) for b in boxes):
                boxes.append(cand)
                if len(boxes) == n:
                    return boxes
    raise RuntimeError(f"cannot place objects without overlap under {cfg}")


def _apart(a: PixelBox, b: PixelBox, margin: int) -> bool:
    m = margin
    return a[2] + m <= b[0] or b[2] + m <= a[0] or a[3] + m <= b[1] or b[3] + m <= a[1]


def draw_scene(
    rng: np.random.Generator, cfg: ShapesConfig
) -> tuple[Image.Image, list[ShapeObject]]:
    """Draw one scene of distinct shapes with known tight boxes.

    Args:
        rng: Source of randomness; the scene is a pure function of its state.
        cfg: Scene configuration.

    Returns:
        The RGB image and its objects, in drawing order.

    Raises:
        RuntimeError: When ``cfg`` leaves no room to place the objects.
    """
    boxes = _place(rng, cfg)
    shapes = rng.choice(len(cfg.shapes), size=len(boxes), replace=False)
    colours = rng.integers(0, len(cfg.colours), size=len(boxes))
    image = Image.new("RGB", (cfg.image_size, cfg.image_size), cfg.background)
    objects = []
    for box, s, c in zip(boxes, shapes, colours):
        shape, colour = cfg.shapes[int(s)], cfg.colours[int(c)]
        mask = _draw_mask(shape, box, cfg.image_size)
        image.paste(COLOUR_RGB[colour], mask=mask)
        x0, y0, x1, y1 = mask.getbbox() or box  # a shape of side >= 3 always draws pixels
        objects.append(ShapeObject(shape, colour, (x0, y0, x1, y1)))
    return image, objects


@dataclass(frozen=True)
class _Question:
    text: str
    answer: str
    options: tuple[str, ...]
    named: tuple[ShapeObject, ...]


@dataclass(frozen=True)
class _Scene:
    """What a question builder may use: the generator, the objects, the config, the wanted yes."""

    rng: np.random.Generator
    objects: list[ShapeObject]
    cfg: ShapesConfig
    want_yes: bool

    def pick(self, items: Sequence[_T]) -> _T:
        return items[int(self.rng.integers(len(items)))]

    def choice(self, template: str, true: str, false: str, named: tuple) -> _Question:
        """A two-way choice, its options in one random order in the text and in ``options``."""
        a, b = (true, false) if self.rng.random() < 0.5 else (false, true)
        options = (a.capitalize(), b.capitalize())
        return _Question(template.format(a=a, b=b), true.capitalize(), options, named)

    def yes_no(self, text: str, named: tuple[ShapeObject, ...]) -> _Question:
        return _Question(text, YES if self.want_yes else NO, (YES, NO), named)


def _choose_attr(q: _Scene) -> _Question:
    obj = q.pick(q.objects)
    other = q.pick([c for c in q.cfg.colours if c != obj.colour])
    return q.choice(f"Is the {obj.shape} {{a}} or {{b}}?", obj.colour, other, (obj,))


def _choose_cat(q: _Scene) -> _Question | None:
    unique = [o for o in q.objects if sum(p.colour == o.colour for p in q.objects) == 1]
    if not unique:
        return None
    obj = q.pick(unique)
    foil = q.pick([o for o in q.objects if o is not obj])
    text = f"Which shape is {obj.colour}, the {{a}} or the {{b}}?"
    return q.choice(text, obj.shape, foil.shape, (obj, foil))


def _choose_rel(q: _Scene) -> _Question | None:
    objs = q.objects
    far = [(a, b) for a in objs for b in objs if abs(a.centre_x - b.centre_x) >= REL_MARGIN_PX]
    if not far:
        return None
    a, b = q.pick(far)
    rel, other = ("left", "right") if a.centre_x < b.centre_x else ("right", "left")
    return q.choice(f"Is the {a.shape} {{a}} or {{b}} of the {b.shape}?", rel, other, (a, b))


def _compare_attr(q: _Scene) -> _Question | None:
    objs = q.objects
    same = q.want_yes
    pairs = [(a, b) for a in objs for b in objs if a is not b and (a.colour == b.colour) == same]
    if not pairs:
        return None
    a, b = q.pick(pairs)  # ordered pairs, so either object may come first
    return q.yes_no(f"Are the {a.shape} and the {b.shape} the same colour?", (a, b))


def _logical_obj(q: _Scene) -> _Question | None:
    present = [o.shape for o in q.objects]
    absent = [s for s in q.cfg.shapes if s not in present]
    if q.want_yes:  # one present shape and any other, in random order
        first = q.pick(present)
        pair = [first, q.pick([s for s in q.cfg.shapes if s != first])]
    elif len(absent) >= 2:
        pair = [absent[int(i)] for i in q.rng.choice(len(absent), size=2, replace=False)]
    else:
        return None
    a, b = pair if q.rng.random() < 0.5 else pair[::-1]
    named = tuple(o for o in q.objects if o.shape in pair)
    return q.yes_no(f"Is there a {a} or a {b}?", named)


def _query_attr(q: _Scene) -> _Question:
    obj = q.pick(q.objects)
    return _Question(f"What colour is the {obj.shape}?", obj.colour.capitalize(), (), (obj,))


def _exist(q: _Scene) -> _Question | None:
    present = [o.shape for o in q.objects]
    pool = present if q.want_yes else [s for s in q.cfg.shapes if s not in present]
    if not pool:
        return None
    shape = q.pick(pool)
    named = tuple(o for o in q.objects if o.shape == shape)
    return q.yes_no(f"Is there a {shape} in the image?", named)


_ASKERS: dict[str, Callable[[_Scene], _Question | None]] = {
    "ChooseAttr": _choose_attr,
    "ChooseCat": _choose_cat,
    "ChooseRel": _choose_rel,
    "CompareAttr": _compare_attr,
    "LogicalObj": _logical_obj,
    "QueryAttr": _query_attr,
    "Exist": _exist,
}


def _check_type(qtype: str) -> None:
    if qtype not in _ASKERS:
        raise ValueError(f"unknown question type {qtype!r}; valid: {', '.join(QUESTION_TYPES)}")


def make_sample(
    seed: int,
    qtype: str | None = None,
    cfg: ShapesConfig = ShapesConfig(),
    *,
    sample_id: str | None = None,
) -> Sample:
    """Draw one scene and one question about it, deterministically from ``seed``.

    A scene that cannot support the question type (no uniquely coloured object for
    ``ChooseCat``, no horizontally separated pair for ``ChooseRel``) is replaced by a new scene
    from the same generator. Yes/no types draw the wanted answer first, so they are balanced.

    Args:
        seed: Seed of ``numpy.random.default_rng``.
        qtype: One of ``QUESTION_TYPES``; None picks one uniformly.
        cfg: Scene configuration.
        sample_id: Identifier to store; defaults to ``f"shapes-{seed}"``.

    Returns:
        The sample, with ``meta["objects"]`` listing every scene object and ``meta["seed"]``.

    Raises:
        ValueError: When ``qtype`` is not a known question type.
        RuntimeError: When no scene under ``cfg`` supports ``qtype``.
    """
    rng = np.random.default_rng(seed)
    if qtype is None:
        qtype = QUESTION_TYPES[int(rng.integers(len(QUESTION_TYPES)))]
    _check_type(qtype)
    want_yes = bool(rng.random() < 0.5)
    for _ in range(_MAX_SCENES):
        image, objects = draw_scene(rng, cfg)
        question = _ASKERS[qtype](_Scene(rng, objects, cfg, want_yes))
        if question is not None:
            break
    else:
        raise RuntimeError(f"no scene under {cfg} supports {qtype!r}")
    options, answer = question.options, question.answer
    return Sample(
        id=sample_id if sample_id is not None else f"shapes-{seed}",
        image=image,
        question=question.text,
        answer=answer,
        task=qtype,
        options=options,
        true_option=answer if options else None,
        false_option=next((o for o in options if o != answer), None),
        boxes={o.shape: o.box for o in question.named},
        meta={"objects": [asdict(o) for o in objects], "seed": seed},
    )


def shapes_dataset(
    n: int,
    seed: int = 0,
    types: Sequence[str] | None = None,
    cfg: ShapesConfig = ShapesConfig(),
) -> list[Sample]:
    """Return ``n`` reproducible samples; different ``seed`` values never share a sample seed.

    Sample ``i`` uses seed ``seed * SEED_STRIDE + i`` and id ``f"shapes-{seed}-{i}"``, so a
    held-out split is simply another ``seed``.

    Args:
        n: Number of samples, at most ``SEED_STRIDE``.
        seed: Split seed, non-negative.
        types: Question types, cycled round-robin; None draws a type per sample uniformly.
        cfg: Scene configuration.

    Returns:
        The samples in order.

    Raises:
        ValueError: On an unknown type, an empty ``types``, a negative seed, or too large ``n``.
    """
    if not 0 <= n <= SEED_STRIDE or seed < 0:
        raise ValueError(f"need 0 <= n <= {SEED_STRIDE} and seed >= 0, got n={n}, seed={seed}")
    if types is not None and len(types) == 0:
        raise ValueError("types must not be empty")
    for t in types or ():
        _check_type(t)
    cycle: list[str | None] = [None] if types is None else list(types)
    return [
        make_sample(
            seed * SEED_STRIDE + i, cycle[i % len(cycle)], cfg, sample_id=f"shapes-{seed}-{i}"
        )
        for i in range(n)
    ]
