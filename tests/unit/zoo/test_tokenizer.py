"""Tests for the word-level tokenizer and the LLaVA processor of the tiny checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, AutoTokenizer, LlavaProcessor, PreTrainedTokenizerFast

from mmlens.data.shapes import SYSTEM_PROMPT, VOCAB_WORDS, make_sample
from mmlens.zoo.tokenizer import (
    CLIP_MEAN,
    CLIP_STD,
    SPECIAL_TOKENS,
    build_processor,
    build_tokenizer,
    save_tokenizer_and_processor,
)

PROMPT = "USER: <image>\nIs the circle red? ASSISTANT:"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(VOCAB_WORDS)


def test_special_token_ids_and_bos(tokenizer: PreTrainedTokenizerFast) -> None:
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3, 4]
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token_id == 3 and tokenizer.padding_side == "left"
    ids = tokenizer("What colour is the square?")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    words = ["What", "colour", "is", "the", "square", "?"]
    assert tokenizer.convert_ids_to_tokens(ids[1:]) == words


def test_case_sensitive_single_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    red = tokenizer("red", add_special_tokens=False)["input_ids"]
    cap = tokenizer("Red", add_special_tokens=False)["input_ids"]
    assert len(red) == len(cap) == 1 and red != cap
    assert tokenizer.unk_token_id not in red + cap


def test_whole_llava_prompt_is_known(tokenizer: PreTrainedTokenizerFast) -> None:
    ids = tokenizer(f"{SYSTEM_PROMPT} {PROMPT} Red")["input_ids"]
    assert tokenizer.unk_token_id not in ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert ["user", "'", "s"] == tokens[tokens.index("'") - 1 : tokens.index("'") + 2]
    assert tokens.count("<image>") == 1 and tokens[-3:] == ["ASSISTANT", ":", "Red"]


def test_offsets_locate_question(tokenizer: PreTrainedTokenizerFast) -> None:
    question = "Is the circle red?"
    text = f"USER: <image>\n{question} ASSISTANT:"
    start = text.index(question)
    enc = tokenizer(text, return_offsets_mapping=True)
    end = start + len(question)
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if start <= a < b <= end]
    assert tokenizer.convert_ids_to_tokens([enc["input_ids"][i] for i in inside]) == [
        "Is", "the", "circle", "red", "?",
    ]  # fmt: skip


def test_decode_and_left_padding(tokenizer: PreTrainedTokenizerFast) -> None:
    ids = tokenizer("Is the circle red?")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Is the circle red ?"
    batch = tokenizer(["Is the circle red?", "Yes"], padding=True)
    assert batch["input_ids"][1][:4] == [tokenizer.pad_token_id] * 4
    assert batch["attention_mask"][1] == [0, 0, 0, 0, 1, 1]


def test_tokenizer_round_trip(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = f"{SYSTEM_PROMPT} {PROMPT} Yellow"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.padding_side == "left" and loaded.pad_token == "<pad>"


def test_processor_expands_image_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    processor = build_processor(tokenizer, 64, 8, image_seq_length=64)
    assert isinstance(processor, LlavaProcessor)
    out = processor(images=[make_sample(0).load_image()], text=[PROMPT], return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 64, 64)
    assert int((out["input_ids"] == 4).sum()) == 64
    assert out["input_ids"][0, 0] == tokenizer.bos_token_id
    assert out["input_ids"].shape[1] == 64 + len(tokenizer(PROMPT)["input_ids"]) - 1


def test_pixels_are_clip_normalised_without_resampling(tokenizer: PreTrainedTokenizerFast) -> None:
    image = make_sample(2).load_image()
    out = build_processor(tokenizer, 64, 8, image_seq_length=64)(
        images=[image], text=[PROMPT], return_tensors="pt"
    )
    raw = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    expected = (raw - mean) / std
    torch.testing.assert_close(out["pixel_values"][0], expected, rtol=0, atol=1e-5)


def test_processor_rejects_wrong_sequence_length(tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ValueError, match="patch count"):
        build_processor(tokenizer, 64, 8, image_seq_length=65)


def test_processor_round_trip(tmp_path: Path) -> None:
    saved = save_tokenizer_and_processor(tmp_path, VOCAB_WORDS, 64, 8)
    loaded = AutoProcessor.from_pretrained(tmp_path, local_files_only=True)
    assert isinstance(loaded, LlavaProcessor)
    image = make_sample(1).load_image()
    a = saved(images=[image], text=[PROMPT], return_tensors="pt")
    b = loaded(images=[image], text=[PROMPT], return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"])
    torch.testing.assert_close(a["pixel_values"], b["pixel_values"], rtol=0, atol=0)
