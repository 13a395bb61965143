"""LLaVA-1.6 in the original repository layout (``image_aspect_ratio="anyres"``,
``mm_patch_merge_type="spatial_unpad"``) loads as LLaVA-NeXT, equal to its Hugging Face twin."""

from __future__ import annotations

import pytest
import torch
import transformers
from PIL import Image

from mmlens import HookedVLM
from mmlens.data.shapes import VOCAB_WORDS
from mmlens.models.decoder import positions_from_mask
from mmlens.zoo.tiny import tiny_llava, tiny_llava_next_config
from mmlens.zoo.tokenizer import build_tokenizer
from tests.integration.anyres_batch import batch_for

# Not symmetric under (height, width) swaps: reading the LLaVA code's (width, height) pinpoints the
# wrong way round changes the tile grid of some images.
PINPOINTS = ((32, 64), (64, 64), (32, 96))
SIZES = [(40, 70), (30, 90)]  # (height, width)


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """(HookedVLM of the original layout, Hugging Face LLaVA-NeXT model, checkpoint dir, CLIP dir)."""
    from mmlens.zoo.tiny_original import save_original_llava

    root = tmp_path_factory.mktemp("llava16")
    hf = tiny_llava(tiny_llava_next_config(pinpoints=PINPOINTS, n_kv_heads=2)).eval()
    path, clip = save_original_llava(hf, root / "original", root / "clip", tokenizer=build_tokenizer(VOCAB_WORDS),
                                     tower_in_checkpoint=True)
    return HookedVLM.from_pretrained(str(path), vision_tower=str(clip)), hf, path, clip


def test_config_is_llava_next_with_the_pinpoints_as_height_width(twins):
    model, hf, _, _ = twins
    assert model.vlm_cfg.architecture == "LlavaLlamaForCausalLM"
    assert model.vlm_cfg.image_grid_pinpoints == PINPOINTS
    assert model.image_newline is not None
    torch.testing.assert_close(model.image_newline, hf.model.image_newline, atol=0, rtol=0)


def test_logits_equal_hugging_face_llava_next(twins):
    model, hf, _, _ = twins
    ids, px, sizes, mask, _, counts = batch_for(hf, SIZES)
    assert counts[0] != counts[1]
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=px, image_sizes=sizes, attention_mask=mask,
                 position_ids=positions_from_mask(mask)).logits
        ours = model(input_ids=ids, pixel_values=px, image_sizes=sizes, attention_mask=mask)
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], ref[valid], atol=1e-4, rtol=0)


def test_prepare_tiles_with_the_checkpoint_pinpoints(twins):
    model, hf, _, _ = twins
    image = Image.new("RGB", (90, 30), (200, 30, 30))  # wide: the (32, 96) grid of tiles
    inputs = model.prepare(image, "is the circle red?")
    assert isinstance(model.processor, transformers.LlavaNextProcessor)
    assert inputs.image_sizes.tolist() == [[30, 90]] and inputs.pixel_values.shape[1] == 4  # base view + 3 tiles
    with torch.no_grad():
        ref = hf(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values, image_sizes=inputs.image_sizes).logits
        torch.testing.assert_close(model(inputs), ref, atol=1e-4, rtol=0)


def test_convert_writes_a_llava_next_directory(twins, tmp_path):
    from mmlens.adapters.llava_original import save_hugging_face

    _, hf, path, clip = twins
    ids, px, sizes, _, _, _ = batch_for(hf, SIZES[:1])
    out = save_hugging_face(path, tmp_path / "converted", vision_tower=clip)
    converted = transformers.LlavaNextForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(converted(input_ids=ids, pixel_values=px, image_sizes=sizes).logits,
                                   hf(input_ids=ids, pixel_values=px, image_sizes=sizes).logits, atol=1e-5, rtol=0)
