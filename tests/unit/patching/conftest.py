"""Fixtures for the patching tests: a tiny random checkpoint (mmlens and Hugging Face) and aligned pairs."""

from __future__ import annotations

import pytest
import torch
import transformers

from mmlens import HookedVLM
from mmlens.inputs import ImageGrid, MMInputs, TokenGroups, standard_groups


def make_inputs(cfg, ids: torch.Tensor, px: torch.Tensor) -> MMInputs:
    """Batch-1 inputs around hand-made ids (``question``: the 4 tokens before the last)."""
    mask = torch.ones_like(ids)
    n = ids.shape[1]
    question = torch.zeros_like(ids, dtype=torch.bool)
    question[:, n - 5 : n - 1] = True
    groups = standard_groups(ids, mask, cfg.image_token_index, question)
    index = torch.where(groups["image"], 0, -1)
    grid = ImageGrid(index, index, index, torch.full((*ids.shape, 4), float("nan"), dtype=torch.float64), (None,))
    return MMInputs(ids, mask, px, TokenGroups(groups), grid, ("",))


@pytest.fixture(scope="module")
def tiny(checkpoint_factory):
    """(HookedVLM, Hugging Face model): Llama with grouped-query attention + CLIP, 3 layers."""
    path = checkpoint_factory(n_kv_heads=2)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(path).eval()
    return HookedVLM.from_pretrained(path), hf


@pytest.fixture(scope="module")
def pair(tiny):
    """Clean and corrupt inputs: different images, and a different token at position 22 (``edited``)."""
    model, _ = tiny
    cfg = model.vlm_cfg
    g = torch.Generator().manual_seed(1)
    n_img = cfg.image_seq_length
    ids = torch.randint(cfg.image_token_index + 1, cfg.decoder.d_vocab, (1, n_img + 12), generator=g)
    ids[:, 3 : 3 + n_img] = cfg.image_token_index
    px = torch.randn(1, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)
    corrupt_ids = ids.clone()
    corrupt_ids[0, 3 + n_img + 3] = (ids[0, 3 + n_img + 3] + 7 - cfg.image_token_index) % (cfg.decoder.d_vocab - cfg.image_token_index - 1) + cfg.image_token_index + 1
    clean = make_inputs(cfg, ids, px)
    corrupt = make_inputs(cfg, corrupt_ids, px.flip(-1) * 1.5)
    edited = ids != corrupt_ids
    return clean, corrupt, edited
