"""The ``llama3`` / ``llama3_hf`` templates (Llama3-LLaVA-NeXT-8B) on a Llama-3-style byte-level BPE
tokenizer built here: ids agree with the tokenizer's own Llama-3 chat template run through the
LLaVA-NeXT processor, and the groups cover the right turns."""

from __future__ import annotations

import pytest
import torch
import transformers
from PIL import Image
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from mmlens import HookedVLM
from mmlens.inputs import LLAMA3_SYSTEM
from mmlens.zoo.tiny import tiny_llava, tiny_llava_next_config

SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<image>", "<|eot_id|>"]
# Meta-Llama-3's pre-tokenizer split.
SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Meta-Llama-3-8B-Instruct's chat template (the BOS is part of the rendered text).
CHAT = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QUESTIONS = ["What colour is the square?", "Is there a star left of the circle?"]


def llama3_tokenizer() -> transformers.PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([LLAMA3_SYSTEM, *QUESTIONS, "user assistant system\n\n"] * 3, trainer)
    backend.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|end_of_text|>",
        extra_special_tokens={"image_token": "<image>"}, chat_template=CHAT,
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama3")
    tiny_llava(tiny_llava_next_config(vocab_size=512, n_kv_heads=1)).save_pretrained(path)
    ip = transformers.LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                              image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]])
    processor = transformers.LlavaNextProcessor(image_processor=ip, tokenizer=llama3_tokenizer(), patch_size=8,
                                                vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return HookedVLM.from_pretrained(str(path), processor=processor)


def text_of(model, inputs, name, row):
    return model.processor.tokenizer.decode(inputs.input_ids[row, inputs.groups.positions(name, row)])


@pytest.mark.parametrize("template,system", [("llama3", LLAMA3_SYSTEM), ("llama3_hf", None)], ids=["llama3", "llama3_hf"])
def test_llama3_prompt_and_groups(model, template, system):
    images = [Image.new("RGB", (70, 40)), Image.new("RGB", (30, 64))]
    inputs = model.prepare(images, QUESTIONS, template=template)
    tok = model.processor.tokenizer
    for row, (image, question) in enumerate(zip(images, QUESTIONS)):
        turns = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": f"<image>\n{question}"}]
        chat = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        ref = model.processor(images=[image], text=[chat], return_tensors="pt", add_special_tokens=False)["input_ids"][0]
        real = inputs.attention_mask[row].bool()
        assert torch.equal(inputs.input_ids[row, real], ref)

        head = f"<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>" if system else ""
        assert text_of(model, inputs, "system", row) == f"<|begin_of_text|>{head}<|start_header_id|>user<|end_header_id|>\n\n"
        assert text_of(model, inputs, "question", row) == question
        tail = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        assert text_of(model, inputs, "user", row) == f"\n{question}{tail}"
        assert text_of(model, inputs, "last", row) == "\n\n"
    g = inputs.groups
    assert torch.equal(g["system"] | g["image"] | g["user"], inputs.attention_mask.bool())
    assert not (g["system"] & g["image"]).any() and not (g["image"] & g["user"]).any()
    assert g["last"][:, -1].all()
