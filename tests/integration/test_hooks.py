"""Every hook point fires once per forward with its documented shape, and an edit there matters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mmlens import UnknownHookError
from mmlens.models.hook_shapes import SHAPES, render_hook_names, template
from tests.conftest import make_batch


def expected_shape(model, name: str, ids, px) -> tuple[int, ...]:
    cfg, vcfg = model.cfg, model.vlm_cfg.vision
    vision = name.startswith("vision_encoder.blocks")
    tower = vcfg if vision else cfg
    n_feat = len(model.vlm_cfg.vision_feature_layer)
    dims = {
        "batch": ids.shape[0], "pos": ids.shape[1], "query_pos": ids.shape[1], "key_pos": ids.shape[1],
        "n_img": px.shape[0], "v_pos": vcfg.n_patches + 1, "n_patch": model.vlm_cfg.image_seq_length,
        "d_model": cfg.d_model, "d_vision": vcfg.d_model, "d_feat": vcfg.d_model * n_feat,
        "head_index": tower.n_heads, "kv_head": tower.n_kv_heads, "d_head": tower.d_head,
        "d_mlp": tower.d_mlp, "1": 1,
    }
    if vision:
        dims["query_pos"] = dims["key_pos"] = dims["v_pos"]
    return tuple(dims[d] for d in SHAPES[template(name)].split())


def test_docs_hook_names_is_current(tiny_pair):
    doc = Path(__file__).parents[2] / "docs" / "hook_names.md"
    if os.environ.get("MMLENS_WRITE_DOCS"):
        doc.write_text(render_hook_names(tiny_pair[0]))
    assert doc.read_text() == render_hook_names(tiny_pair[0]), "rewrite it: MMLENS_WRITE_DOCS=1 pytest -k docs_hook_names"


def test_every_hook_fires_once_with_its_documented_shape(tiny_pair):
    model, _ = tiny_pair
    ids, px, mask = make_batch(model.vlm_cfg, batch=2, pad=(0, 2))
    calls: dict[str, list[tuple[int, ...]]] = {}

    def record(x, hook):
        calls.setdefault(hook.name, []).append(tuple(x.shape))

    with torch.no_grad():
        model.run_with_hooks(input_ids=ids, pixel_values=px, attention_mask=mask, fwd_hooks=[(lambda n: True, record)])
    assert set(calls) == set(model.hook_dict)
    for name, shapes in calls.items():
        assert shapes == [expected_shape(model, name, ids, px)], name


def test_an_edit_at_every_hook_changes_the_logits(tiny_pair):
    model, _ = tiny_pair
    ids, px, _ = make_batch(model.vlm_cfg, batch=1)
    with torch.no_grad():
        clean = model(input_ids=ids, pixel_values=px)
        unchanged = []
        for name in model.hook_dict:
            def edit(x, hook):
                return x * 1.5 + 0.1 if x.is_floating_point() else x
            out = model.run_with_hooks(input_ids=ids, pixel_values=px, fwd_hooks=[(name, edit)])
            if torch.allclose(out, clean, atol=1e-5):
                unchanged.append(name)
    assert not unchanged


def test_fused_and_explicit_attention_agree(tiny_pair):
    model, _ = tiny_pair
    ids, px, mask = make_batch(model.vlm_cfg, batch=2, pad=(3, 0))
    with torch.no_grad():
        fused = model(input_ids=ids, pixel_values=px, attention_mask=mask)
        explicit = model.run_with_hooks(
            input_ids=ids, pixel_values=px, attention_mask=mask,
            fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda x, hook: x)],
        )
    valid = mask.bool()
    torch.testing.assert_close(fused[valid], explicit[valid], atol=1e-5, rtol=0)


def test_edits_at_scores_and_pattern_change_the_output(tiny_pair):
    model, _ = tiny_pair
    ids, px, _ = make_batch(model.vlm_cfg, batch=1)
    with torch.no_grad():
        clean = model(input_ids=ids, pixel_values=px)[0, -1]

        def block_first_key(scores, hook):
            scores[..., 1:, 0] = float("-inf")
            return scores

        def zero_first_key(pattern, hook):
            pattern[..., 0] = 0
            return pattern

        for name, fn in [("blocks.1.attn.hook_attn_scores", block_first_key), ("blocks.1.attn.hook_pattern", zero_first_key)]:
            out = model.run_with_hooks(input_ids=ids, pixel_values=px, fwd_hooks=[(name, fn)])[0, -1]
            assert (out - clean).abs().max() > 1e-3, name


def test_cache_is_a_transformer_lens_activation_cache(tiny_pair):
    model, hf = tiny_pair
    ids, px, _ = make_batch(model.vlm_cfg, batch=1)
    with torch.no_grad():
        logits, cache = model.run_with_cache(input_ids=ids, pixel_values=px)
    assert cache["pattern", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["resid_post", -1] is cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    # With the final norm applied (TransformerLens runs model.ln_final), the last entry unembeds to the logits.
    stack = cache.accumulated_resid(apply_ln=True)
    assert stack.shape[0] == model.cfg.n_layers + 1
    torch.testing.assert_close(stack[-1] @ model.W_U, logits, atol=1e-4, rtol=0)


def test_names_filter_restricts_the_cache(tiny_pair):
    model, _ = tiny_pair
    ids, px, _ = make_batch(model.vlm_cfg, batch=1)
    with torch.no_grad():
        _, cache = model.run_with_cache(input_ids=ids, pixel_values=px, names_filter=lambda n: n.endswith("resid_post"))
    assert len(cache) == model.cfg.n_layers + model.vlm_cfg.vision.n_layers


def test_unknown_hook_name_lists_the_closest_names(tiny_pair):
    model, _ = tiny_pair
    ids, px, _ = make_batch(model.vlm_cfg, batch=1)
    with pytest.raises(UnknownHookError, match=r"blocks\.1\.attn\.hook_pattern"):
        model.run_with_hooks(input_ids=ids, pixel_values=px, fwd_hooks=[("blocks.1.attn.hook_patern", lambda x, hook: x)])
    with pytest.raises(UnknownHookError, match="hook_resid_post"):
        model.run_with_cache(input_ids=ids, pixel_values=px, names_filter=["blocks.0.hook_resid_pots"])


def test_a_hook_that_raises_leaves_no_hook_attached(tiny_pair):
    model, _ = tiny_pair
    ids, px, _ = make_batch(model.vlm_cfg, batch=1)

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(input_ids=ids, pixel_values=px, fwd_hooks=[("blocks.0.hook_resid_post", boom)])
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", boom)]):
            model(input_ids=ids, pixel_values=px)
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())
