"""HookedDecoder.from_pretrained on text-only checkpoints: parity with Hugging Face."""

from __future__ import annotations

import pytest
import torch
import transformers

from mmlens import HookedDecoder, UnsupportedArchitectureError
from mmlens.models.decoder import positions_from_mask

COMMON = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              max_position_embeddings=256)
CASES = {
    "llama-gqa": (transformers.LlamaForCausalLM, transformers.LlamaConfig(num_key_value_heads=2, **COMMON)),
    "llama-biases-head-dim": (transformers.LlamaForCausalLM, transformers.LlamaConfig(
        num_key_value_heads=2, attention_bias=True, mlp_bias=True, head_dim=24, **COMMON)),
    "mistral-sliding": (transformers.MistralForCausalLM, transformers.MistralConfig(
        num_key_value_heads=2, sliding_window=5, **COMMON)),
    "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config(num_key_value_heads=2, **COMMON)),
    "llama-tied": (transformers.LlamaForCausalLM, transformers.LlamaConfig(tie_word_embeddings=True, **COMMON)),
}


def random_model(cls, cfg, seed: int = 0):
    """A randomly initialised model with non-zero biases and norm weights (as mmlens.zoo.tiny does)."""
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name and "lm_head" not in name:
                p.normal_(0.0, p.shape[-1] ** -0.5)
            elif p.ndim == 1:
                p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_residuals_match_hugging_face(tmp_path, case):
    cls, cfg = CASES[case]
    hf = random_model(cls, cfg)
    hf.save_pretrained(tmp_path)
    model = HookedDecoder.from_pretrained(str(tmp_path))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), output_hidden_states=True)
        logits, cache = model.run_with_cache(ids, mask)
    valid = mask.bool()
    torch.testing.assert_close(logits[valid], ref.logits[valid], atol=1e-4, rtol=0)
    # HF's hidden_states[l + 1] is block l's output; the last one is after the final norm.
    for layer in range(cfg.num_hidden_layers - 1):
        torch.testing.assert_close(cache["resid_post", layer][valid], ref.hidden_states[layer + 1][valid], atol=1e-4, rtol=0)


def test_a_loaded_model_is_accepted_and_an_unknown_family_refused():
    cls, cfg = CASES["llama-gqa"]
    hf = random_model(cls, cfg)
    model = HookedDecoder.from_pretrained(hf)
    ids = torch.arange(10)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=0)
    with pytest.raises(UnsupportedArchitectureError, match="decoder model_type 'gpt2'"):
        HookedDecoder.from_pretrained(transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2)))
