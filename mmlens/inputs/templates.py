"""Prompt templates: how a question and an image become the prompt string, and how the image
is fitted to the tower's square input (docs/methods.md#prompts).

Registered: ``vicuna_v1`` (LLaVA-1.5), ``llava_hf`` (the llava-hf short prompt), ``llama3``
(Llama3-LLaVA-NeXT-8B with its system turn), ``llama3_hf`` (the llava-hf chat template of that
checkpoint, without a system turn), ``vicuna_v1_im_start_end`` (LLaVA-1.x checkpoints with
``mm_use_im_start_end``), ``shikra`` (Shikra as the "From Redundancy to Relevance" code prompts
it), ``internvl`` (the InternVL-hf chat template) and ``qwen2_vl`` (the Qwen2-VL / Qwen2.5-VL
chat template, with its default system turn). Templates hold no BOS: the tokenizer adds it.

``template="auto"`` (``AUTO``, the default of ``prepare``) takes the template of the model's
family, ``VLMConfig.template``, which the family's adapter sets: ``vicuna_v1`` for LLaVA-1.5,
``llava_hf`` for LLaVA-NeXT and LLaVA-OneVision, ``internvl``, ``qwen2_vl``, ``instructblip``, and
for the original LLaVA layout ``vicuna_v1`` (``vicuna_v1_im_start_end`` with
``mm_use_im_start_end``) or ``shikra``.
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
        image_open: Text written right before the image tokens (``<im_start>``); its tokens form
            the ``image_start`` group and no standard group.
        image_close: Text written right after them (``<im_end>``): the ``image_end`` group.
        image_before_bos: The image tokens come before the tokenizer's ``<s>`` (InstructBLIP: LAVIS
            and Hugging Face put the query tokens first, then ``<s>`` and the instruction).
    """

    name: str
    format: str
    system: str
    image_mode: str
    image_open: str = ""
    image_close: str = ""
    image_before_bos: bool = False

    def render(self, question: str, image_token: str) -> tuple[str, tuple[int, int]]:
        """The prompt and the character span of the question inside it."""
        image = self.image_open + image_token + self.image_close
        head, _, tail = self.format.partition("{question}")
        head = head.format(system=self.system, image=image)
        return head + question + tail.format(system=self.system, image=image), (len(head), len(head) + len(question))

    def delimiter_spans(self, prompt: str, image_token: str) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        """Character spans of ``image_open`` and ``image_close`` around the image tokens of ``prompt``."""
        start = prompt.find(self.image_open + image_token) if self.image_open else -1
        end = prompt.rfind(image_token + self.image_close) if self.image_close else -1
        end += len(image_token) if end >= 0 else 0
        return (
            (start, start + len(self.image_open)) if start >= 0 else None,
            (end, end + len(self.image_close)) if end >= 0 else None,
        )


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
        # LLaVA-1.x with mm_use_im_start_end (the LLaVA repository's conv_vicuna_v1 prompt).
        Template("vicuna_v1_im_start_end", "{system} USER: {image}\n{question} ASSISTANT:", LLAVA_SYSTEM, "pad",
                 "<im_start>", "<im_end>"),
        # Shikra in the "From Redundancy to Relevance" code: the system sentence runs straight into
        # "USER:", and the CLIP processor resizes and centre-crops.
        Template("shikra", "{system}USER: {image} {question} ASSISTANT:", LLAVA_SYSTEM, "crop", "<im_start>", "<im_end>"),
        # InstructBLIP (LAVIS): the query embeddings, then the instruction alone; the BLIP image
        # processor resizes to the tower's square (crop geometry is exact for square images).
        Template("instructblip", "{image}{question}", "", "crop", image_before_bos=True),
        # The OpenGVLab/InternVL*-hf chat template (no system turn); the processor wraps the image
        # tokens in <img>…</img>. Images are tiled by the processor (image_mode is not used).
        Template("internvl", "<|im_start|>user\n{image}\n{question}<|im_end|>\n<|im_start|>assistant\n", "", "crop",
                 "<img>", "</img>"),
        # The Qwen2-VL / Qwen2.5-VL chat template: default system turn, image tokens between
        # <|vision_start|> and <|vision_end|>, the question right after. The processor resizes
        # each image within its pixel budget (image_mode is not used).
        Template("qwen2_vl", "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{image}{question}<|im_end|>\n"
                 "<|im_start|>assistant\n", "You are a helpful assistant.", "crop", "<|vision_start|>", "<|vision_end|>"),
    ]
}


AUTO = "auto"
"""``template=AUTO``: the template of the model's family (``VLMConfig.template``)."""


def get_template(template: str | Template, family: str | None = None) -> Template:
    """A registered template by name (or the template itself).

    Args:
        template: A registered name, a :class:`Template`, or ``"auto"``.
        family: The template ``"auto"`` stands for (``VLMConfig.template``).

    Raises:
        UnknownNameError: an unregistered name, or ``"auto"`` without a ``family``.
    """
    if isinstance(template, Template):
        return template
    if template == AUTO:
        if family is None:
            raise UnknownNameError(
                "template='auto' takes the model family's template, but no model config was given: "
                f"name a template instead, one of {sorted(TEMPLATES)}."
            )
        template = family
    try:
        return TEMPLATES[template]
    except KeyError:
        raise UnknownNameError(f"unknown template {template!r}; registered: {sorted(TEMPLATES)}.") from None
