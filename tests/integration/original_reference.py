"""A plain re-implementation of LLaVA-v0 / Shikra / LLaVA-1 (linear projector) for parity tests.

Independent of mmlens: Hugging Face ``LlamaForCausalLM`` and ``CLIPVisionModel`` load the files
of an original-layout checkpoint, and the image features are projected with the checkpoint's
``model.mm_projector`` tensors and written over the placeholder positions by hand, as
``ShikraLlamaModel.forward`` does (the features replace the positions after ``<im_start>``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file


class OriginalReference:
    """``logits(input_ids, pixel_values, attention_mask)`` of an original-layout checkpoint."""

    def __init__(self, path: str | Path, clip_dir: str | Path):
        raw = json.loads((Path(path) / "config.json").read_text())
        self.raw = raw
        text = transformers.LlamaConfig(**{k: raw[k] for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta")})
        state = load_file(str(Path(path) / "model.safetensors"))
        self.lm = transformers.LlamaForCausalLM(text).eval()
        missing, unexpected = self.lm.load_state_dict(state, strict=False)
        assert not missing and set(unexpected) == {"model.mm_projector.weight", "model.mm_projector.bias"}, (missing, unexpected)
        self.w, self.b = state["model.mm_projector.weight"], state["model.mm_projector.bias"]
        self.tower = transformers.CLIPVisionModel.from_pretrained(str(clip_dir)).eval()
        self.layer = raw["mm_vision_select_layer"]

    @torch.no_grad()
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[n_img, n_patch, d_model]``: the selected layer, CLS dropped, linear projection."""
        hidden = self.tower(pixel_values, output_hidden_states=True).hidden_states[self.layer][:, 1:]
        return torch.nn.functional.linear(hidden, self.w, self.b)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_token_id: int,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits with each row's image features over its (consecutive) placeholder positions."""
        embeds = self.lm.get_input_embeddings()(input_ids).clone()
        features = self.image_features(pixel_values)
        for row, ids in enumerate(input_ids):
            start = int((ids == image_token_id).nonzero()[0])
            embeds[row, start : start + features.shape[1]] = features[row]
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
