"""Prompt templates: how a question and an image become the prompt string, and how the image
is fitted to the tower's square input (methods.md §9).

Registered: ``vicuna_v1`` (LLaVA-1.5), ``llava_hf`` (the llava-hf short prompt), ``llama3``
(Llama3-LLaVA-NeXT-8B with its system turn) and ``llama3_hf`` (the llava-hf chat template of that
checkpoint, without a system turn). Templates hold no BOS: the tokenizer adds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmlens.errors import UnknownNameError

LLAVA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# LLaVA-NeXT's ``conv_llava_llama_3`` (Llama3-LLaVA-NeXT-8B).
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)
# Llama-3 chat turns; the tokenizer itself adds <|begin_of_text|>.
LLAMA3_TURNS = (
    "<|start_header_id|>user<|end_header_id|>\n\n{image}\n{question}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
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
        # Llama3-LLaVA-NeXT-8B: system turn, then the image and question in the user turn.
        Template("llama3", "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>" + LLAMA3_TURNS,
                 LLAMA3_SYSTEM, "crop"),
        # llava-hf/llama3-llava-next-8b-hf's chat template: no system turn.
        Template("llama3_hf", LLAMA3_TURNS, "", "crop"),
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
