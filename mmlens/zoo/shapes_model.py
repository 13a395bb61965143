"""The shapes-llava model: its architecture, its prompts, its held-out score.

The shipped default model is a Hugging Face ``LlavaForConditionalGeneration`` with nothing
custom: a CLIP vision tower, a two-layer GELU projector and a Llama decoder with grouped-query
attention, over the closed word-level vocabulary of the synthetic shapes world. This module
holds what the training script, the benchmark and the tests share: how the model is shaped, how
a question becomes a LLaVA-1.5 prompt (alone, or packed with others after one shared image),
and how greedy first-token accuracy is scored. The auxiliary turns that teach it to read the
image are in :mod:`mmlens.zoo.shapes_turns` (re-exported here).

Seeds: splits ``0..9`` of :func:`mmlens.data.shapes.shapes_dataset` are reserved for held-out
evaluation; training draws its scenes from splits ``>= TRAIN_SPLIT`` only.

Example:
    >>> processor = shapes_processor(ShapesArch())
    >>> processor.tokenizer.convert_ids_to_tokens(processor.tokenizer(prompt("Is there a star?"))["input_ids"])[-3:]
    ['?', 'ASSISTANT', ':']
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import torch
import transformers
from transformers import LlavaProcessor

from mmlens.data.sample import Sample
from mmlens.data.shapes import SYSTEM_PROMPT, VOCAB_WORDS
from mmlens.zoo.shapes_turns import (  # re-exported: the training turns lived here before
    AUX_KINDS,
    COLOURS_QUESTION,
    DESCRIBE,
    PHRASE_SUFFIX,
    SHAPES_QUESTION,
    SIDES_QUESTION,
    Turn,
    aux_turn,
    colours_answer,
    describe_answer,
    draw_turns,
    pair_turn,
    patch_labels,
    relations_turn,
    sentence_answer,
    shapes_answer,
    side_turn,
    sides_answer,
)
from mmlens.zoo.tokenizer import IMAGE, build_processor, build_tokenizer

__all__ = [
    "AUX_KINDS", "BENCHMARK_SPLIT", "COLOURS_QUESTION", "DESCRIBE", "EVAL_SPLITS", "MONITOR_SPLIT",
    "PHRASE_SUFFIX", "SHAPES_QUESTION", "SIDES_QUESTION", "TEST_SPLIT", "TRAIN_SPLIT", "ShapesArch", "Turn",
    "accuracy_by_type", "aux_turn", "colours_answer", "describe_answer", "draw_turns", "pack", "pair_turn",
    "patch_labels", "predict_first_tokens", "prefix_ids", "prompt", "relations_turn", "sentence_answer",
    "shapes_answer", "shapes_llava_config", "shapes_processor", "side_turn", "sides_answer",
]

EVAL_SPLITS: tuple[int, ...] = tuple(range(10))
"""``shapes_dataset`` seeds reserved for held-out evaluation; training never draws from them."""

TRAIN_SPLIT = 100
"""First ``shapes_dataset``-style split seed that training scenes are drawn from."""

BENCHMARK_SPLIT, TEST_SPLIT, MONITOR_SPLIT = 0, 1, 2
"""Held-out splits used by the benchmark (2,000 samples), the unit test, and training-time monitoring."""


@dataclass(frozen=True)
class ShapesArch:
    """Sizes of the shapes-llava model (architecture only; training knobs live elsewhere).

    Attributes mirror the Hugging Face config fields they set; ``n_kv_heads < n_heads`` gives
    grouped-query attention as in Llama-2/3 and Mistral.
    """

    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 2
    d_mlp: int = 768
    vision_d_model: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    vision_d_mlp: int = 512
    image_size: int = 64
    patch_size: int = 8

    @property
    def n_patches(self) -> int:
        """Image tokens per image: the patch grid, CLS dropped (strategy ``"default"``)."""
        return (self.image_size // self.patch_size) ** 2


def shapes_processor(arch: ShapesArch) -> LlavaProcessor:
    """The word-level tokenizer over ``VOCAB_WORDS`` and a CLIP image processor for ``arch``."""
    return build_processor(
        build_tokenizer(VOCAB_WORDS), arch.image_size, arch.patch_size, image_seq_length=arch.n_patches
    )


def shapes_llava_config(arch: ShapesArch, processor: LlavaProcessor) -> transformers.LlavaConfig:
    """A ``LlavaConfig`` for ``arch`` whose special-token ids agree with ``processor``'s tokenizer."""
    tok = processor.tokenizer
    text = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=arch.d_model,
        intermediate_size=arch.d_mlp,
        num_hidden_layers=arch.n_layers,
        num_attention_heads=arch.n_heads,
        num_key_value_heads=arch.n_kv_heads,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    vision = transformers.CLIPVisionConfig(
        hidden_size=arch.vision_d_model,
        intermediate_size=arch.vision_d_mlp,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads,
        image_size=arch.image_size,
        patch_size=arch.patch_size,
    )
    return transformers.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids(IMAGE),
        image_seq_length=arch.n_patches,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def prompt(question: str) -> str:
    """The LLaVA-1.5 single-turn prompt; the tokenizer adds ``<s>`` and the answer follows ``:``."""
    return f"{SYSTEM_PROMPT} USER: {IMAGE}\n{question} ASSISTANT:"


def prefix_ids(processor: LlavaProcessor, n_patches: int) -> list[int]:
    """Ids of ``<s> {SYSTEM_PROMPT} USER :`` followed by ``n_patches`` image tokens."""
    tok = processor.tokenizer
    return tok(f"{SYSTEM_PROMPT} USER:")["input_ids"] + [tok.convert_tokens_to_ids(IMAGE)] * n_patches


def pack(
    processor: LlavaProcessor, prefix: list[int], turns_per_sequence: Sequence[Sequence[Turn]]
) -> dict[str, torch.Tensor]:
    """Token ids, block mask, position ids and labels of shared-prefix packed sequences.

    Each sequence is ``prefix`` (system prompt and image) followed by its turns
    `` {question} ASSISTANT: {answer}</s>``. The mask lets a turn see the prefix and itself only
    and its position ids restart where the prefix ends, so every turn is computed exactly as the
    single-turn :func:`prompt` followed by its answer.

    Args:
        processor: The model's processor.
        prefix: Ids from :func:`prefix_ids`.
        turns_per_sequence: Per sequence, its turns.

    Returns:
        ``input_ids``, ``position_ids`` and ``labels`` of shape ``(batch, pos)`` (right-padded;
        labels ``-100`` except on answer tokens and ``</s>``) and an additive float
        ``attention_mask`` of shape ``(batch, 1, pos, pos)``.
    """
    tok, n = processor.tokenizer, len(prefix)
    rows = []
    for turns in turns_per_sequence:
        ids, pos, seg, lab = list(prefix), list(range(n)), [0] * n, [-100] * n
        for j, (question, answer) in enumerate(turns, start=1):
            q = tok(f" {question} ASSISTANT:", add_special_tokens=False)["input_ids"]
            a = tok(f" {answer}{tok.eos_token}", add_special_tokens=False)["input_ids"]
            ids += q + a
            pos += range(n, n + len(q) + len(a))
            seg += [j] * (len(q) + len(a))
            lab += [-100] * len(q) + a
        rows.append((ids, pos, seg, lab))
    length = max(len(r[0]) for r in rows)

    def padded(k: int, value: int) -> torch.Tensor:
        return torch.tensor([r[k] + [value] * (length - len(r[k])) for r in rows])

    seg = padded(2, -1)  # 0: shared prefix, j: turn j, -1: padding
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    visible = causal & ((seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None]))
    mask = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
    return {
        "input_ids": padded(0, tok.pad_token_id),
        "position_ids": padded(1, 0),
        "labels": padded(3, -100),
        "attention_mask": mask[:, None],
    }


@torch.no_grad()
def predict_first_tokens(
    model: transformers.LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    samples: Sequence[Sample],
    batch_size: int = 64,
) -> list[str]:
    """Greedy first answer token of ``model`` for each sample's single-turn prompt.

    Args:
        model: A LLaVA model (any size) speaking ``processor``'s vocabulary.
        processor: Its processor (left padding, so the last position is the answer slot).
        samples: Questions with images.
        batch_size: Samples per forward pass.

    Returns:
        The argmax token of the last position, one string per sample.
    """
    was_training = model.training
    model.eval()
    predictions: list[str] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        inputs = processor(
            images=[s.load_image() for s in chunk],
            text=[prompt(s.question) for s in chunk],
            padding=True,
            return_tensors="pt",
        )
        logits = model(**inputs).logits[:, -1]
        predictions += processor.tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())
    model.train(was_training)
    return predictions


def accuracy_by_type(
    model: transformers.LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    samples: Sequence[Sample],
    batch_size: int = 64,
) -> dict[str, float]:
    """Greedy first-token accuracy per question type (``Sample.task``), plus ``"all"``.

    Args:
        model: The model to score.
        processor: Its processor.
        samples: Held-out samples, e.g. ``shapes_dataset(2000, seed=BENCHMARK_SPLIT, types=QUESTION_TYPES)``.
        batch_size: Samples per forward pass.

    Returns:
        Fraction correct per type, types in order of first appearance, then ``"all"``.
    """
    hits: dict[str, list[bool]] = defaultdict(list)
    for sample, pred in zip(samples, predict_first_tokens(model, processor, samples, batch_size)):
        hits[sample.task].append(pred == sample.answer)
    result = {task: sum(h) / len(h) for task, h in hits.items()}
    result["all"] = sum(sum(h) for h in hits.values()) / max(1, len(samples))
    return result
