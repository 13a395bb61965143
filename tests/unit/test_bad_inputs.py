"""Bad inputs over the public API raise a precise ``MMLensError`` subclass naming the problem,
and inputs in other accepted forms (arrays, tensors, paths, dtype names) give the same results.

The table lives in :mod:`tests.unit.bad_inputs_cases`; one tiny checkpoint and its broken copies
are made once for the module.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mmlens import HookedVLM, MMLensError, TokenGroups
from mmlens.analysis import attention_share, knockout_sweep, logit_lens
from mmlens.data.shapes import make_sample
from mmlens.inputs import sample_inputs
from mmlens.interventions import knockout
from tests.unit.bad_inputs_cases import CASES

UP = "language_model.model.layers.0.mlp.up_proj.weight"


def _broken_copies(path: Path, root: Path) -> dict[str, str]:
    """Copies of the checkpoint at ``path`` with one defect each."""
    weights = load_file(str(path / "model.safetensors"))
    edits = {
        "missing": lambda s: s.pop(UP),
        "extra": lambda s: s.__setitem__("not_a_layer.weight", torch.zeros(2)),
        "shape": lambda s: s.__setitem__(UP, torch.zeros(3, 3)),
    }
    out = {}
    for name in [*edits, "weights", "config", "tokenizer", "no_config"]:
        target = root / name
        shutil.copytree(path, target)
        out[name] = str(target)
        if name in edits:
            state = dict(weights)
            edits[name](state)
            save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    blob = (root / "weights" / "model.safetensors").read_bytes()
    (root / "weights" / "model.safetensors").write_bytes(blob[: len(blob) // 2])  # truncated download
    (root / "config" / "config.json").write_text('{"architectures": ["LlavaForConditionalGeneration"], ')
    (root / "tokenizer" / "tokenizer.json").write_text(json.dumps({"model": {"type": "NoSuchModel"}}))
    (root / "no_config" / "config.json").unlink()
    return out


@pytest.fixture(scope="module")
def ctx(checkpoint_factory, tmp_path_factory):
    path = Path(checkpoint_factory())
    model = HookedVLM.from_pretrained(path)
    sample = make_sample(3, "ChooseAttr")
    inputs = sample_inputs(model, sample)
    other = model.prepare(sample.load_image(), sample.question + " Answer in one word please.")
    edited = torch.where(inputs.groups["question"], 5, inputs.input_ids)  # same length, other question
    same_length = SimpleNamespace(groups=TokenGroups.of(edited, inputs.groups.masks))
    broken = _broken_copies(path, tmp_path_factory.mktemp("broken"))
    return SimpleNamespace(model=model, inputs=inputs, other=other, same_length=same_length, path=str(path),
                           broken=broken, image=sample.load_image())


@pytest.mark.parametrize("action, error, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_precise_error(ctx, action, error, needle):
    with pytest.raises(error) as info:
        action(ctx)
    assert isinstance(info.value, MMLensError)
    assert needle in str(info.value), str(info.value)


def test_the_table_is_large_and_its_ids_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) >= 45 and len(set(ids)) == len(ids)


def test_hooks_are_removed_after_a_hook_error(ctx):
    with pytest.raises(MMLensError):
        ctx.model.run_with_hooks(ctx.inputs, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: 1.0)])
    assert not any(hp.fwd_hooks for hp in ctx.model.hook_dict.values())


# --- accepted forms give the same result as the canonical one ---


def test_images_as_array_tensor_and_path_prepare_like_pil(ctx, tmp_path):
    image = ctx.image
    file = tmp_path / "image.png"
    image.save(file)
    arr = np.asarray(image)
    ref = ctx.model.prepare(image, "Is it red?")
    rgba = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 255, np.uint8)], -1)
    for form in (arr, torch.from_numpy(arr.copy()).permute(2, 0, 1), arr / 255.0, rgba, str(file), file, [arr]):
        got = ctx.model.prepare(form, "Is it red?")
        torch.testing.assert_close(got.pixel_values, ref.pixel_values, atol=0, rtol=0)
        assert torch.equal(got.input_ids, ref.input_ids)


def test_a_batch_of_images_as_one_4d_array(ctx):
    arr = np.stack([np.asarray(ctx.image)] * 2)
    got = ctx.model.prepare(arr, ["Is it red?", "Is it blue?"])
    assert got.pixel_values.shape[0] == 2


def test_dtype_given_by_name_loads_the_same_weights(ctx):
    named = HookedVLM.from_pretrained(ctx.path, dtype="float32")
    typed = HookedVLM.from_pretrained(ctx.path, dtype=torch.float32)
    for (k, a), (_, b) in zip(named.state_dict().items(), typed.state_dict().items()):
        assert torch.equal(a, b), k
    assert next(HookedVLM.from_pretrained(ctx.path, dtype="bf16").parameters()).dtype == torch.bfloat16


def test_boxes_as_numpy_and_tensor_equal_the_tuple(ctx):
    box = (2, 3, 20, 25)
    ref = ctx.inputs.patches_in_box(box)
    assert ref.any()
    for form in (np.array(box), torch.tensor(box), np.array(box, dtype=np.float32), [np.array(box)], [torch.tensor(box)]):
        assert torch.equal(ctx.inputs.patches_in_box(form), ref)


def test_a_single_string_is_one_word(ctx):
    one = logit_lens(ctx.model, ctx.inputs, "red").to_dataframe()
    listed = logit_lens(ctx.model, ctx.inputs, ["red"]).to_dataframe()
    assert set(one["word"]) == {"red"}
    assert one.equals(listed)


def test_multi_token_words_say_which_sub_token_is_tracked(ctx):
    tok = ctx.model.processor.tokenizer
    frame = logit_lens(ctx.model, ctx.inputs, ["red circle"]).to_dataframe()
    first = tok("red circle", add_special_tokens=False)["input_ids"]
    assert len(first) == 2
    lower = frame[frame["variant"] == "lower"]
    assert set(lower["token"]) == {first[0]}
    assert set(lower["sub_token"]) == {tok.convert_ids_to_tokens(first[0])} and set(lower["n_sub_tokens"]) == {2}


def test_empty_groups_give_nan_when_allowed_never_zero(ctx):
    empty = replace(ctx.inputs, groups=ctx.inputs.groups.with_groups(system=ctx.inputs.groups["system"] & False))
    share = attention_share(ctx.model, empty, allow_empty=True).to_dataframe()
    assert share[share["group"] == "system"]["share"].isna().all()
    assert share[share["group"] != "system"]["share"].notna().all()
    no_related = replace(ctx.inputs, groups=ctx.inputs.groups.with_groups(related=ctx.inputs.groups["related"] & False))
    sweep = knockout_sweep(ctx.model, no_related, ["related->question", "image->last"], allow_empty=True).to_dataframe()
    assert set(sweep["flow"]) == {"image->last"}  # the empty flow is left out, not reported as 0.0


def test_group_hooks_run_on_their_own_prompt_also_while_generating(ctx):
    hooks = knockout(ctx.inputs.groups, "image", "last", [0, 1])
    with torch.no_grad():
        out = ctx.model.generate(ctx.inputs, max_new_tokens=3, fwd_hooks=hooks)
        ctx.model.run_with_hooks(ctx.inputs.row(0), fwd_hooks=knockout(ctx.inputs.row(0).groups, "image", "last", [0]))
    assert out.shape[1] == ctx.inputs.input_ids.shape[1] + 3
