"""Attribution patching that runs the patched block exactly and linearises only what follows.

A large patch (an object's patches recoloured) acts non-linearly first of all in the block it
enters: its norm, attention softmax and MLP. Here each column's patch is run through its own
block l exactly (one block pass per column, batched), and only the change it leaves in the
residual stream entering block l + 1 is multiplied by the base run's gradient there; in the last
block the metric is read directly, so the last layer equals activation patching. References:
"AtP*: An efficient and scalable method for localizing LLM behaviour" (the linear estimate's
failures at saturated attention, fixed there by recomputing the attention pattern exactly).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from mmlens.models.decoder import build_mask
from mmlens.patching.metrics import Metric
from mmlens.patching.runs import CachedRun, Job, overwrite
from mmlens.patching.sites import Site


def next_resid(model, layer: int) -> str | None:
    """The hook whose gradient the block estimate uses: the input of block ``layer + 1`` (None
    after the last block, whose estimate is exact)."""
    return f"blocks.{layer + 1}.hook_resid_pre" if layer + 1 < model.cfg.n_layers else None


def block_effects(
    model, site: Site, base: CachedRun, source: CachedRun, jobs: list[Job], grad_next: Tensor | None,
    metric: Metric, at: int, batch_size: int,
) -> Float[Tensor, " column"]:
    """Estimated change of the metric for every job (all at one layer), exact through its block.

    Args:
        model: The model.
        site: A decoder site.
        base: The run patched into.
        source: The run the activations come from.
        jobs: One per column, all at the same layer (:func:`~mmlens.patching.activation.build_jobs`).
        grad_next: Gradient of the metric at the input of the next block in the base run
            (``[1, pos, d_model]``); None for the last block.
        metric: Metric of ``[batch, d_vocab]`` logits.
        at: Metric position.
        batch_size: Columns per block pass.

    Returns:
        ``[len(jobs)]`` estimated patched metric minus the base metric.
    """
    layer = jobs[0].layer
    name = site.hook(layer)
    base_value = float(metric(base.logits[None])[0])
    valid = base.inputs.attention_mask.bool()
    positions = model.rotary_positions(base.inputs)  # [batch, pos] or M-RoPE's [3, batch, pos]
    block, window, dtype = model.blocks[layer], model.cfg.sliding_window, base.resid[layer].dtype
    out = torch.zeros(len(jobs))
    todo = sorted((i for i, job in enumerate(jobs) if 0 <= job.p0 <= at), key=lambda i: jobs[i].p0)
    with torch.no_grad():
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            m, p0 = len(batch), jobs[batch[0]].p0
            # Positions before p0 are unchanged: start there, with their keys and values cached.
            cut = (slice(None),) * site.pos_axis + (slice(p0, None),)
            edit = torch.stack([jobs[i].edit for i in batch])[cut]
            kv = base.kv.kv[layer]
            past = (kv[0][:, :p0].expand(m, -1, -1, -1), kv[1][:, :p0].expand(m, -1, -1, -1)) if p0 > 0 else None
            mask = build_mask(valid.expand(m, -1), valid.shape[1] - p0, window)
            rotary = model.rotary(positions.expand(*positions.shape[:-2], m, -1)[..., p0:], dtype)
            with model.hooks(fwd_hooks=[(name, overwrite(source.acts[name][cut], edit))]):
                r, _ = block(base.resid[layer][:, p0:].expand(m, -1, -1), mask, rotary, past)
            if grad_next is None:
                value = metric(model.unembed(model.ln_final(r[:, at - p0 : at - p0 + 1]))[:, 0]).float() - base_value
            else:
                value = ((r - base.resid[layer + 1][:, p0:]) * grad_next[:, p0:]).flatten(1).sum(-1).float()
            out[batch] = value.cpu()
    return out
