"""Model parallel placement (accelerate) on the CPU: blocks offloaded to disk change no number."""

from __future__ import annotations

import pytest
import torch

from mmlens import HookedVLM, MMLensError
from mmlens.analysis import knockout_sweep, saliency
from mmlens.data.shapes import make_sample
from mmlens.inputs import sample_inputs
from mmlens.models.placement import _forward_ordered, infer_device_map
from mmlens.pruning import FastV
from tests.conftest import make_batch

MAP = {
    "vision_encoder": "cpu", "vision_projector": "cpu", "embed": "cpu", "blocks.0": "cpu", "blocks.1": "disk",
    "blocks.2": "cpu", "blocks.3": "disk", "ln_final": "cpu", "unembed": "disk",
}  # fmt: skip


@pytest.fixture(scope="module")
def path(checkpoint_factory):
    return checkpoint_factory(n_kv_heads=2, n_layers=4)


@pytest.fixture(scope="module")
def plain(path):
    return HookedVLM.from_pretrained(path)


@pytest.fixture(scope="module")
def spread(path, tmp_path_factory):
    return HookedVLM.from_pretrained(path, device_map=MAP, offload_folder=tmp_path_factory.mktemp("offload"))


@pytest.fixture(scope="module")
def batch(plain):
    return make_batch(plain.vlm_cfg, batch=2, n_text=8, pad=(0, 2), seed=5)


def test_offloaded_blocks_really_live_on_disk(spread):
    assert spread.hf_device_map == MAP
    assert spread.blocks[1].attn.q_proj.weight.device.type == "meta"  # loaded only for its forward
    assert spread.blocks[0].attn.q_proj.weight.device.type == "cpu"


def test_logits_and_every_cached_activation_are_identical(plain, spread, batch):
    ids, px, mask = batch
    with torch.no_grad():
        a, cache_a = plain.run_with_cache(input_ids=ids, pixel_values=px, attention_mask=mask)
        b, cache_b = spread.run_with_cache(input_ids=ids, pixel_values=px, attention_mask=mask, device="cpu")
    torch.testing.assert_close(b, a, atol=0, rtol=0)
    assert set(cache_a.keys()) == set(cache_b.keys())
    for name in cache_a.keys():
        torch.testing.assert_close(cache_b[name], cache_a[name], atol=0, rtol=0, msg=name)


def test_stop_at_layer_and_generation_match_under_offload(plain, spread, batch):
    ids, px, mask = batch
    with torch.no_grad():
        for k in (1, 2, 4):
            torch.testing.assert_close(spread(input_ids=ids, pixel_values=px, attention_mask=mask, stop_at_layer=k),
                                       plain(input_ids=ids, pixel_values=px, attention_mask=mask, stop_at_layer=k))
        gen_a = plain.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=3)
        gen_b = spread.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=3)
    assert torch.equal(gen_a, gen_b)


def test_knockout_saliency_and_pruning_are_identical(plain, spread, batch):
    inputs = sample_inputs(plain, make_sample(1, "ChooseAttr"))
    ko_a, ko_b = (knockout_sweep(m, inputs, window_size=1).frame for m in (plain, spread))
    assert (ko_a["p_knockout"] != ko_a["p_clean"]).any()  # the sweep did something
    assert ko_a.equals(ko_b)
    sal_a, sal_b = (saliency(m, inputs).to_dataframe() for m in (plain, spread))
    assert sal_a.equals(sal_b)
    ids, px, mask = batch
    with torch.no_grad():
        pruned_a = plain(input_ids=ids, pixel_values=px, attention_mask=mask, prune=FastV(2, 0.5))
        pruned_b = spread(input_ids=ids, pixel_values=px, attention_mask=mask, prune=FastV(2, 0.5))
    torch.testing.assert_close(pruned_b, pruned_a, atol=0, rtol=0)


def test_auto_map_fills_in_forward_order_and_offloads_what_does_not_fit(plain, path, batch, tmp_path):
    from accelerate.utils import compute_module_sizes

    total = compute_module_sizes(_forward_ordered(plain))[""]
    device_map = infer_device_map(plain, max_memory={"cpu": int(total * 0.7)})
    assert device_map["vision_encoder"] == device_map["vision_projector"] == "cpu"  # first, with the embedding
    assert device_map["unembed"] == "disk" and "disk" in {device_map.get(f"blocks.{i}") for i in range(4)} | {
        device_map.get("blocks")}
    auto = HookedVLM.from_pretrained(path, device_map="auto", max_memory={"cpu": int(total * 0.7)},
                                     offload_folder=tmp_path)
    assert auto.hf_device_map == device_map
    ids, px, mask = batch
    with torch.no_grad():
        torch.testing.assert_close(auto(input_ids=ids, pixel_values=px, attention_mask=mask),
                                   plain(input_ids=ids, pixel_values=px, attention_mask=mask), atol=0, rtol=0)


def test_bad_maps_are_explained(path):
    with pytest.raises(MMLensError, match="offload_folder"):
        HookedVLM.from_pretrained(path, device_map=MAP)
    with pytest.raises(MMLensError, match="not modules"):
        HookedVLM.from_pretrained(path, device_map={**MAP, "blocks.9": "cpu"})
    with pytest.raises(MMLensError, match="every parameter"):
        HookedVLM.from_pretrained(path, device_map={k: v for k, v in MAP.items() if k != "ln_final"})
    with pytest.raises(MMLensError, match="device_map"):
        HookedVLM.from_pretrained(path, max_memory={"cpu": "1GiB"})


def test_activation_patching_is_identical(plain, spread):
    import dataclasses

    from mmlens.patching import activation_patch

    clean = sample_inputs(plain, make_sample(1, "ChooseAttr"))
    corrupt = dataclasses.replace(clean, pixel_values=sample_inputs(plain, make_sample(2, "ChooseAttr")).pixel_values)
    a, b = (activation_patch(m, clean, corrupt, hook="resid_pre", positions="image", layers=[0, 2], metric="prob")
            for m in (plain, spread))
    assert (a.raw - a.corrupt_metric).abs().max() > 0  # the patches do something
    torch.testing.assert_close(b.raw, a.raw, atol=0, rtol=0)


def test_a_text_decoder_takes_a_device_map_too(tmp_path):
    import transformers

    from mmlens.models import HookedDecoder

    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4)).eval()
    device_map = {"embed": "cpu", "blocks.0": "cpu", "blocks.1": "disk", "blocks.2": "cpu", "ln_final": "disk",
                  "unembed": "cpu"}
    plain = HookedDecoder.from_pretrained(hf)
    spread = HookedDecoder.from_pretrained(hf, device_map=device_map, offload_folder=tmp_path)
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(spread(ids), plain(ids), atol=0, rtol=0)
