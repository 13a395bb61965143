"""Loading refuses weights that are not the checkpoint's and names unreadable files.

``transformers`` initialises a tensor missing from ``model.safetensors`` at random; these tests
build a text-only checkpoint, damage one tensor at a time, and check that mmlens names it
(the VLM path is covered by the table of tests/unit/test_bad_inputs.py).
"""

from __future__ import annotations

import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from mmlens import CheckpointMismatchError, CorruptFileError, HookedDecoder
from mmlens.adapters import as_dtype
from mmlens.adapters.checks import check_files, check_loading_info
from mmlens.errors import InvalidInputError

CONFIG = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, max_position_embeddings=64)
KEY = "model.layers.1.self_attn.k_proj.weight"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llama")
    transformers.LlamaForCausalLM(CONFIG).save_pretrained(path)
    return path


def _variant(saved, tmp_path, edit):
    target = tmp_path / "ckpt"
    shutil.copytree(saved, target)
    state = load_file(str(saved / "model.safetensors"))
    edit(state)
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def test_an_intact_checkpoint_loads_its_own_weights(saved):
    model = HookedDecoder.from_pretrained(saved)
    state = load_file(str(saved / "model.safetensors"))
    torch.testing.assert_close(model.embed.W_E.detach(), state["model.embed_tokens.weight"], atol=0, rtol=0)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda s: s.pop(KEY), f"missing (would be randomly initialised): {KEY}"),
        (lambda s: s.__setitem__("model.layers.9.extra.weight", torch.zeros(4)), "unexpected (not in the model): model.layers.9.extra.weight"),
        (lambda s: s.__setitem__(KEY, torch.zeros(5, 16)), f"{KEY} (checkpoint (5, 16) vs model (16, 16))"),
    ],
    ids=["missing", "unexpected", "mis-shaped"],
)
def test_a_damaged_tensor_is_named(saved, tmp_path, edit, needle):
    with pytest.raises(CheckpointMismatchError) as info:
        HookedDecoder.from_pretrained(_variant(saved, tmp_path, edit))
    assert needle in str(info.value)


def test_check_loading_info_passes_a_clean_report_and_lists_at_most_eight(tmp_path):
    check_loading_info({"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set()}, tmp_path)
    with pytest.raises(CheckpointMismatchError, match="12 tensor\\(s\\) missing .* and 4 more"):
        check_loading_info({"missing_keys": {f"k{i:02d}" for i in range(12)}}, tmp_path)


@pytest.mark.parametrize("name", ["config.json", "generation_config.json", "model.safetensors"])
def test_a_truncated_file_is_named(saved, tmp_path, name):
    target = tmp_path / "ckpt"
    shutil.copytree(saved, target)
    blob = (target / name).read_bytes()
    (target / name).write_bytes(blob[: len(blob) // 3])
    with pytest.raises(CorruptFileError, match=name.replace(".", r"\.")):
        check_files(target)
    with pytest.raises(CorruptFileError, match=name.replace(".", r"\.")):
        HookedDecoder.from_pretrained(target)


def test_dtype_names():
    assert as_dtype("float16") is torch.float16 and as_dtype("torch.bfloat16") is torch.bfloat16
    assert as_dtype(torch.float32) is torch.float32
    for bad in ("int8", torch.int64, "fp8"):
        with pytest.raises(InvalidInputError, match="dtype"):
            as_dtype(bad)
