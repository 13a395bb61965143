"""A word-level tokenizer and a LLaVA processor for the tiny checkpoints in the zoo.

The tiny models speak a closed vocabulary (the shapes world plus the LLaVA-1.5 prompt), so
one token per word keeps every position interpretable: "the circle" is two tokens, and the
answer is a single token. Both objects are ordinary Hugging Face classes that save and load
with ``save_pretrained`` / ``AutoProcessor.from_pretrained`` offline.

Example:
    >>> tok = build_tokenizer(["is", "the", "circle", "red"])
    >>> tok.convert_ids_to_tokens(tok("is the circle red?")["input_ids"])
    ['<s>', 'is', 'the', 'circle', 'red', '<unk>']
"""

from __future__ import annotations

from os import PathLike
from typing import Sequence

from tokenizers import processors
from transformers import LlavaProcessor, PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from mmlens.zoo.tiny_parts import word_level_backend

UNK, BOS, EOS, PAD, IMAGE = "<unk>", "<s>", "</s>", "<pad>", "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (UNK, BOS, EOS, PAD, IMAGE)
"""Special tokens, with ids 0 to 4 in this order."""

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def build_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """Build a word-level fast tokenizer over ``words`` that prepends ``<s>``.

    Text is split on whitespace and then every punctuation character is its own token, so
    ``"colour?"`` is ``["colour", "?"]`` and ``"user's"`` is ``["user", "'", "s"]``. Unknown
    words map to ``<unk>``. Padding is on the left, as for batched generation.

    Args:
        words: Vocabulary words; ids follow the special tokens in this order, duplicates and
            special tokens dropped.

    Returns:
        The tokenizer, with offsets mapping support and ``image_token`` set to ``<image>``.
    """
    backend = word_level_backend([*SPECIAL_TOKENS, *words], UNK)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, backend.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
    )


def build_processor(
    tokenizer: PreTrainedTokenizerFast,
    image_size: int,
    patch_size: int,
    *,
    image_seq_length: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> LlavaProcessor:
    """Combine ``tokenizer`` with a CLIP image processor into a LLaVA-1.5 processor.

    The processor expands each ``<image>`` in the text into ``image_seq_length`` copies, one
    per patch: strategy ``"default"`` drops the CLS token from the tower's output.

    Args:
        tokenizer: A tokenizer from :func:`build_tokenizer`.
        image_size: Side the image is resized (shortest edge) and centre-cropped to.
        patch_size: Side of a vision patch in pixels.
        image_seq_length: Image tokens per image; must equal ``(image_size // patch_size) ** 2``.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.

    Returns:
        The processor.

    Raises:
        ValueError: When ``image_seq_length`` disagrees with the patch grid.
    """
    n_patches = (image_size // patch_size) ** 2
    if image_size % patch_size or image_seq_length != n_patches:
        raise ValueError(
            f"image_seq_length {image_seq_length} must equal the patch count {n_patches} "
            f"of a {image_size}-px image with {patch_size}-px patches (size divisible by patch)"
        )
    # The PIL backend is chosen explicitly: the plain ``CLIPImageProcessor`` name wants
    # torchvision and otherwise falls back to this class with a warning.
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_resize=True,
        do_center_crop=True,
        do_rescale=True,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        image_token=IMAGE,
        num_additional_image_tokens=1,
        chat_template=None,
    )


def save_tokenizer_and_processor(
    directory: str | PathLike[str],
    words: Sequence[str],
    image_size: int,
    patch_size: int,
) -> LlavaProcessor:
    """Build the tokenizer and processor for ``words`` and save both into ``directory``.

    Args:
        directory: Target directory (created when missing), usually the checkpoint's.
        words: Vocabulary words, e.g. ``mmlens.data.shapes.VOCAB_WORDS``.
        image_size: Side of the model's input image in pixels.
        patch_size: Side of a vision patch in pixels.

    Returns:
        The saved processor; ``AutoProcessor.from_pretrained(directory)`` loads it back.
    """
    processor = build_processor(
        build_tokenizer(words),
        image_size,
        patch_size,
        image_seq_length=(image_size // patch_size) ** 2,
    )
    processor.save_pretrained(str(directory))
    return processor
