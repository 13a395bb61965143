"""LLaVA-NeXT (anyres) parity with Hugging Face: several image sizes, a batch of two with
different image-token counts and left padding."""

from __future__ import annotations

import pytest
import torch
import transformers

from mmlens import HookedVLM, ImageTokenMismatchError
from mmlens.models.decoder import positions_from_mask
from tests.integration.anyres_batch import assert_decoder_parity, batch_for
from mmlens.zoo.tiny import tiny_llava, tiny_llava_next_config

CASES = {
    "vicuna": dict(n_kv_heads=4),
    "mistral": dict(decoder="mistral", n_kv_heads=2),
    "llama3-gqa-list": dict(n_kv_heads=1, vision_feature_layer=[-3, -1]),
}
SIZES = [(40, 70), (64, 30)]  # (height, width): wide and tall images pick different tile grids


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("next")
    tiny_llava(tiny_llava_next_config(**CASES[request.param])).save_pretrained(path)
    return HookedVLM.from_pretrained(str(path)), transformers.LlavaNextForConditionalGeneration.from_pretrained(path).eval()




def test_logits_and_activations_match_hugging_face(pair):
    model, hf = pair
    ids, px, sizes, mask, _, counts = batch_for(hf, SIZES)
    assert counts[0] != counts[1]
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=px, image_sizes=sizes, attention_mask=mask,
                 position_ids=positions_from_mask(mask), output_hidden_states=True)
        logits, cache = model.run_with_cache(input_ids=ids, pixel_values=px, image_sizes=sizes, attention_mask=mask)
        packed = torch.cat(list(hf.model.get_image_features(pixel_values=px, image_sizes=sizes).pooler_output))
    assert_decoder_parity(logits, cache, ref, ids, mask, packed, hf.config.image_token_id)


def test_generate_matches_and_counts_are_checked(pair):
    model, hf = pair
    ids, px, sizes, mask, _, _ = batch_for(hf, SIZES, seed=1)
    ref = hf.generate(input_ids=ids, pixel_values=px, image_sizes=sizes, attention_mask=mask, max_new_tokens=6, do_sample=False)
    ours = model.generate(input_ids=ids, pixel_values=px, image_sizes=sizes, attention_mask=mask, max_new_tokens=6)
    assert torch.equal(ours, ref)
    broken = ids.clone()
    broken[0, (ids[0] == hf.config.image_token_id).nonzero()[0]] = 5  # one image slot too few
    with pytest.raises(ImageTokenMismatchError, match="per image"):
        model(input_ids=broken, pixel_values=px, image_sizes=sizes, attention_mask=mask)
