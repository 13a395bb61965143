"""Logit lens at the last position, with lower-case and capitalised answer variants (docs/methods.md#logit-lens)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from mmlens.conventions import resolve
from mmlens.errors import InvalidInputError, MMLensError, UnknownWordError
from mmlens.inputs import MMInputs
from mmlens.models.placement import execution_device
from mmlens.result import Result
from mmlens.viz.flow import plot_lens


@dataclass(frozen=True)
class LensResult(Result):
    """Probabilities of tracked tokens at ``last`` for every layer boundary.

    Attributes:
        probs: ``[batch, n_layers + 1, n_tokens]``; boundary 0 is the embeddings, ``l + 1`` the
            output of block ``l``.
        tokens: Token ids tracked, with ``labels`` (word, variant) for each.
    """

    COLUMNS: ClassVar[dict[str, str]] = {
        "row": "batch row (input index after concat)",
        "boundary": "layer boundary: 0 the embeddings, l + 1 the output of block l",
        "word": "tracked word (or token id as text)",
        "variant": "'lower', 'capitalised' or 'id'",
        "token": "token id",
        "sub_token": "the token tracked: a word's first sub-token (the whole word when it is one token)",
        "n_sub_tokens": "how many sub-tokens the word (variant) has; > 1: only the first is tracked",
        "prob": "full-vocabulary softmax probability at `last`",
    }

    probs: Float[Tensor, "batch boundary token"]
    tokens: tuple[int, ...]
    labels: tuple[tuple[str, str], ...]
    sub_tokens: tuple[tuple[str, int], ...] = ()

    def to_dataframe(self) -> pd.DataFrame:
        rows = []
        subs = self.sub_tokens or tuple((str(t), 1) for t in self.tokens)
        for b in range(self.probs.shape[0]):
            for layer in range(self.probs.shape[1]):
                for t, ((word, variant), tok, (sub, n_sub)) in enumerate(zip(self.labels, self.tokens, subs)):
                    rows.append((b, layer, word, variant, tok, sub, n_sub, float(self.probs[b, layer, t])))
        return pd.DataFrame(rows, columns=list(self.COLUMNS))

    def plot(self, log: bool = False) -> Figure:
        """Probability of each tracked word per boundary, averaged over rows ("Cross-modal
        Information Flow" Fig. 6); ``log``: a log probability scale (values under 0.01 stay visible)."""
        return plot_lens(self.to_dataframe(), log=log)

    @classmethod
    def concat(cls, results: Sequence[LensResult]) -> LensResult:
        """Stack the rows of results that track the same tokens.

        Raises:
            MMLensError: no results, or results tracking different tokens.
        """
        if not results or any(r.tokens != results[0].tokens or r.labels != results[0].labels for r in results):
            raise MMLensError("LensResult.concat needs results tracking the same tokens: pass the same words to each.")
        return cls(torch.cat([r.probs for r in results]), results[0].tokens, results[0].labels, results[0].sub_tokens)


def word_tokens(tokenizer, word: str) -> list[int]:
    """Token ids of ``word`` as it appears mid-sentence (e.g. ``▁Yes``).

    Raises:
        UnknownWordError: the tokenizer maps ``word`` to no token, or to its unknown token.
    """
    if not isinstance(word, str) or not word.strip():
        raise UnknownWordError(f"{word!r} is not a word: pass non-empty strings.")
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    if not ids or (unk is not None and unk in ids):
        raise UnknownWordError(
            f"the tokenizer cannot represent {word!r} (it maps to {tokenizer.convert_ids_to_tokens(ids) or 'no token'}): "
            "the word is not in this model's vocabulary, so its probability cannot be tracked; pick a word "
            "the tokenizer knows, or pass token ids with tokens=[...]."
        )
    return ids


def first_token(tokenizer, word: str) -> int:
    """Id of the first sub-token of ``word`` as it appears mid-sentence (e.g. ``▁Yes``).

    Raises:
        UnknownWordError: see :func:`word_tokens`.
    """
    return word_tokens(tokenizer, word)[0]


def word_variants(words: str | Sequence[str]) -> list[tuple[str, str, str]]:
    """(word, variant, text): each word lower-cased and capitalised (a single string is one word)."""
    words = [words] if isinstance(words, str) else list(words)
    return [(w, v, t) for w in words for v, t in (("lower", w.lower()), ("capitalised", w.lower().capitalize()))]


def tracked_tokens(tokenizer, words: str | Sequence[str]) -> list[tuple[str, str, int, str, int]]:
    """``(word, variant, token id, sub-token text, number of sub-tokens)`` for every known variant.

    A variant the tokenizer cannot represent (e.g. a capitalised form missing from a word-level
    vocabulary) is left out; a word none of whose variants it can represent raises.

    Raises:
        UnknownWordError: a word with no variant in the vocabulary.
    """
    out = []
    for word in [words] if isinstance(words, str) else list(words):
        if not isinstance(word, str) or not word.strip():
            raise UnknownWordError(f"{word!r} is not a word: pass non-empty strings.")
        found, error = [], None
        for w, variant, text in word_variants(word):
            try:
                ids = word_tokens(tokenizer, text)
            except UnknownWordError as err:
                error = err
                continue
            found.append((w, variant, ids[0], tokenizer.convert_ids_to_tokens(ids[:1])[0], len(ids)))
        if not found:
            raise UnknownWordError(
                f"the tokenizer cannot represent {word!r}, lower-case or capitalised (it maps to <unk> or to no "
                "token), so its probability cannot be tracked: pick a word in this model's vocabulary, or pass "
                "token ids with tokens=[...]."
            ) from error
        out += found
    return out


def lens_device(model) -> torch.device | None:
    """Where the lens projects: the unembedding's execution device (under a ``device_map``
    the blocks' residuals live on their own devices; None: wherever they are)."""
    return execution_device(model.unembed)


def residual_at_last(model, inputs: MMInputs) -> Float[Tensor, "batch boundary d_model"]:
    """The residual stream at ``last`` for every layer boundary (only that row is kept).

    Under a ``device_map`` each boundary's residual is made on its block's device; every row is
    moved to :func:`lens_device` as it is kept, so the stack (and the projection after it)
    happens on one device.
    """
    last = inputs.groups["last"]
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    device = lens_device(model)
    store: dict[str, Tensor] = {}

    def keep(x: Tensor, hook) -> None:
        row = x[last.to(x.device)].detach()
        store[hook.name] = row if device is None else row.to(device)

    with torch.no_grad():
        model.run_with_hooks(inputs, fwd_hooks=[(n, keep) for n in names])
    return torch.stack([store[n] for n in names], dim=1)


def logit_lens(
    model,
    inputs: MMInputs,
    words: str | Sequence[str] = (),
    *,
    tokens: Sequence[int] = (),
    final_norm: str | None = None,
    convention: str = "paper",
) -> LensResult:
    """Project the residual at ``last`` through the unembedding after every block.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        inputs: Prepared inputs.
        words: Words to track, each as its lower-case and capitalised first sub-token (pass
            the answer and the false option, e.g. ``["red", "blue"]``; a single string is one
            word). A word of several sub-tokens is tracked by its first: the frame's
            ``sub_token`` and ``n_sub_tokens`` columns say which. A variant missing from the
            vocabulary is left out.
        tokens: Extra token ids to track (labelled by their id).
        final_norm: ``"all"`` applies the final norm at every boundary (the standard lens);
            ``"last_only"`` applies it only to the final boundary (the released code, i.e.
            Hugging Face's ``hidden_states`` convention). None: from ``convention``.
        convention: ``"paper"`` (``final_norm="all"``) or ``"released_code"`` (``"last_only"``);
            see docs/conventions.md.

    Returns:
        Full-vocabulary softmax probabilities of the tracked tokens, L + 1 points per token.

    Raises:
        UnknownWordError: a word the tokenizer cannot represent (it would track ``<unk>``).
        InvalidInputError: a token id outside the vocabulary.

    References: "Cross-modal Information Flow" §7.
    """
    final_norm = resolve("logit_lens", convention, final_norm=final_norm)["final_norm"]
    if final_norm not in ("all", "last_only"):
        raise MMLensError(f"final_norm must be 'all' or 'last_only', not {final_norm!r}.")
    tracked = tracked_tokens(model.processor.tokenizer, words) if words else []
    bad = [t for t in tokens if not 0 <= int(t) < model.cfg.d_vocab]
    if bad:
        raise InvalidInputError(f"tokens {bad} are outside the vocabulary of {model.cfg.d_vocab} tokens.")
    labels = [(w, v) for w, v, *_ in tracked] + [(str(t), "id") for t in tokens]
    ids = [i for _, _, i, _, _ in tracked] + list(tokens)
    subs = tuple((sub, n) for *_, sub, n in tracked) + tuple((str(t), 1) for t in tokens)
    resid = residual_at_last(model, inputs)
    with torch.no_grad():
        # Called as modules, the final norm and the unembedding load offloaded weights and take
        # their input to their own device (a device_map's hooks); model.W_U would be on "meta".
        normed = model.ln_final(resid).to(resid.device)
        if final_norm == "last_only":
            normed = torch.cat([resid[:, :-1], normed[:, -1:]], dim=1)
        probs = torch.softmax(model.unembed(normed).float(), dim=-1)[..., ids]
    return LensResult(probs, tuple(ids), tuple(labels), subs)
