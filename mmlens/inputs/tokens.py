"""Token groups: named boolean masks over the merged decoder sequence (docs/methods.md#token-groups).

Every method is phrased over groups — ``system``, ``image``, ``user``, ``question``, ``last``,
option groups, and image patches under a box — so positions never come from literals. Masks are
``[batch, pos]`` bool tensors and combine with ``&``, ``|`` and ``~``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from mmlens.errors import EmptyGroupError, ForeignGroupError, UnknownNameError, closest
from mmlens.typing import TokenMask

STANDARD_GROUPS = ("system", "image", "user", "question", "last")


def fingerprint(input_ids: Int[Tensor, "batch pos"]) -> str:
    """A short hash of token ids (shape included): what token groups remember of their prompts."""
    ids = input_ids.detach().to("cpu", torch.int64).contiguous()
    digest = hashlib.blake2b(str(tuple(ids.shape)).encode(), digest_size=8)
    digest.update(ids.numpy().tobytes())
    return digest.hexdigest()


# The prompt ids of the forward now running (set by the models at prefill), so hooks built from
# token groups can refuse to act on another prompt's positions.
_RUNNING: ContextVar[Tensor | None] = ContextVar("mmlens_running_ids", default=None)


@contextmanager
def running_on(input_ids: Tensor) -> Iterator[None]:
    """Mark ``input_ids`` as the prompt of the forward run inside the block (models call this)."""
    token = _RUNNING.set(input_ids)
    try:
        yield
    finally:
        _RUNNING.reset(token)


@dataclass(frozen=True)
class TokenGroups(Mapping[str, Tensor]):
    """Named position masks of one batch of prompts.

    Groups know the prompts they were built for (``length`` and a ``fingerprint`` of the token
    ids, set by :func:`~mmlens.inputs.prepare`): :meth:`check` refuses other token ids, and hooks
    built from them (:func:`~mmlens.interventions.knockout`) refuse to run on another prompt.

    Example:
        >>> groups["image"] & ~inputs.patches_in_box(box)   # doctest: +SKIP
        >>> groups.positions("question", row=0)              # doctest: +SKIP
    """

    masks: dict[str, Bool[Tensor, "batch pos"]] = field(default_factory=dict)
    length: int | None = None
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        shapes = {name: tuple(m.shape) for name, m in self.masks.items()}
        first = next(iter(shapes.values()), None)
        bad = {n: s for n, s in shapes.items() if len(s) != 2 or s != first or (self.length is not None and s[1] != self.length)}
        if bad:
            expected = f"[batch, {self.length}]" if self.length is not None else f"{list(first)}"
            raise ForeignGroupError(
                f"token group(s) {sorted(bad)} have shape(s) {sorted(set(bad.values()))} but the groups of these "
                f"inputs are {expected} (batch, positions): build every group from the same prompts "
                "(e.g. inputs.patches_in_box(box) of the same inputs)."
            )

    @classmethod
    def of(cls, input_ids: Int[Tensor, "batch pos"], masks: Mapping[str, Bool[Tensor, "batch pos"]]) -> TokenGroups:
        """Groups that belong to ``input_ids`` (remembering their length and fingerprint)."""
        return cls(dict(masks), input_ids.shape[1], fingerprint(input_ids))

    def __getitem__(self, name: str) -> Bool[Tensor, "batch pos"]:
        try:
            return self.masks[name]
        except KeyError:
            raise UnknownNameError(
                f"no token group {name!r}; groups of these inputs: {sorted(self.masks)} "
                f"(closest: {closest(name, self.masks, 3)})."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.masks)

    def __len__(self) -> int:
        return len(self.masks)

    def __getattr__(self, name: str) -> Tensor:
        if name.startswith("_") or name in ("masks", "length", "fingerprint"):
            raise AttributeError(name)
        return self[name]

    def with_groups(self, **masks: Bool[Tensor, "batch pos"]) -> TokenGroups:
        """A copy with more (or replaced) groups (of the same shape: see :class:`ForeignGroupError`)."""
        return TokenGroups({**self.masks, **masks}, self.length, self.fingerprint)

    def check(self, input_ids: Int[Tensor, "batch pos"], what: str = "these inputs") -> None:
        """Raise :class:`ForeignGroupError` unless the groups were built for ``input_ids``.

        Token ids that extend the groups' prompt on the right (teacher-forced answers, generated
        tokens) are accepted: the groups cover its first ``length`` positions. Groups made
        without ids (``fingerprint`` None) are checked for length only.
        """
        if self.length is None:
            return
        b, p = input_ids.shape
        batch = next(iter(self.masks.values())).shape[0] if self.masks else b
        same = p >= self.length and b == batch and (
            self.fingerprint is None or fingerprint(input_ids[:, : self.length]) == self.fingerprint
        )
        if not same:
            raise ForeignGroupError(
                f"token groups built for a prompt of {batch} row(s) x {self.length} tokens were used with "
                f"{what} ({b} x {p} tokens{'' if p < self.length else ', other token ids'}): groups mark "
                "positions of one prompt only; use the groups of the inputs you run (inputs.groups)."
            )

    def check_running(self) -> None:
        """:meth:`check` against the prompt of the forward now running, if a model marked one."""
        ids = _RUNNING.get()
        if ids is not None:
            self.check(ids, "the prompt the model is running")

    def require(self, name: str | Tensor, allow_empty: bool = False) -> Bool[Tensor, "batch pos"]:
        """The group's mask, raising :class:`EmptyGroupError` if a row selects nothing.

        Args:
            name: A group name or a mask.
            allow_empty: Return an empty mask instead of raising (the caller must then report
                NaN, never 0.0, for the rows it selects nothing in).
        """
        mask = self[name] if isinstance(name, str) else name
        empty = (~mask.any(-1)).nonzero().flatten().tolist()
        if empty and not allow_empty:
            label = name if isinstance(name, str) else "the given mask"
            raise EmptyGroupError(
                f"token group {label} selects no position in batch row(s) {empty}; check the prompt "
                "(e.g. a question group needs the question text in the prompt, a box group a box "
                "that overlaps the image), or pass allow_empty=True to get NaN for those rows."
            )
        return mask

    def positions(self, name: str | Tensor, row: int = 0) -> Int[Tensor, " n"]:
        """Indices of the positions the group selects in one batch row."""
        mask = self[name] if isinstance(name, str) else name
        return mask[row].nonzero().flatten()

    def to(self, device: torch.device | str) -> TokenGroups:
        return TokenGroups({k: v.to(device) for k, v in self.masks.items()}, self.length, self.fingerprint)


def require_nonempty(masks: Mapping[str, Tensor], allow_empty: bool = False) -> dict[str, bool]:
    """Per named mask, whether it is empty in some batch row; raise :class:`EmptyGroupError` unless allowed.

    The check analyses run before they knock out, attribute or share over groups.
    """
    empty = {name: bool((~m.any(-1)).any()) for name, m in masks.items()}
    bad = sorted(n for n, e in empty.items() if e)
    if bad and not allow_empty:
        raise EmptyGroupError(
            f"token group(s) {bad} select no position in at least one batch row, so any effect over them "
            "would read as zero: check the prompt (an empty question, a sample without boxes, a box the "
            "crop removed), or pass allow_empty=True to get NaN for them."
        )
    return empty


def span_mask(
    offsets: Int[Tensor, "batch pos 2"], spans: Sequence[tuple[int, int] | None]
) -> Bool[Tensor, "batch pos"]:
    """Positions whose character span overlaps ``spans[row]`` (``None``: nothing in that row)."""
    mask = torch.zeros(offsets.shape[:2], dtype=torch.bool)
    for row, span in enumerate(spans):
        if span is None:
            continue
        start, end = offsets[row, :, 0], offsets[row, :, 1]
        mask[row] = (start < span[1]) & (end > span[0]) & (end > start)
    return mask


def standard_groups(
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: TokenMask,
    image_token_index: int,
    question: Bool[Tensor, "batch pos"],
) -> dict[str, Bool[Tensor, "batch pos"]]:
    """``system`` / ``image`` / ``user`` / ``question`` / ``last`` from ids and the padding mask."""
    real = attention_mask.bool()
    image = (input_ids == image_token_index) & real
    idx = torch.arange(input_ids.shape[1])[None]
    big = input_ids.shape[1]
    first_img = torch.where(image, idx, big).min(-1).values[:, None]
    last_img = torch.where(image, idx, -1).max(-1).values[:, None]
    has_img = image.any(-1, keepdim=True)
    last_pos = torch.where(real, idx, -1).max(-1).values[:, None]
    system = real & (idx < first_img) & has_img
    user = real & (idx > last_img) & has_img
    return {
        "system": system,
        "image": image,
        "user": user,
        "question": question & real,
        "last": idx == last_pos,
    }
