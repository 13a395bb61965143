"""Gradients with respect to activations only (never to parameters)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def activation_grads(model) -> Iterator[list]:
    """Enable autograd through the forward without parameter gradients.

    Parameters are frozen for the duration (their ``.grad`` would cost a model's worth of
    memory), and the token and patch embeddings are made leaves that require grad, so
    every downstream activation is in the graph. Yields a list of extra forward hooks to attach.
    """
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)

    def leaf(x, hook):
        return x.detach().requires_grad_(True)

    try:
        with torch.enable_grad():
            yield [("hook_embed", leaf), ("vision_encoder.hook_embed", leaf)]
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
