"""Prompt templates: how a question and an image become the prompt string, and how the image
is fitted to the tower's square input (methods.md §9)."""

from __future__ import annotations

from dataclasses import dataclass

from mmlens.errors import UnknownNameError

LLAVA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Template:
    """A prompt format.

    Attributes:
        name: Registry name.
        format: ``str.format`` pattern with ``{system}``, ``{image}`` and ``{question}``.
        system: The system sentence (may be empty).
        image_mode: ``"pad"`` (pad to square with the processor's mean colour, LLaVA-1.5) or
            ``"crop"`` (resize shortest edge + centre crop, the llava-hf processor default).
    """

    name: str
    format: str
    system: str
    image_mode: str

    def render(self, question: str, image_token: str) -> tuple[str, tuple[int, int]]:
        """The prompt and the character span of the question inside it."""
        head, _, tail = self.format.partition("{question}")
        head = head.format(system=self.system, image=image_token)
        return head + question + tail.format(system=self.system, image=image_token), (len(head), len(head) + len(question))


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in [
        Template("vicuna_v1", "{system} USER: {image}\n{question} ASSISTANT:", LLAVA_SYSTEM, "pad"),
        Template("llava_hf", "USER: {image}\n{question} ASSISTANT:", "", "crop"),
    ]
}


def get_template(template: str | Template) -> Template:
    """A registered template by name (or the template itself)."""
    if isinstance(template, Template):
        return template
    try:
        return TEMPLATES[template]
    except KeyError:
        raise UnknownNameError(f"unknown template {template!r}; registered: {sorted(TEMPLATES)}.") from None
