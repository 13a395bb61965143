"""A word-level tokenizer and an ``InternVLProcessor`` for the zoo's tiny InternVL checkpoints.

The tokenizer speaks the shapes vocabulary plus InternVL's chat and image tokens (``<|im_start|>``,
``<|im_end|>``, ``<img>``, ``</img>``, ``<IMG_CONTEXT>``) and adds no BOS, as Qwen2's. The
processor is the real ``InternVLProcessor`` (less its video part, which needs torchvision) with the PIL build of its tiling image processor
(``GotOcr2ImageProcessorPil``: tiles plus a thumbnail), so tests run Hugging Face's own tiling.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, no_type_check

from transformers import InternVLProcessor, PreTrainedTokenizerFast
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from mmlens.zoo.tiny_parts import word_level_backend
from mmlens.zoo.tokenizer import CLIP_MEAN, CLIP_STD

IMG_CONTEXT = "<IMG_CONTEXT>"
SPECIAL_TOKENS: tuple[str, ...] = (
    "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", IMG_CONTEXT, "<video>",
)
"""Special tokens, with ids 0 to 7 in this order (``<IMG_CONTEXT>`` is 6)."""

IMAGE_TOKEN_ID = SPECIAL_TOKENS.index(IMG_CONTEXT)

# The chat template of the OpenGVLab/InternVL*-hf checkpoints (no system turn).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)


class InternVLImagesProcessor(InternVLProcessor):
    """``InternVLProcessor`` without its video processor: images and text only.

    Its outputs for images and text equal the full processor's; ``videos=`` is not accepted. The
    video processor needs torchvision, without which ``InternVLProcessor`` cannot be built at all.
    """

    # transformers reads the accepted settings off ``__init__.__code__``, which a runtime
    # type-checking wrapper (the test suite's) would hide: keep this function unwrapped.
    @no_type_check
    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        image_seq_length: int = 256,
        chat_template: str | None = None,
        **kwargs: Any,
    ):
        # Without video_processor in this signature, transformers neither loads nor checks one.
        super().__init__(image_processor, tokenizer, None, image_seq_length, chat_template, **kwargs)


def build_internvl_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over ``words`` with InternVL's special tokens (left padding)."""
    backend = word_level_backend([*SPECIAL_TOKENS, *words])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": IMG_CONTEXT,
            "video_token": "<video>",
        },
        padding_side="left",
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    return tok


def build_internvl_processor(
    words: Sequence[str],
    tile: int,
    image_seq_length: int,
    *,
    max_patches: int = 6,
) -> InternVLImagesProcessor:
    """The tokenizer plus a tiling image processor of ``tile``-px views (up to ``max_patches`` tiles)."""
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": tile, "width": tile},
        crop_to_patches=True,
        min_patches=1,
        max_patches=max_patches,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    return InternVLImagesProcessor(
        image_processor=image_processor,
        tokenizer=build_internvl_tokenizer(words),
        image_seq_length=image_seq_length,
        chat_template=CHAT_TEMPLATE,
    )


def save_internvl_processor(directory: str | PathLike[str], words: Sequence[str], tile: int,
                            image_seq_length: int, *, max_patches: int = 6) -> InternVLImagesProcessor:
    """Build the processor and save it into ``directory`` (usually the checkpoint's)."""
    processor = build_internvl_processor(words, tile, image_seq_length, max_patches=max_patches)
    processor.save_pretrained(str(directory))
    # Name the class a released checkpoint names, so loading goes the way it does for one.
    saved = Path(directory) / "processor_config.json"
    saved.write_text(json.dumps(json.loads(saved.read_text()) | {"processor_class": "InternVLProcessor"}, indent=2))
    return processor
