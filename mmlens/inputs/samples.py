"""Turn dataset :class:`~mmlens.data.sample.Sample` objects into model inputs with study groups."""

from __future__ import annotations

from dataclasses import replace

from mmlens import metrics
from mmlens.data.sample import Sample
from mmlens.data.task_prompts import build_prompt
from mmlens.inputs.mm_inputs import MMInputs
from mmlens.inputs.templates import get_template


def sample_inputs(model, sample: Sample, template: str = "auto") -> MMInputs:
    """Prepare one sample, adding the groups the papers' studies use.

    Benchmark samples (from :mod:`mmlens.data.readers`) get their task prompt (suffix, options),
    which marks ``question``, ``options``, ``true_option`` and ``false_option``; synthetic samples
    are asked their question alone. Added groups: ``related`` (image patches overlapping any box
    of the objects the question names), ``other`` (the remaining image positions; padding patches
    count as other), and ``true_option`` / ``false_option`` when the options occur in the question.
    ``template="auto"`` is the model family's template (see :func:`~mmlens.inputs.prepare`).
    """
    if sample.meta.get("reader"):  # a benchmark sample: its task prompt marks the groups
        inputs = model.prepare(sample.load_image(), build_prompt(sample), template=template)
    else:
        question = sample.question
        mark = {}
        for name, option in (("true_option", sample.true_option), ("false_option", sample.false_option)):
            if option and option.lower() in question.lower():
                start = question.lower().find(option.lower())
                mark[name] = question[start : start + len(option)]
        inputs = model.prepare(sample.load_image(), question, template=template, mark=mark)
    image = inputs.groups["image"]
    related = image & False
    for box in sample.boxes.values():
        related = related | inputs.patches_in_box(box)
    groups = inputs.groups.with_groups(related=related, other=image & ~related)
    return replace(inputs, groups=groups)


def greedy_answer(model, inputs: MMInputs, max_new_tokens: int = 4) -> str:
    """The model's greedy answer, decoded and stripped (first batch row)."""
    out = model.generate(inputs, max_new_tokens=max_new_tokens)
    return model.processor.tokenizer.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True).strip()


def is_correct(answer: str, gold: str) -> bool:
    """The correct-answer filter of "Cross-modal Information Flow" §4: lower-cased, stripped exact match."""
    return answer.strip().lower() == gold.strip().lower()


def score(sample: Sample, prediction: str) -> float:
    """The sample's benchmark metric: VQA accuracy with human answers (TextVQA), the parsed
    option letter for multiple choice, yes/no parsing for POPE, else normalised exact match."""
    if sample.meta.get("answers"):
        return metrics.vqa_score(prediction, sample.meta["answers"])
    if sample.options and len(sample.answer) == 1 and sample.answer.isupper():
        return float(metrics.parse_choice(prediction, sample.options) == sample.answer)
    if sample.meta.get("reader") == "pope":
        return float(metrics.parse_yes_no(prediction) == sample.answer.lower())
    return float(metrics.exact_match(prediction, sample.answer))


def answer_without_image(model, sample: Sample, template: str = "auto", max_new_tokens: int = 4) -> str:
    """The greedy answer to the same prompt with the image removed (the pseudo-multimodal filter of "Unraveling the Shift" App. B)."""
    tok = model.processor.tokenizer
    prompt, _ = get_template(template, model.vlm_cfg.template).render(sample.question, "")
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
