"""The table of bad inputs of :mod:`tests.unit.test_bad_inputs`: (id, action, error class, message part).

Each action takes the module's context (a tiny model, prepared inputs, a checkpoint directory
and its corrupt copies) and must raise the error class with a message naming the problem.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mmlens import HookedVLM
from mmlens.analysis import attention_share, grad_cam, knockout_sweep, logit_lens, saliency
from mmlens.errors import (
    BoxOutsideImageError,
    CheckpointMismatchError,
    ContextLengthError,
    CorruptFileError,
    EmptyGroupError,
    ForeignGroupError,
    HookReturnError,
    InvalidInputError,
    LayerOutOfRangeError,
    MMLensError,
    UnknownCacheKeyError,
    UnknownHookError,
    UnknownNameError,
    UnknownWordError,
)
from mmlens.interventions import knockout, window
from mmlens.pruning import FastV, HiMAP, Truncate


def _run(c, hooks, inputs=None):
    with torch.no_grad():
        return c.model.run_with_hooks(inputs if inputs is not None else c.inputs, fwd_hooks=hooks)


def _empty(c, name):
    """The inputs with group ``name`` emptied."""
    return replace(c.inputs, groups=c.inputs.groups.with_groups(**{name: c.inputs.groups[name] & False}))


def _cache(c):
    with torch.no_grad():
        return c.model.run_with_cache(c.inputs, names_filter=lambda n: n.endswith("hook_pattern"))[1]


CASES = [
    # --- weights that are not the checkpoint, unreadable files ---
    ("missing-tensor", lambda c: HookedVLM.from_pretrained(c.broken["missing"]), CheckpointMismatchError, "up_proj.weight"),
    ("unexpected-tensor", lambda c: HookedVLM.from_pretrained(c.broken["extra"]), CheckpointMismatchError, "not_a_layer.weight"),
    ("mis-shaped-tensor", lambda c: HookedVLM.from_pretrained(c.broken["shape"]), CheckpointMismatchError, "checkpoint (3, 3)"),
    ("corrupt-safetensors", lambda c: HookedVLM.from_pretrained(c.broken["weights"]), CorruptFileError, "model.safetensors"),
    ("corrupt-config", lambda c: HookedVLM.from_pretrained(c.broken["config"]), CorruptFileError, "config.json"),
    ("corrupt-tokenizer", lambda c: HookedVLM.from_pretrained(c.broken["tokenizer"]), CorruptFileError, "tokenizer.json"),
    ("no-config", lambda c: HookedVLM.from_pretrained(c.broken["no_config"]), CorruptFileError, "no config.json"),
    ("bad-dtype-string", lambda c: HookedVLM.from_pretrained(c.path, dtype="float8"), InvalidInputError, "'float8'"),
    ("unknown-model-name", lambda c: HookedVLM.from_pretrained("no-such-model"), UnknownNameError, "no-such-model"),
    # --- token groups: foreign or empty ---
    ("groups-of-a-longer-prompt", lambda c: replace(c.inputs, groups=c.other.groups), ForeignGroupError, "tokens"),
    ("groups-of-other-ids", lambda c: replace(c.inputs, groups=c.same_length.groups), ForeignGroupError, "other token ids"),
    ("knockout-hooks-on-another-prompt",
     lambda c: _run(c, knockout(c.other.groups, "image", "last", [0]), c.inputs), ForeignGroupError, "prompt the model is running"),
    ("with-groups-wrong-shape", lambda c: c.inputs.groups.with_groups(box=torch.zeros(1, 3, dtype=torch.bool)),
     ForeignGroupError, "box"),
    ("knockout-empty-src", lambda c: knockout(_empty(c, "question").groups, "question", "last", [0]), EmptyGroupError, "question"),
    ("knockout-empty-dst", lambda c: knockout(_empty(c, "user").groups, "image", "user", [0]), EmptyGroupError, "user"),
    ("share-over-empty-group", lambda c: attention_share(c.model, _empty(c, "system")), EmptyGroupError, "system"),
    ("sweep-over-empty-related", lambda c: knockout_sweep(c.model, _empty(c, "related"), ["related->question"]),
     EmptyGroupError, "related"),
    ("saliency-empty-instruction", lambda c: saliency(c.model, _empty(c, "user")), EmptyGroupError, "user"),
    ("require-empty-group", lambda c: _empty(c, "question").groups.require("question"), EmptyGroupError, "question"),
    ("unknown-group", lambda c: c.inputs.groups["questoin"], UnknownNameError, "question"),
    # --- words that are not words ---
    ("lens-unknown-word", lambda c: logit_lens(c.model, c.inputs, ["zebra"]), UnknownWordError, "zebra"),
    ("lens-unknown-single-string", lambda c: logit_lens(c.model, c.inputs, "zebra"), UnknownWordError, "'zebra'"),
    ("lens-empty-word", lambda c: logit_lens(c.model, c.inputs, [" "]), UnknownWordError, "not a word"),
    ("lens-token-outside-vocab", lambda c: logit_lens(c.model, c.inputs, tokens=[10**6]), InvalidInputError, "1000000"),
    ("gradcam-unknown-answer", lambda c: grad_cam(c.model, c.inputs, answer="zebra", layers=[0]), UnknownWordError, "zebra"),
    ("gradcam-answers-per-row", lambda c: grad_cam(c.model, c.inputs, answer=["red", "blue"], layers=[0]),
     InvalidInputError, "2 answers for 1"),
    # --- values out of range ---
    ("truncate-negative-keep", lambda c: Truncate(2, keep=-3), InvalidInputError, "keep"),
    ("truncate-negative-layer", lambda c: Truncate(-1, keep=0), InvalidInputError, "Truncate layer"),
    ("truncate-rank-before-block-0", lambda c: Truncate(0, keep=3), InvalidInputError, "layer >= 1"),
    ("fastv-zero-ratio", lambda c: FastV(2, 0.0), InvalidInputError, "(0, 1]"),
    ("fastv-ratio-above-one", lambda c: FastV(2, 1.5), InvalidInputError, "1.5"),
    ("fastv-layer-0", lambda c: FastV(0, 0.5), InvalidInputError, "FastV layer"),
    ("fastv-bad-mode", lambda c: FastV(2, 0.5, mode="prune"), InvalidInputError, "'prune'"),
    ("fastv-bad-rank-by", lambda c: FastV(2, 0.5, rank_by="rows"), InvalidInputError, "'rows'"),
    ("himap-k2-before-k1", lambda c: HiMAP(3, 0.5, 2, 0.5), InvalidInputError, "k1 < k2"),
    ("himap-negative-ratio", lambda c: HiMAP(1, 0.5, 2, -0.1), InvalidInputError, "HiMAP r2"),
    ("heads-empty", lambda c: knockout(c.inputs.groups, "image", "last", [0], heads=[]), InvalidInputError, "heads=[]"),
    ("heads-repeated", lambda c: knockout(c.inputs.groups, "image", "last", [0], heads=[1, 1]), InvalidInputError, "repeats"),
    ("heads-out-of-range", lambda c: _run(c, knockout(c.inputs.groups, "image", "last", [0], heads=[7])),
     InvalidInputError, "4 heads"),
    ("window-zero", lambda c: window(1, 0, 3), InvalidInputError, "k >= 1"),
    ("window-negative", lambda c: window(1, -2, 3), InvalidInputError, "k=-2"),
    ("sweep-window-zero", lambda c: knockout_sweep(c.model, c.inputs, ["image->last"], window_size=0), InvalidInputError, "k=0"),
    ("sweep-no-layers", lambda c: knockout_sweep(c.model, c.inputs, ["image->last"], layers=[]), InvalidInputError,
     "at least one layer"),
    ("knockout-no-layers", lambda c: knockout(c.inputs.groups, "image", "last", []), InvalidInputError, "layers is empty"),
    ("knockout-layer-out-of-range", lambda c: knockout(c.inputs.groups, "image", "last", [5], n_layers=3),
     LayerOutOfRangeError, "layer 5"),
    ("prompt-past-context", lambda c: c.model(torch.ones(1, 2049, dtype=torch.long)), ContextLengthError, "n_ctx=2048"),
    ("two-boxes-for-one-row", lambda c: c.inputs.patches_in_box([(0, 0, 5, 5), (0, 0, 6, 6)]), InvalidInputError, "2 boxes"),
    ("box-not-four-numbers", lambda c: c.inputs.patches_in_box([(0, 0, 5)]), InvalidInputError, "four numbers"),
    ("box-outside-image", lambda c: c.inputs.patches_in_box((0, 0, 10**5, 5)), BoxOutsideImageError, "inside the"),
    # --- hooks and caches ---
    ("hook-returns-wrong-shape", lambda c: _run(c, [("blocks.0.hook_resid_post", lambda x, hook: x[:, :-1])]),
     HookReturnError, "'blocks.0.hook_resid_post'"),
    ("hook-returns-non-tensor", lambda c: _run(c, [("blocks.1.attn.hook_pattern", lambda x, hook: "oops")]),
     HookReturnError, "returned a str"),
    ("unknown-hook-name", lambda c: _run(c, [("blocks.0.hook_resid_pots", lambda x, hook: None)]), UnknownHookError,
     "blocks.0.hook_resid_post"),
    ("cache-key-typo", lambda c: _cache(c)["blocks.0.attn.hook_patern"], UnknownCacheKeyError, "blocks.0.attn.hook_pattern"),
    ("cache-tuple-key-not-cached", lambda c: _cache(c)["resid_post", 0], UnknownCacheKeyError, "names_filter"),
    # --- model inputs ---
    ("input-ids-float", lambda c: c.model(c.inputs.input_ids.float()), InvalidInputError, "integer"),
    ("input-ids-rank-1", lambda c: c.model(c.inputs.input_ids[0]), InvalidInputError, "rank 2"),
    ("input-ids-outside-vocab", lambda c: c.model(c.inputs.input_ids + 1000), InvalidInputError, "outside the vocabulary"),
    ("input-ids-negative", lambda c: c.model(c.inputs.input_ids - 1000), InvalidInputError, "outside the vocabulary"),
    ("input-ids-empty", lambda c: c.model(c.inputs.input_ids[:, :0]), InvalidInputError, "empty"),
    ("pixel-values-without-ids", lambda c: c.model(pixel_values=c.inputs.pixel_values), InvalidInputError,
     "pixel_values were given without input_ids"),
    ("pixel-values-uint8", lambda c: c.model(input_ids=c.inputs.input_ids, pixel_values=c.inputs.pixel_values.to(torch.uint8)),
     InvalidInputError, "normalised floats"),
    ("pixel-values-rank-3", lambda c: c.model(input_ids=c.inputs.input_ids, pixel_values=c.inputs.pixel_values[0]),
     InvalidInputError, "pixel_values must be"),
    ("attention-mask-shape", lambda c: c.model(input_ids=c.inputs.input_ids, pixel_values=c.inputs.pixel_values,
                                               attention_mask=c.inputs.attention_mask[:, 1:]), InvalidInputError, "attention_mask"),
    ("image-an-int", lambda c: c.model.prepare(42, "Is it red?"), InvalidInputError, "int"),
    ("image-array-5-channels", lambda c: c.model.prepare(np.zeros((8, 8, 5), np.uint8), "Is it red?"), InvalidInputError,
     "(8, 8, 5)"),
    ("image-float-array-out-of-range", lambda c: c.model.prepare(np.full((8, 8, 3), 7.0), "Is it red?"), InvalidInputError, "[0, 1]"),
    ("image-missing-file", lambda c: c.model.prepare(Path(c.path) / "nope.png", "Is it red?"), InvalidInputError, "nope.png"),
    ("image-array-rank-5", lambda c: c.model.prepare(np.zeros((1, 1, 8, 8, 3), np.uint8), "Is it red?"), InvalidInputError,
     "[H, W, 3]"),
    ("with-groups-wrong-batch", lambda c: c.inputs.groups.with_groups(box=c.inputs.groups["image"].repeat(2, 1)),
     ForeignGroupError, "box"),
    ("images-and-prompts-differ", lambda c: c.model.prepare([c.image, c.image], "Is it red?"), MMLensError, "2 images for 1"),
]
