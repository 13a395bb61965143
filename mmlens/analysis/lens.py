"""Logit lens at the last position, with lower-case and capitalised answer variants (methods.md §3)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from mmlens.errors import MMLensError
from mmlens.inputs import MMInputs


@dataclass(frozen=True)
class LensResult:
    """Probabilities of tracked tokens at ``last`` for every layer boundary.

    Attributes:
        probs: ``[batch, n_layers + 1, n_tokens]``; boundary 0 is the embeddings, ``l + 1`` the
            output of block ``l``.
        tokens: Token ids tracked, with ``labels`` (word, variant) for each.
    """

    probs: Float[Tensor, "batch boundary token"]
    tokens: tuple[int, ...]
    labels: tuple[tuple[str, str], ...]

    def to_dataframe(self) -> pd.DataFrame:
        rows = []
        for b in range(self.probs.shape[0]):
            for layer in range(self.probs.shape[1]):
                for t, ((word, variant), tok) in enumerate(zip(self.labels, self.tokens)):
                    rows.append((b, layer, word, variant, tok, float(self.probs[b, layer, t])))
        return pd.DataFrame(rows, columns=["row", "boundary", "word", "variant", "token", "prob"])


def first_token(tokenizer, word: str) -> int:
    """Id of the first sub-token of ``word`` as it appears mid-sentence (e.g. ``▁Yes``)."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise MMLensError(f"the tokenizer maps {word!r} to no token.")
    return ids[0]


def word_variants(words: Sequence[str]) -> list[tuple[str, str, str]]:
    """(word, variant, text): each word lower-cased and capitalised."""
    return [(w, v, t) for w in words for v, t in (("lower", w.lower()), ("capitalised", w.lower().capitalize()))]


def residual_at_last(model, inputs: MMInputs) -> Float[Tensor, "batch boundary d_model"]:
    """The residual stream at ``last`` for every layer boundary (only that row is kept)."""
    last = inputs.groups["last"]
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    store: dict[str, Tensor] = {}

    def keep(x: Tensor, hook) -> None:
        store[hook.name] = x[last].detach()

    with torch.no_grad():
        model.run_with_hooks(inputs, fwd_hooks=[(n, keep) for n in names])
    return torch.stack([store[n] for n in names], dim=1)


def logit_lens(
    model, inputs: MMInputs, words: Sequence[str] = (), *, tokens: Sequence[int] = (), final_norm: str = "all"
) -> LensResult:
    """Project the residual at ``last`` through the unembedding after every block.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        inputs: Prepared inputs.
        words: Words to track, each as its lower-case and capitalised first sub-token (pass
            the answer and the false option, e.g. ``["red", "blue"]``).
        tokens: Extra token ids to track (labelled by their id).
        final_norm: ``"all"`` applies the final norm at every boundary (the standard lens);
            ``"last_only"`` applies it only to the final boundary (the released code, i.e.
            Hugging Face's ``hidden_states`` convention).

    Returns:
        Full-vocabulary softmax probabilities of the tracked tokens, L + 1 points per token.

    References: seed 002 §7.
    """
    if final_norm not in ("all", "last_only"):
        raise MMLensError(f"final_norm must be 'all' or 'last_only', not {final_norm!r}.")
    tok = model.processor.tokenizer if words else None
    labels = [(w, v) for w, v, _ in word_variants(words)] + [(str(t), "id") for t in tokens]
    ids = [first_token(tok, t) for _, _, t in word_variants(words)] + list(tokens)
    resid = residual_at_last(model, inputs)
    with torch.no_grad():
        normed = model.ln_final(resid)
        if final_norm == "last_only":
            normed = torch.cat([resid[:, :-1], normed[:, -1:]], dim=1)
        probs = torch.softmax((normed @ model.W_U).float(), dim=-1)[..., ids]
    return LensResult(probs, tuple(ids), tuple(labels))
