"""Greedy decoding with a key/value cache, hooks active at every step."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Int
from torch import Tensor

from mmlens.hooks import FwdHooks
from mmlens.models.decoder import KVCache
from mmlens.typing import TokenMask

if TYPE_CHECKING:
    from mmlens.models.vlm import HookedVLM


@torch.no_grad()
def greedy_generate(
    model: HookedVLM,
    input_ids: Int[Tensor, "batch pos"],
    pixel_values: Tensor | None = None,
    attention_mask: TokenMask | None = None,
    *,
    max_new_tokens: int = 16,
    fwd_hooks: FwdHooks = (),
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    prune: object = None,
    image_sizes: Tensor | None = None,
) -> Int[Tensor, "batch pos_plus_new"]:
    """Prompt followed by greedily generated tokens, as Hugging Face's greedy ``generate``.

    The prompt is run once (prefill); each new token then runs alone against the cache. Hooks in
    ``fwd_hooks`` stay attached for the whole generation, so they see the prefill (full
    positions) and every decoding step (one position each). Rows that emitted ``eos_token_id``
    continue with ``pad_token_id`` until every row has finished.
    """
    pad = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
    b = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    cache = KVCache()
    out = [input_ids]
    finished = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        logits = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, cache=cache, prune=prune, image_sizes=image_sizes)
        for step in range(max_new_tokens):
            token = logits[:, -1].argmax(-1)
            token = torch.where(finished, torch.full_like(token, pad), token)
            out.append(token[:, None])
            if eos_token_id is not None:
                finished |= token == eos_token_id
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            logits = model(input_ids=token[:, None], cache=cache)
    return torch.cat(out, dim=1)
