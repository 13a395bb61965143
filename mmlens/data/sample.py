"""One sample type shared by every dataset reader and study."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

from PIL import Image

from mmlens.typing import Box

ImageSource = Union[Image.Image, Callable[[], Image.Image]]


@dataclass(frozen=True)
class Sample:
    """A visual question with its answer and, when known, the boxes of the objects it names.

    Attributes:
        id: Stable identifier within its dataset.
        image: The image, or a zero-argument loader returning it (readers load lazily).
        question: The question text without any task suffix or template.
        answer: The gold answer as the model should emit it (e.g. ``"Red"``).
        task: Question type, e.g. ``"ChooseAttr"`` or ``"exist"``.
        options: Answer options when the question offers a choice (true option first is NOT implied).
        true_option: The correct option, when ``options`` is given.
        false_option: The first incorrect option, when ``options`` is given.
        boxes: Boxes of the objects the question refers to, keyed by a role name
            (``"central object"``, ``"object1"``, ``"object2"``, or the object's own name).
        meta: Anything else a reader keeps (scene objects, source file and line).
    """

    id: str
    image: ImageSource
    question: str
    answer: str
    task: str = ""
    options: tuple[str, ...] = ()
    true_option: str | None = None
    false_option: str | None = None
    boxes: dict[str, Box] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def load_image(self) -> Image.Image:
        """Return the image as RGB, calling the loader when the image is lazy."""
        img = self.image if isinstance(self.image, Image.Image) else self.image()
        return img.convert("RGB")
