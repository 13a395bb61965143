"""Task prompt builders: the text after the image for each benchmark, with marked spans.

Each builder returns a :class:`~mmlens.prompts.PromptText`, so ``model.prepare`` turns the
``question`` span (the question string only, never a suffix) and the ``options``,
``true_option``, ``false_option`` and ``context`` spans into token groups. Wording follows
LLaVA-1.5's evaluation prompts (docs/methods.md#prompts); multiple-choice orders and chain-of-thought
prompts follow "From Redundancy to Relevance (v1)" Table 2.

Example:
    >>> from mmlens.data.sample import Sample
    >>> s = Sample("1", lambda: None, "What colour is the bus?", "red")
    >>> build_prompt(s).text
    'What colour is the bus?\\nAnswer the question using a single word or phrase.'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from mmlens.data.readers.base import letter
from mmlens.data.sample import Sample
from mmlens.errors import MMLensError, UnknownNameError
from mmlens.prompts import PromptText

SHORT_ANSWER = "Answer the question using a single word or phrase."
"""LLaVA-1.5's suffix for GQA, TextVQA and other short-answer VQA."""

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
"""LLaVA-1.5's suffix for ScienceQA and A-OKVQA (``--single-pred-prompt``)."""

YES_NO = "Please just answer yes or no."
"""The POPE suffix ("Unraveling the Shift" App. E; docs/methods.md#prompts)."""

CAPTION = "Provide a one-sentence caption for the provided image."
"""The captioning instruction (NoCaps, Flickr30k, CHAIR)."""

COT_PROMPTS: dict[str, str] = {
    "P1": "Given the context, questions, and options, please think step-by-step to answer the question, "
    "deconstruct the problem as completely as possible down to necessary sub-questions. Then, to help "
    "humans answer the original question, try to answer the sub-questions",
    "P2": "Given the context, questions, and options, please think step-by-step to answer the question",
    "P3": "Please think step-by-step and answer with the option's letter from the given choices directly",
}
"""The chain-of-thought prompts of "From Redundancy to Relevance (v1)" §4.4, verbatim (P1 is DDCoT's two-stage prompt)."""

Part = tuple[str, Sequence[str]]
"""A piece of prompt text and the span names (groups) that cover it."""


def compose(parts: Sequence[Part]) -> PromptText:
    """Concatenate parts, recording every named span; unlike ``PromptText.build`` a part may
    carry several names (an option is both ``options`` and ``true_option``)."""
    text, spans = "", {}
    for piece, names in parts:
        for name in names:
            spans.setdefault(name, []).append((len(text), len(text) + len(piece)))
        text += piece
    return PromptText(text, {k: tuple(v) for k, v in spans.items()})


def _option_spans(sample: Sample) -> dict[str, tuple[tuple[int, int], ...]]:
    """``true_option``/``false_option`` spans where those words occur in the question (which opens the text)."""
    out = {}
    for name, option in (("true_option", sample.true_option), ("false_option", sample.false_option)):
        found = re.search(rf"\b{re.escape(option)}\b", sample.question, re.IGNORECASE) if option else None
        if found:
            out[name] = ((found.start(), found.end()),)
    return out


def _suffixed(sample: Sample, suffix: str | None, sep: str) -> PromptText:
    prompt = compose([(sample.question, ("question",)), (sep + suffix if suffix else "", ())])
    return PromptText(prompt.text, {**prompt.spans, **_option_spans(sample)})


def short_answer_prompt(sample: Sample, *, suffix: str | None = SHORT_ANSWER, sep: str = "\n") -> PromptText:
    """``"{question}\\nAnswer the question using a single word or phrase."`` (GQA, TextVQA).

    Options named in the question (GQA's "full or empty") are marked ``true_option`` and
    ``false_option``. ``sep=" \\n"`` reproduces the released code of "Cross-modal Information Flow".
    """
    return _suffixed(sample, suffix, sep)


def yes_no_prompt(sample: Sample, *, suffix: str | None = YES_NO, sep: str = "\n") -> PromptText:
    """``"{question}\\nPlease just answer yes or no."`` (POPE)."""
    return _suffixed(sample, suffix, sep)


def caption_prompt(sample: Sample | None = None, *, instruction: str = CAPTION) -> PromptText:
    """The captioning instruction alone, marked ``question`` (it plays the question's role)."""
    return compose([(instruction, ("question",))])


def multiple_choice_prompt(
    sample: Sample,
    *,
    fmt: str = "CQM-A",
    context: str | None = None,
    instruction: str | None = MC_INSTRUCTION,
    cot_prompts: Mapping[str, str] = COT_PROMPTS,
    context_label: str = "Context: ",
) -> PromptText:
    """A lettered multiple-choice prompt in one of the orders of "From Redundancy to Relevance (v1)" Table 2.

    ``fmt`` is Table 2's notation: ``C`` context (the ScienceQA hint), ``Q`` question, ``M``
    the options, ``P1``-``P3`` a chain-of-thought prompt, ``A`` the answer; e.g. ``"QCM-A"``,
    ``"CQM-A"``, ``"P1-CQM-A"``, ``"CQM-P2-A"``. Parts go one per line, options as
    ``"A. {choice}"`` lines; an empty context drops its line (so ``"CQM-A"`` is A-OKVQA's
    ``"QM-A"``). ``instruction`` (LLaVA's letter instruction) ends the prompt in every order:
    that table names only the part order, and LLaVA adds it after any input order.

    Spans: ``question``; each choice text (not its letter) as ``options``, the correct one also
    as ``true_option`` and the first other as ``false_option``; the hint as ``context``.

    Raises:
        MMLensError: The sample has no options, or ``fmt`` is malformed.
        UnknownNameError: ``fmt`` names a chain-of-thought prompt not in ``cot_prompts``.
    """
    if not sample.options:
        raise MMLensError(f"sample {sample.id!r} has no options: use a short-answer prompt instead.")
    if len(sample.options) > 26:
        raise MMLensError(f"sample {sample.id!r} has {len(sample.options)} options; at most 26 can be lettered.")
    *order, answer = fmt.split("-")
    letters = "".join(p for p in order if not re.fullmatch(r"P\w+", p))
    if answer != "A" or sorted(letters) not in (sorted("CQM"), sorted("QM")):
        raise MMLensError(f"prompt format {fmt!r} is malformed: use C, Q, M (each once) and P<k> parts ending in -A.")
    if context is None:
        context = str(sample.meta.get("hint") or "")
    lines: list[list[Part]] = []
    for part in order:
        if part.startswith("P"):
            if part not in cot_prompts:
                valid = sorted(cot_prompts)
                raise UnknownNameError(f"unknown chain-of-thought prompt {part!r}: choose one of {valid}.")
            lines.append([(cot_prompts[part], ())])
            continue
        for key in part:
            if key == "C" and context:
                lines.append([(context_label, ()), (context, ("context",))])
            elif key == "Q":
                lines.append([(sample.question, ("question",))])
            elif key == "M":
                lines.extend(_option_lines(sample))
    if instruction:
        lines.append([(instruction, ())])
    parts: list[Part] = []
    for i, line in enumerate(lines):
        parts.extend([("\n", ())] * (i > 0) + line)
    return compose(parts)


def _option_lines(sample: Sample) -> list[list[Part]]:
    lines, marked = [], set()
    for i, option in enumerate(sample.options):
        names = ["options"]
        for name, value in (("true_option", sample.true_option), ("false_option", sample.false_option)):
            if option == value and name not in marked:
                names.append(name)
                marked.add(name)
        lines.append([(f"{letter(i)}. ", ()), (option, tuple(names))])
    return lines


PROMPT_BUILDERS: dict[str, Callable[..., PromptText]] = {
    "short": short_answer_prompt,
    "mc": multiple_choice_prompt,
    "yesno": yes_no_prompt,
    "caption": caption_prompt,
}
"""Prompt kind → builder."""

DEFAULT_KIND: dict[str, str] = {
    "gqa": "short", "gqa-csv": "short", "textvqa": "short", "scienceqa": "mc", "aokvqa": "mc",
    "pope": "yesno", "random": "yesno", "popular": "yesno", "adversarial": "yesno",
    "captions": "caption", "caption": "caption",
}  # fmt: skip
"""Reader name (``sample.meta["reader"]``) or task name → the prompt kind it gets by default."""


def build_prompt(sample: Sample, task: str | None = None, **options) -> PromptText:
    """The benchmark's prompt for ``sample``.

    Args:
        sample: The sample.
        task: A prompt kind (``short``, ``mc``, ``yesno``, ``caption``) or a reader name;
            default from ``sample.meta["reader"]``, then ``sample.task``, else ``short``.
        **options: Passed to the builder (``fmt="QCM-A"``, ``suffix=None``, ...).

    Raises:
        UnknownNameError: ``task`` is neither a prompt kind nor a reader name.
    """
    kind = task or DEFAULT_KIND.get(sample.meta.get("reader", "")) or DEFAULT_KIND.get(sample.task, "short")
    kind = DEFAULT_KIND.get(kind, kind)
    if kind not in PROMPT_BUILDERS:
        valid = sorted({*PROMPT_BUILDERS, *DEFAULT_KIND})
        raise UnknownNameError(f"unknown prompt task {task!r}: choose one of {valid}.")
    return PROMPT_BUILDERS[kind](sample, **options)
