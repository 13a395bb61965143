"""Task prompts' token groups on the shipped word-level tokenizer and on a Llama-style
(Metaspace BPE) tokenizer built in a fixture."""

from __future__ import annotations

import pytest
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlavaProcessor, PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from mmlens import HookedVLM
from mmlens.data.sample import Sample
from mmlens.data.task_prompts import build_prompt
from mmlens.zoo.tiny import tiny_llava, tiny_llava_config

SAMPLE = Sample(id="q1", image=Image.new("RGB", (40, 30)), question="Which shape is red?", answer="B",
                options=("circle", "square"), true_option="square", false_option="circle", meta={"reader": "scienceqa"})


def llama_style_processor() -> LlavaProcessor:
    corpus = ["A chat between a curious user and an artificial intelligence assistant.", "USER: ASSISTANT:",
              "Which shape is red? circle square Answer with the option's letter from the given choices directly.",
              "A. B. C. Context: Options:"] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>", "<image>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    image = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return LlavaProcessor(image_processor=image, tokenizer=fast, patch_size=8, vision_feature_select_strategy="default",
                          image_token="<image>", num_additional_image_tokens=1)


@pytest.fixture(scope="module", params=["word-level", "llama-style"])
def model(request, checkpoint_factory):
    if request.param == "word-level":
        return HookedVLM.from_pretrained(checkpoint_factory())
    processor = llama_style_processor()
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    return HookedVLM.from_pretrained(tiny_llava(tiny_llava_config(image_token_index=image_id)), processor=processor)


def text_of(model, inputs, name):
    ids = inputs.input_ids[0, inputs.groups.positions(name)].tolist()
    return model.processor.tokenizer.decode(ids).replace(" ", "")


def test_multiple_choice_prompt_groups(model):
    inputs = model.prepare(SAMPLE.load_image(), build_prompt(SAMPLE))
    assert text_of(model, inputs, "question").strip() == "Whichshapeisred?"
    assert "circle" in text_of(model, inputs, "options") and "square" in text_of(model, inputs, "options")
    assert "square" in text_of(model, inputs, "true_option") and "circle" not in text_of(model, inputs, "true_option")
    assert "circle" in text_of(model, inputs, "false_option")
    g = inputs.groups
    assert not (g["question"] & g["options"]).any() and not (g["options"] & ~g["user"]).any()
    assert int(g["image"].sum()) == model.vlm_cfg.image_seq_length
