"""Greedy decoding with a key/value cache (or, for the released pruning code, without), hooks
active at every step."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Int
from torch import Tensor

from mmlens.errors import MMLensError
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
    image_inputs: dict[str, Tensor | None] | None = None,
    rerank_every_step: bool = False,
) -> Int[Tensor, "batch pos_plus_new"]:
    """Prompt followed by greedily generated tokens, as Hugging Face's greedy ``generate``.

    The prompt is run once (prefill); each new token then runs alone against the cache. Hooks in
    ``fwd_hooks`` stay attached for the whole generation, so they see the prefill (full
    positions) and every decoding step (one position each). ``image_inputs`` are further keyword
    tensors of the prefill (InstructBLIP's ``qformer_input_ids`` / ``qformer_attention_mask``). Rows that emitted ``eos_token_id``
    continue with ``pad_token_id`` until every row has finished.

    ``rerank_every_step`` (with ``prune``): no cache; every step re-runs the whole sequence, the
    prompt and the tokens so far, and prunes it afresh, so the newest token is the last row that
    ranks and generated tokens count as instruction rows. This is the released FastV and HiMAP
    code ("Unraveling the Shift"; docs/conventions.md); pruned once at prefill, FastV can pick
    other tokens from the second generated token on.
    """
    pad = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
    b = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    cache = None if rerank_every_step else KVCache()
    out = [input_ids]
    finished = torch.zeros(b, dtype=torch.bool, device=input_ids.device)

    def full(ids: Tensor, mask: Tensor) -> Tensor:
        return model(input_ids=ids, pixel_values=pixel_values, attention_mask=mask, cache=cache, prune=prune,
                     image_sizes=image_sizes, **(image_inputs or {}))

    with model.hooks(fwd_hooks=list(fwd_hooks)):
        logits = full(input_ids, attention_mask)
        for step in range(max_new_tokens):
            token = logits[:, -1].argmax(-1)
            token = torch.where(finished, torch.full_like(token, pad), token)
            out.append(token[:, None])
            if eos_token_id is not None:
                finished |= token == eos_token_id
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            if rerank_every_step:
                if bool((token == model.vlm_cfg.image_token_index).any()):
                    raise MMLensError(
                        f"the model generated the image token (id {model.vlm_cfg.image_token_index}); "
                        "rerank_every_step re-runs the prompt with the tokens generated so far and cannot "
                        "tell it from an image slot: generate with rerank_every_step=False."
                    )
                attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
                logits = full(torch.cat(out, dim=1), attention_mask)
            else:
                logits = model(input_ids=token[:, None], cache=cache)
    return torch.cat(out, dim=1)
