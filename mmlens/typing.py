"""jaxtyping aliases and the dimension glossary used across mmlens.

Dimension names:
    batch:      prompts in a batch.
    pos:        positions of the merged decoder sequence (text + image slots).
    query_pos:  attention rows (receiving positions).
    key_pos:    attention columns (source positions).
    head_index: attention heads; ``kv_head`` for grouped key/value heads.
    d_model:    residual-stream width of the tower at hand.
    d_head:     width of one attention head.
    d_mlp:      MLP hidden width.
    d_vocab:    vocabulary size.
    v_pos:      positions of the vision-encoder sequence (CLS + patches, or patches only).
    n_img:      images in a batch.
    n_patch:    image positions per image fed to the decoder.
    grid_h, grid_w: patch grid of one image view.
    n_views:    views of a batch's images, one image after another (anyres base view + tiles,
                InternVL tiles + thumbnail).
    n_tokens:   image tokens of one view after pixel shuffle (InternVL: one per s×s patches).
    d_shuffled: channels of a pixel-shuffled token (``s² · d_vision``).
    d_q, d_k:   query / key projection width, all heads together (QK-norm).
    n_query:    InstructBLIP's learned Q-Former queries (= its image tokens per image).
    q_pos:      instruction tokens of the Q-Former (its own BERT vocabulary).
    qf_pos:     Q-Former sequence: ``n_query`` queries, then ``q_pos`` instruction tokens.
    d_qformer:  Q-Former width; ``d_encoder`` the vision width its cross-attention reads.
    layer:      a stack over layers.
"""

from __future__ import annotations

from jaxtyping import Bool, Float, Int
from torch import Tensor

Logits = Float[Tensor, "batch pos d_vocab"]
Residual = Float[Tensor, "batch pos d_model"]
TokenIds = Int[Tensor, "batch pos"]
PosMask = Bool[Tensor, "batch pos"]
TokenMask = Int[Tensor, "batch pos"] | Bool[Tensor, "batch pos"]
"""1 (or True) on real tokens, 0 on padding."""
Pattern = Float[Tensor, "batch head_index query_pos key_pos"]
PixelValues = Float[Tensor, "n_img *tiles 3 height width"]
"""One view per image (LLaVA-1.5), base view + tiles per image (anyres: NeXT, OneVision), or
``[n_views, 3, H, W]``: every image's tiles and thumbnail, one image after another (InternVL)."""
Box = tuple[float | int, float | int, float | int, float | int]
"""A pixel box ``(x0, y0, x1, y1)`` in original-image coordinates, ``x1``/``y1`` exclusive."""

__all__ = ["Bool", "Box", "Float", "Int", "Logits", "PixelValues", "Pattern", "PosMask", "Residual", "Tensor", "TokenIds", "TokenMask"]
