"""Random anyres prompts whose image-token counts come from Hugging Face's own packing, and the
decoder-side parity checks the NeXT and OneVision tests share."""

from __future__ import annotations

import sys

import torch


def batch_for(hf, sizes, seed=0):
    """Left-padded prompts, one image of each ``(height, width)`` in ``sizes``, 3 text tokens before it.

    Returns:
        ids, pixel values, image sizes, attention mask, views per image, image tokens per image.
    """
    g = torch.Generator().manual_seed(seed)
    cfg = hf.config
    image_size_to_num_patches = sys.modules[type(hf).__module__].image_size_to_num_patches  # the family's own
    n_views = [image_size_to_num_patches(s, cfg.image_grid_pinpoints, cfg.vision_config.image_size) for s in sizes]
    px = torch.randn(len(sizes), max(n_views), 3, 32, 32, generator=g)
    image_sizes = torch.tensor(sizes)
    with torch.no_grad():
        feats = hf.model.get_image_features(pixel_values=px, image_sizes=image_sizes).pooler_output
    counts = [len(f) for f in feats]
    length = max(counts) + 12
    ids = torch.randint(5, cfg.text_config.vocab_size, (len(sizes), length), generator=g)
    mask = torch.ones_like(ids)
    for r, n in enumerate(counts):
        pad = length - n - 12
        ids[r, :pad], mask[r, :pad] = 0, 0
        ids[r, pad + 3 : pad + 3 + n] = cfg.image_token_id
    return ids, px, image_sizes, mask, n_views, counts


def assert_decoder_parity(logits, cache, ref, ids, mask, packed, image_token_id, atol=1e-4):
    """Logits, packed image embeddings in the merged sequence, and every block's residual input
    equal Hugging Face's (``ref`` with hidden states) at the real (unpadded) positions."""
    valid = mask.bool()
    torch.testing.assert_close(logits[valid], ref.logits[valid], atol=atol, rtol=0)
    image = ids == image_token_id
    torch.testing.assert_close(cache["hook_merged_embed"][image], packed, atol=atol, rtol=0)
    for layer in range(len(ref.hidden_states) - 1):
        torch.testing.assert_close(cache["resid_pre", layer][valid], ref.hidden_states[layer][valid], atol=atol, rtol=0)
