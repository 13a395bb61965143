"""``mmlens plan``: parameter, memory and forward-pass estimates against independent counts."""

from __future__ import annotations

import pytest
import torch
import transformers

from mmlens import HookedVLM
from mmlens.analysis import PAPER_FLOWS, knockout_sweep
from mmlens.cli import main
from mmlens.config import DecoderConfig
from mmlens.errors import MMLensError
from mmlens.data.shapes import make_sample
from mmlens.inputs import sample_inputs
from mmlens.studies.plan import Layout, count_parameters, decoder_activation_bytes, knockout_cost, make_plan, model_config


@pytest.fixture(scope="module")
def path(checkpoint_factory):
    return checkpoint_factory(n_kv_heads=2, n_layers=4)


@pytest.fixture(scope="module")
def model(path):
    return HookedVLM.from_pretrained(path)


def test_parameters_match_the_loaded_model_and_hugging_face(path, model):
    counted = count_parameters(model_config(path))
    assert counted["total"] == sum(p.numel() for p in model.parameters())
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(path)
    vision = hf.model.vision_tower  # transformers 5: CLIPVisionModel without .vision_model
    n_used = model.vlm_cfg.vision.n_layers  # LLaVA reads layer -2: the last block and post-norm are not built
    unused = [*vision.encoder.layers[n_used:], vision.post_layernorm]
    expected = sum(p.numel() for p in hf.parameters()) - sum(p.numel() for m in unused for p in m.parameters())
    assert n_used < len(vision.encoder.layers) and counted["total"] == expected
    assert counted["vision"] == sum(p.numel() for p in vision.parameters()) - sum(
        p.numel() for m in unused for p in m.parameters())


def test_activation_formulas_on_a_hand_computed_case():
    cfg = DecoderConfig(d_model=4, n_layers=1, n_heads=2, d_head=2, d_mlp=8, act_fn="silu", n_key_value_heads=1, d_vocab=10)
    got = decoder_activation_bytes(cfg, prompt_len=3, dtype_bytes=2)
    # block: 3 positions × (3·4 + (2 + 2·1)·2 + 3·8) = 3 × 44 = 132 elements; logits 3·10 + 3·4 = 42
    assert got["forward"] == 132 * 2
    # + scores and pattern of one layer: 2 · 2 heads · 3² = 36
    assert got["forward_with_patterns"] == (132 + 36) * 2
    # per layer 3 × (7·4 + 2 + 3·2·2 + 3·1·2 + 2·2·3 + 3·8) = 3 × 84 = 252; embeddings and ln_final 3 × 13 = 39
    assert got["cache_all"] == (252 + 39) * 2


def test_cache_all_equals_the_bytes_of_a_full_run_with_cache(model):
    inputs = sample_inputs(model, make_sample(1, "ChooseAttr"))
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs)
    decoder = [n for n in cache.keys() if not n.startswith(("vision_encoder.", "vision_projector.", "hook_image_embed"))]
    measured = sum(cache[n].numel() * cache[n].element_size() for n in decoder)
    assert measured == decoder_activation_bytes(model.cfg, inputs.input_ids.shape[1], 4)["cache_all"]


def test_knockout_cost_counts_the_sweeps_calls_rows_and_work(model):
    inputs = sample_inputs(model, make_sample(1, "ChooseAttr"))
    groups = inputs.groups
    assert all(bool(groups[g].any()) for flow in PAPER_FLOWS.values() for g in flow)  # no flow is skipped
    n = model.cfg.n_layers
    seen = {"calls": 0, "rows": 0, "work": 0}

    def last(x, hook):
        seen["calls"] += 1
        seen["rows"] += x.shape[0]

    def work(x, hook):
        seen["work"] += x.shape[0] * x.shape[1]

    hooks = [(f"blocks.{n - 1}.hook_resid_post", last)] + [(f"blocks.{l}.hook_resid_pre", work) for l in range(n)]
    with model.hooks(fwd_hooks=hooks):
        knockout_sweep(model, inputs, window_size=3)
    layout = Layout(inputs.input_ids.shape[1], int(groups["question"][0].nonzero()[0]))
    cost = knockout_cost(n, layout, PAPER_FLOWS, window_size=3)
    assert (cost.calls, cost.rows, cost.block_positions) == (seen["calls"], seen["rows"], seen["work"])
    assert cost.widest == 2  # windows of 3 centred on 0 and 1 both start at 0
    assert cost.full_forward_equivalents(n, layout.prompt_len) < 1 + 6 * n  # the reuse saves work


def test_plan_reads_no_weights_and_prints_the_study(path, monkeypatch, capsys):
    def no_weights(*args, **kwargs):
        raise AssertionError("plan loaded weights")

    monkeypatch.setattr(transformers.LlavaForConditionalGeneration, "from_pretrained", no_weights)
    assert main(["plan", "--model", path, "--study", "flow", "--n", "10", "--dtype", "fp32", "--prompt-len", "40"]) == 0
    out = capsys.readouterr().out
    plan = make_plan(model_config(path), "fp32", 40, "flow", 10)
    assert f"parameters: {plan.parameters['total']:,}" in out
    assert f"{plan.study['calls_per_sample']} forward calls per sample" in out
    assert plan.study["calls"] == 10 * (4 + knockout_cost(4, Layout(40, 16)).calls + 2)
    assert plan.weight_bytes == plan.parameters["total"] * 4 and plan.devices == 1


# (width, height): square, wide, tall, over the tiny processor's pixel budget (shrunk), under it (grown)
IMAGE_SIZES = [(40, 40), (70, 30), (30, 64), (200, 100), (10, 12)]


@pytest.fixture(scope="module")
def qwen_path(tmp_path_factory):
    from mmlens.zoo.tiny_qwen_vl import save_tiny_qwen_vl

    return str(save_tiny_qwen_vl(tmp_path_factory.mktemp("qwen2_vl")))


@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_packed_image_tokens_equal_the_processors(qwen_path, size):
    from PIL import Image

    from mmlens.adapters.processors import load_processor
    from mmlens.studies.plan_image import packed_image, pixel_budget
    from mmlens.zoo.tiny_qwen_vl import IMAGE_TOKEN_ID

    processor = load_processor(qwen_path)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is"}]}],
                                         add_generation_prompt=True)  # fmt: skip
    out = processor(images=[Image.new("RGB", size)], text=[text], return_tensors="pt")
    cfg = model_config(qwen_path)
    image = packed_image(cfg, *size, pixel_budget(qwen_path, cfg))
    assert image.n_tokens == int((out["input_ids"] == IMAGE_TOKEN_ID).sum())
    patch = cfg.vision.patch_size
    assert out["image_grid_thw"].tolist() == [[1, image.resized_height // patch, image.resized_width // patch]]
    plan = make_plan(cfg, "fp32", image=image)
    assert plan.prompt_len == image.n_tokens + 64 and f"{out['pixel_values'].shape[0]:,} patches" in plan.lines()[1]


def test_plan_of_a_packed_model_takes_an_image_size(qwen_path, monkeypatch, capsys):
    def no_weights(*args, **kwargs):
        raise AssertionError("plan loaded weights")

    monkeypatch.setattr(transformers.Qwen2VLForConditionalGeneration, "from_pretrained", no_weights)
    assert main(["plan", "--model", qwen_path, "--image-size", "70x30", "--study", "flow"]) == 0
    out = capsys.readouterr().out
    # 70x30 rounds to 72x32 (multiples of 8 px): 18x8 patches of 4 px, merged 2x2 into 36 tokens
    assert "image 70x30 px, resized by the processor to 72x32: 144 patches, 36 image tokens" in out
    assert "one prompt of 100 positions" in out and "forward calls per sample" in out
    assert main(["plan", "--model", qwen_path]) == 0  # the documented default image: 448x448, shrunk to the budget
    assert "image 448x448 px, resized by the processor to 64x64: 256 patches, 64 image tokens" in capsys.readouterr().out
    with pytest.raises(MMLensError, match="--image-size WxH"):
        make_plan(model_config(qwen_path))


@pytest.mark.parametrize("value", ["70by30", "70x", "0x30", "-5x30", "70x30x2"])
def test_an_unreadable_image_size_is_a_usage_error(qwen_path, value, capsys):
    assert main(["plan", "--model", qwen_path, f"--image-size={value}"]) == 2
    assert f"--image-size {value!r}: give the image's width and height in pixels as WxH, e.g. 448x448." in capsys.readouterr().err


def test_an_image_size_for_a_fixed_count_model_is_refused(path, capsys):
    assert main(["plan", "--model", path, "--image-size", "64x64"]) == 2
    assert "--image-size applies to packed towers" in capsys.readouterr().err


def test_without_a_saved_processor_the_plan_takes_qwen2_vls_default_budget(qwen_path, tmp_path, capsys):
    import shutil

    shutil.copy(f"{qwen_path}/config.json", tmp_path / "config.json")
    assert main(["plan", "--model", str(tmp_path), "--image-size", "1600x1200"]) == 0
    # 1600x1200 px is over 28·28·1280 px: scaled by sqrt(1600·1200 / 1003520) and floored to multiples of 8 px
    beta = (1600 * 1200 / (28 * 28 * 1280)) ** 0.5
    w, h = int(1600 / beta / 8) * 8, int(1200 / beta / 8) * 8
    assert f"resized by the processor to {w}x{h}: {w * h // 16:,} patches, {w * h // 64:,} image tokens" in capsys.readouterr().out
