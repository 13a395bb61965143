"""Greedy generation with a KV cache equals Hugging Face's greedy ``generate``."""

from __future__ import annotations

import pytest
import torch
import transformers

from mmlens import HookedVLM
from tests.conftest import make_batch


@pytest.mark.parametrize("case", [dict(n_kv_heads=2), dict(decoder="mistral", sliding_window=20), dict(decoder="qwen2", vision="siglip")])
def test_generate_equals_hugging_face_greedy(checkpoint_factory, case):
    path = checkpoint_factory(**case)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(path).eval()
    model = HookedVLM.from_pretrained(path)
    ids, px, mask = make_batch(model.vlm_cfg, batch=2, pad=(0, 3), seed=1)
    ref = hf.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=10, do_sample=False)
    ours = model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=10)
    assert torch.equal(ours, ref)


def test_generation_stops_at_eos_and_pads_finished_rows(tiny_pair):
    model, hf = tiny_pair
    ids, px, mask = make_batch(model.vlm_cfg, batch=2, pad=(2, 0), seed=2)
    free = model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=6)
    eos = int(free[0, ids.shape[1] + 2])  # row 0's third new token becomes the end of sequence
    ref = hf.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=6, do_sample=False,
                      eos_token_id=eos, pad_token_id=0)
    ours = model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=6, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(ours, ref)
    assert int(ours[0, ids.shape[1] + 2]) == eos and (ours[0, ids.shape[1] + 3 :] == 0).all()


def test_hooks_are_active_during_prefill_and_every_step(tiny_pair):
    model, _ = tiny_pair
    ids, px, _ = make_batch(model.vlm_cfg, batch=1)
    seen = []
    hooks = [("blocks.0.hook_resid_post", lambda x, hook: seen.append(x.shape[1]))]
    model.generate(input_ids=ids, pixel_values=px, max_new_tokens=4, fwd_hooks=hooks, eos_token_id=-1)
    assert seen == [ids.shape[1], 1, 1, 1]
    # An edit at every step changes what is generated.
    clean = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=4, eos_token_id=-1)
    noisy = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=4, eos_token_id=-1,
                           fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x * 0)])
    assert not torch.equal(clean, noisy)
