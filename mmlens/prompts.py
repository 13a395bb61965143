"""Prompt text with marked spans: what task prompt builders hand to ``model.prepare``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PromptText:
    """The user text that follows the image, with named character spans.

    ``model.prepare(image, PromptText(...))`` places ``text`` where the template puts the
    question; the ``question`` group then covers ``spans["question"]`` only (not a task suffix
    or the options), and every other span name becomes a token group (``options``,
    ``true_option``, ``false_option``, ...).

    Attributes:
        text: The full text after the image (question, options, instructions).
        spans: Group name → list of ``(start, end)`` character spans within ``text``.
    """

    text: str
    spans: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, parts: list[tuple[str, str | None]]) -> PromptText:
        """Concatenate ``(text, group_or_None)`` parts, recording each named part's span.

        Example:
            >>> p = PromptText.build([("Is it red?", "question"), ("\\nAnswer yes or no.", None)])
            >>> p.spans["question"]
            ((0, 10),)
        """
        text, spans = "", {}
        for part, name in parts:
            if name is not None:
                spans.setdefault(name, []).append((len(text), len(text) + len(part)))
            text += part
        return cls(text, {k: tuple(v) for k, v in spans.items()})
