"""Token groups: named boolean masks over the merged decoder sequence (methods.md §1).

Every method is phrased over groups — ``system``, ``image``, ``user``, ``question``, ``last``,
option groups, and image patches under a box — so positions never come from literals. Masks are
``[batch, pos]`` bool tensors and combine with ``&``, ``|`` and ``~``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from mmlens.errors import EmptyTokenGroupError, UnknownNameError, closest
from mmlens.typing import TokenMask

STANDARD_GROUPS = ("system", "image", "user", "question", "last")


@dataclass(frozen=True)
class TokenGroups(Mapping[str, Tensor]):
    """Named position masks of one batch of prompts.

    Example:
        >>> groups["image"] & ~inputs.patches_in_box(box)   # doctest: +SKIP
        >>> groups.positions("question", row=0)              # doctest: +SKIP
    """

    masks: dict[str, Bool[Tensor, "batch pos"]] = field(default_factory=dict)

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
        if name.startswith("_") or name == "masks":
            raise AttributeError(name)
        return self[name]

    def with_groups(self, **masks: Bool[Tensor, "batch pos"]) -> TokenGroups:
        """A copy with more (or replaced) groups."""
        return TokenGroups({**self.masks, **masks})

    def require(self, name: str | Tensor) -> Bool[Tensor, "batch pos"]:
        """The group's mask, raising :class:`EmptyTokenGroupError` if a row selects nothing."""
        mask = self[name] if isinstance(name, str) else name
        empty = (~mask.any(-1)).nonzero().flatten().tolist()
        if empty:
            label = name if isinstance(name, str) else "the given mask"
            raise EmptyTokenGroupError(
                f"token group {label} selects no position in batch row(s) {empty}; check the prompt "
                "(e.g. a question group needs the question text in the prompt, a box group a box "
                "that overlaps the image)."
            )
        return mask

    def positions(self, name: str | Tensor, row: int = 0) -> Int[Tensor, " n"]:
        """Indices of the positions the group selects in one batch row."""
        mask = self[name] if isinstance(name, str) else name
        return mask[row].nonzero().flatten()

    def to(self, device: torch.device | str) -> TokenGroups:
        return TokenGroups({k: v.to(device) for k, v in self.masks.items()})


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
