"""Integrated gradients for attribution patching: the gradient averaged along a straight path.

Attribution patching linearises the metric at the base run. With ``steps = k`` the gradient at
one site is instead averaged over the ``k`` points ``a + (j/k)(a' − a)``, ``j = 0 … k−1`` (a left
Riemann sum; ``k = 1`` is the base point), where ``a`` and ``a'`` are the base and source
activations of the whole site (every patched position at once) and every later activation is
recomputed from the interpolated one. The estimates of one site and layer then add up, as
``k`` grows, to the metric with all those positions patched minus the base metric
(completeness). References: "Axiomatic Attribution for Deep Networks" (integrated gradients);
"Have Faith in Faithfulness" (EAP-IG); "Sparse Feature Circuits" (integrated gradients per
activation site).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from mmlens.analysis.grad import activation_grads
from mmlens.patching.metrics import Metric
from mmlens.patching.runs import CachedRun
from mmlens.patching.sites import Site


def path_points(steps: int) -> Float[Tensor, " steps"]:
    """The ``steps`` interpolation coefficients ``j / steps``, ``j = 0 … steps−1``."""
    return torch.arange(steps, dtype=torch.float64) / steps


def path_grad(
    model, site: Site, layer: int, base: CachedRun, delta: Float[Tensor, "1 ..."], metric: Metric, at: int,
    steps: int, batch_size: int,
) -> Float[Tensor, "1 ..."]:
    """Mean gradient of the metric at ``site`` of ``layer`` over the straight path from ``base``.

    Args:
        model: The model.
        site: The site.
        layer: Its layer.
        base: The run the path starts from (its activation ``a``).
        delta: ``a' − a`` with the batch dimension (zero where the path does not move).
        metric: Metric of ``[batch, d_vocab]`` logits at ``at``.
        at: Metric position.
        steps: Points on the path (:func:`path_points`).
        batch_size: Points per forward and backward.

    Returns:
        The mean gradient, shaped like the activation (batch 1).
    """
    name = site.hook(layer)
    start = base.acts[name]
    total = torch.zeros_like(start)
    alphas = path_points(steps)
    for chunk in alphas.split(batch_size):
        shape = (-1,) + (1,) * (start.dim() - 1)
        point = (start + chunk.to(start.dtype).view(shape) * delta).requires_grad_(True)

        def put(x: Tensor, hook, point: Tensor = point) -> Tensor:
            return point

        with activation_grads(model), model.hooks(fwd_hooks=[(name, put)]):
            logits = _logits_from(model, site, layer, base, len(chunk), at)
            (grad,) = torch.autograd.grad(metric(logits).sum(), point)
        total += grad.sum(0, keepdim=True)
    return total / steps


def _logits_from(model, site: Site, layer: int, base: CachedRun, m: int, at: int) -> Tensor:
    """``[m, d_vocab]`` logits at ``at`` of ``m`` copies of ``base``, starting at the site's block
    (decoder) or at the image merge (vision tower); the attached hooks do the patching."""
    inputs = base.inputs
    if site.tower == "vision":
        pixels = inputs.pixel_values.expand(m, *inputs.pixel_values.shape[1:])
        resid, start = model.merge(inputs.input_ids.expand(m, -1), pixels), 0
    else:
        resid, start = base.resid[layer].expand(m, -1, -1), layer
    mask = inputs.attention_mask.expand(m, -1)
    positions = model.rotary_positions(inputs)  # [batch, pos] or M-RoPE's [3, batch, pos]
    positions = positions.expand(*positions.shape[:-2], m, -1)
    out = model.decode_blocks(resid, mask, positions, start_layer=start, stop_at_layer=model.cfg.n_layers)
    return model.unembed(model.ln_final(out[:, at : at + 1]))[:, 0]
