"""Task prompt builders: exact texts and spans that cut out exactly the marked strings."""

from __future__ import annotations

import pytest

from mmlens.data.sample import Sample
from mmlens.data.task_prompts import (
    CAPTION,
    COT_PROMPTS,
    MC_INSTRUCTION,
    SHORT_ANSWER,
    YES_NO,
    build_prompt,
    caption_prompt,
    multiple_choice_prompt,
    short_answer_prompt,
    yes_no_prompt,
)
from mmlens.errors import MMLensError, UnknownNameError
from mmlens.prompts import PromptText
from PIL import Image

NO_IMAGE = Image.new("RGB", (4, 4))  # prompts never look at the image
GQA = Sample("q1", NO_IMAGE, "Is the jar full or empty?", "empty", "ChooseAttr", ("full", "empty"), "empty", "full",
             meta={"reader": "gqa"})  # fmt: skip
SQA = Sample("7", NO_IMAGE, "Which is a mammal?", "B", "scienceqa", ("frog", "whale", "shark"), "whale", "frog",
             meta={"reader": "scienceqa", "hint": "Mammals breathe air."})  # fmt: skip
AOK = Sample("a", NO_IMAGE, "What is he holding?", "C", "aokvqa", ("bat", "ball", "cup", "kite"), "cup", "bat",
             meta={"reader": "aokvqa"})  # fmt: skip


def _cut(prompt: PromptText, name: str) -> list[str]:
    return [prompt.text[a:b] for a, b in prompt.spans[name]]


def test_short_answer_text_and_option_spans_inside_question() -> None:
    p = short_answer_prompt(GQA)
    assert p.text == "Is the jar full or empty?\nAnswer the question using a single word or phrase."
    assert p.text.endswith("\n" + SHORT_ANSWER)
    assert (_cut(p, "question"), _cut(p, "true_option"), _cut(p, "false_option")) == (
        ["Is the jar full or empty?"], ["empty"], ["full"])  # fmt: skip
    assert short_answer_prompt(GQA, sep=" \n").text == "Is the jar full or empty? \n" + SHORT_ANSWER
    assert short_answer_prompt(GQA, suffix=None).text == GQA.question


def test_multiple_choice_letters_and_spans() -> None:
    p = multiple_choice_prompt(AOK)
    assert p.text == "What is he holding?\nA. bat\nB. ball\nC. cup\nD. kite\n" + MC_INSTRUCTION
    assert _cut(p, "question") == ["What is he holding?"]
    assert _cut(p, "options") == ["bat", "ball", "cup", "kite"]
    assert (_cut(p, "true_option"), _cut(p, "false_option")) == (["cup"], ["bat"])
    assert "context" not in p.spans  # no hint: the C line is dropped


def test_scienceqa_orders_with_context() -> None:
    cqm = build_prompt(SQA)
    assert cqm.text == ("Context: Mammals breathe air.\nWhich is a mammal?\nA. frog\nB. whale\nC. shark\n"
                        "Answer with the option's letter from the given choices directly.")  # fmt: skip
    qcm = build_prompt(SQA, fmt="QCM-A")
    assert qcm.text.startswith("Which is a mammal?\nContext: Mammals breathe air.\nA. frog")
    for p in (cqm, qcm):
        assert _cut(p, "context") == ["Mammals breathe air."] and _cut(p, "question") == ["Which is a mammal?"]
        assert _cut(p, "true_option") == ["whale"] and _cut(p, "options") == ["frog", "whale", "shark"]


def test_chain_of_thought_positions() -> None:
    before = multiple_choice_prompt(SQA, fmt="P1-CQM-A")
    assert before.text.startswith(COT_PROMPTS["P1"] + "\nContext: Mammals breathe air.\n")
    after = multiple_choice_prompt(SQA, fmt="CQM-P3-A")
    assert after.text.endswith("C. shark\n" + COT_PROMPTS["P3"] + "\n" + MC_INSTRUCTION)
    custom = multiple_choice_prompt(SQA, fmt="CQM-P9-A", cot_prompts={"P9": "Think."}, instruction=None)
    assert custom.text.endswith("C. shark\nThink.") and _cut(custom, "question") == ["Which is a mammal?"]
    with pytest.raises(UnknownNameError, match="P4"):
        multiple_choice_prompt(SQA, fmt="P4-CQM-A")
    with pytest.raises(MMLensError, match="malformed"):
        multiple_choice_prompt(SQA, fmt="CQ-A")
    with pytest.raises(MMLensError, match="no options"):
        multiple_choice_prompt(Sample("x", NO_IMAGE, "Why?", "because"))


def test_yes_no_and_caption() -> None:
    pope = Sample("random/1", NO_IMAGE, "Is there a dog in the image?", "yes", "random", meta={"reader": "pope"})
    p = yes_no_prompt(pope)
    assert p.text == "Is there a dog in the image?\nPlease just answer yes or no." and p.text.endswith(YES_NO)
    assert _cut(p, "question") == ["Is there a dog in the image?"]
    cap = caption_prompt()
    assert cap.text == CAPTION == "Provide a one-sentence caption for the provided image."
    assert _cut(cap, "question") == [CAPTION]


def test_build_prompt_dispatch() -> None:
    cap = Sample("1", NO_IMAGE, "", "A dog.", "caption", meta={"reader": "captions"})
    assert build_prompt(cap).text == CAPTION
    assert build_prompt(Sample("p", NO_IMAGE, "Is there a cat?", "no", "adversarial")).text.endswith(YES_NO)
    assert build_prompt(AOK).text.endswith(MC_INSTRUCTION) and build_prompt(GQA).text.endswith(SHORT_ANSWER)
    assert build_prompt(AOK, "short").text == "What is he holding?\n" + SHORT_ANSWER
    assert build_prompt(GQA, "pope").text.endswith(YES_NO)  # a reader name picks its kind
    with pytest.raises(UnknownNameError, match="unknown prompt task 'vqa'.*'mc'"):
        build_prompt(GQA, "vqa")
