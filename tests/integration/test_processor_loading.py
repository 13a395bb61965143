"""A saved LLaVA-OneVision checkpoint loads with its processor even without torchvision (which
its video processor needs): images and text are processed exactly as by the full processor."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from PIL import Image

from mmlens import HookedVLM, ProcessorUnavailableError
from mmlens.adapters import load_checkpoint
from mmlens.adapters.processors import LlavaOnevisionImagesProcessor
from mmlens.zoo.tokenizer import build_tokenizer
from tests.integration.test_prepare_anyres import WORDS, ImagesOnlyOnevisionProcessor
from mmlens.zoo.tiny import ONEVISION_PINPOINTS as PINPOINTS, tiny_llava, tiny_onevision_config


def _reference_processor() -> ImagesOnlyOnevisionProcessor:
    ip = transformers.LlavaOnevisionImageProcessor(size={"height": 32, "width": 32},
                                                   image_grid_pinpoints=[list(p) for p in PINPOINTS])
    return ImagesOnlyOnevisionProcessor(image_processor=ip, tokenizer=build_tokenizer(WORDS), num_image_tokens=16,
                                        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A OneVision checkpoint directory as the Hub ships one: model, tokenizer, image processor
    and processor_config.json naming LlavaOnevisionProcessor (saved piecewise: saving the full
    processor needs its video processor too)."""
    path = tmp_path_factory.mktemp("onevision-saved")
    tiny_llava(tiny_onevision_config(n_kv_heads=2)).save_pretrained(path)
    processor = _reference_processor()
    processor.tokenizer.save_pretrained(path)
    processor.image_processor.save_pretrained(path)
    config = {k: v for k, v in processor.to_dict().items() if k != "video_processor"}
    (path / "processor_config.json").write_text(json.dumps(config | {"processor_class": "LlavaOnevisionProcessor"}))
    return path, processor


def test_onevision_checkpoint_loads_with_an_images_only_processor(saved):
    path, reference = saved
    model = HookedVLM.from_pretrained(str(path))
    assert isinstance(model.processor, transformers.LlavaOnevisionProcessor)
    if not transformers.utils.is_torchvision_available():
        assert isinstance(model.processor, LlavaOnevisionImagesProcessor)
    for attr in ("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio", "image_token"):
        assert getattr(model.processor, attr) == getattr(reference, attr), attr
    images = [Image.effect_noise((70, 40), 60).convert("RGB"), Image.effect_noise((30, 64), 60).convert("RGB")]
    got = model.prepare(images, ["is there a star ?"] * 2, template="llava_hf")
    want = HookedVLM.from_pretrained(str(path), processor=reference).prepare(images, ["is there a star ?"] * 2,
                                                                            template="llava_hf")
    assert torch.equal(got.input_ids, want.input_ids)
    torch.testing.assert_close(got.pixel_values, want.pixel_values, atol=0, rtol=0)
    with torch.no_grad():
        assert torch.isfinite(model(got)[:, -1]).all()


def test_an_unbuildable_processor_raises_a_clear_error(saved, monkeypatch):
    path, _ = saved

    def fail(*args, **kwargs):
        raise ImportError("LlavaOnevisionImageProcessor requires the Torchvision library")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", fail)
    monkeypatch.setattr(LlavaOnevisionImagesProcessor, "from_pretrained", fail)
    with pytest.raises(ProcessorUnavailableError, match="pip install torchvision"):
        load_checkpoint(str(path))
    # A processor passed in is used as is: the saved one is not even loaded.
    model = HookedVLM.from_pretrained(str(path), processor=_reference_processor())
    assert isinstance(model.processor, ImagesOnlyOnevisionProcessor)


def test_a_checkpoint_with_only_a_tokenizer_cannot_prepare_images(tmp_path):
    """AutoProcessor falls back to the bare tokenizer; prepare says what is missing."""
    tiny_llava(tiny_onevision_config(n_kv_heads=2)).save_pretrained(tmp_path)
    build_tokenizer(WORDS).save_pretrained(tmp_path)
    model = HookedVLM.from_pretrained(str(tmp_path))
    with pytest.raises(ProcessorUnavailableError, match="cannot prepare images"):
        model.prepare(Image.new("RGB", (40, 30)), "is there a star ?")
