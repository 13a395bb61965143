"""The hooked Q-Former of InstructBLIP: learned queries that read the instruction and the image.

Sits between the vision tower and the projector (``HookedVLM.qformer``); its query outputs are
what the projector maps into the decoder's image slots, one image token per query.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from mmlens.components.attention import AttentionMask
from mmlens.components.embed import Embed
from mmlens.components.norms import LayerNorm
from mmlens.components.qformer import QFormerBlock
from mmlens.config import QFormerConfig
from mmlens.errors import InvalidInputError
from mmlens.hooks import HookPoint


class HookedQFormer(nn.Module):
    """``[query_tokens ; embed(instruction) + W_pos]`` → LayerNorm → Q-Former blocks → queries.

    Hooks (prefix ``qformer.``): ``hook_embed`` (the block input, after the embedding
    LayerNorm), ``blocks.{l}.…`` (:class:`~mmlens.components.qformer.QFormerBlock`: self-attention
    ``attn.hook_pattern`` over queries and instruction, cross-attention
    ``cross_attn.hook_pattern`` from the queries to the vision positions, residuals), and
    ``hook_queries`` (the final query states the projector consumes).
    """

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.cfg = cfg
        self.query_tokens = nn.Parameter(torch.zeros(cfg.n_queries, cfg.d_model))
        self.embed = Embed(cfg.d_vocab, cfg.d_model)
        self.W_pos = nn.Parameter(torch.zeros(cfg.n_ctx, cfg.d_model))
        self.ln_embed = LayerNorm(cfg.d_model, cfg.eps)
        self.hook_embed = HookPoint()  # [n_img, n_query + q_pos, d_model]
        self.blocks = nn.ModuleList([QFormerBlock(cfg, layer) for layer in range(cfg.n_layers)])
        self.hook_queries = HookPoint()  # [n_img, n_query, d_model]

    def forward(
        self,
        image: Float[Tensor, "n_img v_pos d_encoder"],
        input_ids: Int[Tensor, "n_img q_pos"] | None = None,
        attention_mask: Int[Tensor, "n_img q_pos"] | Float[Tensor, "n_img q_pos"] | None = None,
    ) -> Float[Tensor, "n_img n_query d_model"]:
        """Query states after the last block.

        Args:
            image: Vision features the queries cross-attend to (every position, CLS included).
            input_ids: The instruction in the Q-Former's (BERT) vocabulary, one row per image;
                None runs the queries alone (BLIP-2 style).
            attention_mask: 1 for real instruction tokens, 0 for padding.

        Raises:
            InvalidInputError: instruction rows that do not match the images, or an instruction
                longer than the Q-Former's positions.
        """
        n_img, n_q = image.shape[0], self.cfg.n_queries
        x = self.query_tokens.to(image.dtype).expand(n_img, n_q, -1)
        mask = None
        if input_ids is not None:
            if input_ids.shape[0] != n_img or input_ids.shape[1] > self.cfg.n_ctx:
                raise InvalidInputError(
                    f"qformer_input_ids are {tuple(input_ids.shape)} for {n_img} image(s): give one instruction row "
                    f"per image, at most {self.cfg.n_ctx} tokens (use model.prepare, or InstructBlipProcessor)."
                )
            text = self.embed(input_ids) + self.W_pos[: input_ids.shape[1]]
            x = torch.cat([x, text.to(x.dtype)], dim=1)
            if attention_mask is not None:
                keys = torch.cat([torch.ones_like(attention_mask[:, :1]).expand(n_img, n_q), attention_mask], dim=1).bool()
                mask = keys[:, None, None, :].expand(n_img, 1, x.shape[1], x.shape[1])
        x = self.hook_embed(self.ln_embed(x))
        attn_mask = AttentionMask(allowed=mask)
        for block in self.blocks:
            x = block(x, attn_mask, image)
        return self.hook_queries(x[:, :n_q])
