"""Train the shipped shapes-llava model: ``python -m mmlens.zoo.train_shapes --out DIR``.

Recipe, and why (earlier trials plateaued at the base rate of each question type because the
decoder never learned to look up the patches of the object a question names):

* **Shared-prefix packing.** One sequence holds the system prompt and the 64 image tokens once,
  followed by several question/answer turns about that image. A block mask lets every turn see
  the prefix and itself only, and its position ids restart where the prefix ends, so each turn is
  exactly a single-turn LLaVA-1.5 sample (no answer can leak from one turn into another), while
  the image and prompt are encoded once for many supervised answers.
* **A dense "describe" turn** (LLaVA stage-1 spirit): ``What shape and colour are in the
  image?`` answered ``circle red square blue`` with objects ordered left to right. Predicting
  the colour right after a shape word is a one-hop lookup from a shape token to that object's
  patches, the very lookup every question type needs; predicting the next shape teaches order.
* AdamW with warm-up and cosine decay; the loss covers answer tokens and ``</s>`` only.

Every random draw is seeded: the weights from ``--seed``, and training scenes from the
``shapes_dataset``-style seeds ``(TRAIN_SPLIT + seed) * SEED_STRIDE + i`` (image ``i``), so
splits ``0..9`` stay held out. The defaults reproduce the shipped checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from tqdm.auto import trange
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import LlavaProcessor

from mmlens.data.shapes import (
    _ASKERS,  # the question builders, asked here several times about one scene
    QUESTION_TYPES,
    COLOUR_RGB,
    NO,
    SEED_STRIDE,
    SHAPE_NAMES,
    SYSTEM_PROMPT,
    ShapesConfig,
    ShapeObject,
    _Scene,
    draw_scene,
    shapes_dataset,
)
from mmlens.zoo.shapes_model import (
    MONITOR_SPLIT,
    TRAIN_SPLIT,
    ShapesArch,
    accuracy_by_type,
    shapes_llava_config,
    shapes_processor,
)
from mmlens.zoo.tokenizer import IMAGE

logger = logging.getLogger(__name__)

VISION_SPLIT = TRAIN_SPLIT + 50
"""Scenes of the vision stage come from split ``VISION_SPLIT + seed``, those of the QA stage from ``TRAIN_SPLIT + seed``."""

DESCRIBE = "What shape and colour are in the image?"
"""The auxiliary dense question; its answer names every object left to right."""
COLOURS_QUESTION = "What colour is which shape?"
"""Auxiliary question answered by :func:`colours_answer`."""
SHAPES_QUESTION = "Which shape is what colour?"
"""Auxiliary question answered by :func:`shapes_answer`."""


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs; the architecture is ``arch``.

    Attributes:
        arch: Model sizes.
        scenes: How training scenes are drawn.
        steps: Optimiser steps.
        minutes: Stop early after this many minutes of training (None: run all steps).
        images_per_step: Images (packed sequences) per step.
        turns_per_image: Question/answer turns packed after each image.
        describe_rate: Chance that a turn is an auxiliary turn instead of a question.
        aux_kinds: Auxiliary turn kinds drawn from (1: describe only; 3: also colour per shape
            and shapes per colour), see :func:`aux_turn`.
        lr: Peak learning rate.
        final_lr_ratio: Learning rate at the last step, as a fraction of ``lr``.
        warmup: Linear warm-up steps.
        weight_decay: AdamW weight decay on matrices.
        betas: AdamW betas.
        grad_clip: Gradient norm clip.
        seed: Seed of the weights and of the training scenes.
        threads: Torch CPU threads.
        eval_every: Steps between held-out checks (0: none).
        eval_per_type: Held-out samples per type for those checks.
        patch_aux_weight: Weight of an auxiliary per-patch loss on the vision features (the
            projector's input): linear heads name the shape and colour of the object covering
            each patch. The heads are dropped after training; 0 disables them.
        vision_steps: Steps of a first stage that trains only the vision tower and those heads.
        vision_images_per_step: Images per step of that stage.
        vision_lr: Peak learning rate of that stage.
    """

    arch: ShapesArch = field(default_factory=ShapesArch)
    scenes: ShapesConfig = field(default_factory=ShapesConfig)
    steps: int = 3000
    minutes: float | None = None
    images_per_step: int = 16
    turns_per_image: int = 8
    describe_rate: float = 0.15
    aux_kinds: int = 1
    lr: float = 2e-3
    final_lr_ratio: float = 0.05
    warmup: int = 200
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2
    eval_every: int = 250
    eval_per_type: int = 40
    patch_aux_weight: float = 0.0
    vision_steps: int = 0
    vision_images_per_step: int = 64
    vision_lr: float = 3e-3


SMALL = TrainConfig(
    arch=ShapesArch(d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_mlp=64, vision_d_model=32,
                    vision_layers=2, vision_heads=2, vision_d_mlp=64),
    steps=5, images_per_step=2, turns_per_image=3, warmup=1, eval_every=0, eval_per_type=2,
)  # fmt: skip
"""A seconds-long smoke-test configuration."""


def describe_answer(objects: Sequence[ShapeObject]) -> str:
    """``"circle red square blue"``: every object's shape and colour, left to right."""
    ordered = sorted(objects, key=lambda o: o.centre_x)
    return " ".join(f"{o.shape} {o.colour}" for o in ordered)


def colours_answer(objects: Sequence[ShapeObject], cfg: ShapesConfig) -> str:
    """``"circle Red square No triangle Blue star No"``: each shape of ``cfg``, then its colour or No."""
    colour = {o.shape: o.colour.capitalize() for o in objects}
    return " ".join(f"{s} {colour.get(s, NO)}" for s in cfg.shapes)


def shapes_answer(objects: Sequence[ShapeObject], cfg: ShapesConfig) -> str:
    """``"red Circle Star green No ..."``: each colour of ``cfg``, then its shapes left to right or No."""
    ordered = sorted(objects, key=lambda o: o.centre_x)
    parts = []
    for c in cfg.colours:
        shapes = [o.shape.capitalize() for o in ordered if o.colour == c]
        parts.append(" ".join([c, *shapes]) if shapes else f"{c} {NO}")
    return " ".join(parts)


def aux_turn(kind: int, objects: Sequence[ShapeObject], cfg: ShapesConfig) -> tuple[str, str]:
    """Auxiliary turn ``kind`` (0: describe, 1: colour per shape, 2: shapes per colour)."""
    if kind == 0:
        return DESCRIBE, describe_answer(objects)
    if kind == 1:
        return COLOURS_QUESTION, colours_answer(objects, cfg)
    return SHAPES_QUESTION, shapes_answer(objects, cfg)


def draw_turns(
    rng: np.random.Generator, objects: list[ShapeObject], config: TrainConfig
) -> list[tuple[str, str]]:
    """``config.turns_per_image`` (question, answer) pairs about one scene, types drawn uniformly."""
    turns: list[tuple[str, str]] = []
    while len(turns) < config.turns_per_image:
        if rng.random() < config.describe_rate:
            turns.append(aux_turn(int(rng.integers(config.aux_kinds)), objects, config.scenes))
            continue
        qtype = QUESTION_TYPES[int(rng.integers(len(QUESTION_TYPES)))]
        question = _ASKERS[qtype](_Scene(rng, objects, config.scenes, bool(rng.random() < 0.5)))
        if question is not None:  # the scene cannot carry this type: draw another
            turns.append((question.text, question.answer))
    return turns


def patch_labels(objects: Sequence[ShapeObject], image: Image.Image, patch_size: int) -> np.ndarray:
    """Per patch, ``(shape, colour)`` class of the object covering most of it (0: background).

    Classes are ``1 + index`` into ``SHAPE_NAMES`` / ``COLOUR_RGB``; a patch needs at least an
    eighth of its pixels on one object to take that object's classes.

    Returns:
        Integer array of shape ``(grid * grid, 2)``, patches in raster order.
    """
    pixels = np.asarray(image)
    owner = np.zeros(pixels.shape[:2], dtype=np.int64)  # 0: background, k: objects[k - 1]
    drawn = pixels.any(axis=-1)
    for k, obj in enumerate(objects, start=1):
        x0, y0, x1, y1 = obj.box
        owner[y0:y1, x0:x1] = np.where(drawn[y0:y1, x0:x1], k, owner[y0:y1, x0:x1])
    grid = owner.shape[0] // patch_size
    blocks = owner.reshape(grid, patch_size, grid, patch_size).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    counts = np.stack([(blocks == k).sum(axis=1) for k in range(len(objects) + 1)], axis=1)
    counts[:, 0] = patch_size * patch_size // 8  # background wins below an eighth of a patch
    best = counts.argmax(axis=1)
    table = np.array([(0, 0)] + [(SHAPE_NAMES.index(o.shape) + 1, list(COLOUR_RGB).index(o.colour) + 1)
                                 for o in objects])  # fmt: skip
    return table[best]


def pack(
    processor: LlavaProcessor,
    prefix_ids: list[int],
    turns_per_sequence: Sequence[Sequence[tuple[str, str]]],
) -> dict[str, torch.Tensor]:
    """Token ids, block mask, position ids and labels of shared-prefix packed sequences.

    Args:
        processor: The model's processor.
        prefix_ids: ``<s>``, system prompt, ``USER :`` and the expanded image tokens.
        turns_per_sequence: Per sequence, its (question, answer) turns.

    Returns:
        ``input_ids``, ``position_ids`` and ``labels`` of shape ``(batch, pos)`` (right-padded,
        labels ``-100`` except on answer tokens and ``</s>``) and an additive float
        ``attention_mask`` of shape ``(batch, 1, pos, pos)``.
    """
    tok = processor.tokenizer
    rows = []
    for turns in turns_per_sequence:
        ids, pos, seg, lab = list(prefix_ids), list(range(len(prefix_ids))), [0] * len(prefix_ids), [-100] * len(prefix_ids)
        for j, (question, answer) in enumerate(turns, start=1):
            q = tok(f" {question} ASSISTANT:", add_special_tokens=False)["input_ids"]
            a = tok(f" {answer}{tok.eos_token}", add_special_tokens=False)["input_ids"]
            ids += q + a
            pos += range(len(prefix_ids), len(prefix_ids) + len(q) + len(a))
            seg += [j] * (len(q) + len(a))
            lab += [-100] * len(q) + a
        rows.append((ids, pos, seg, lab))
    length = max(len(r[0]) for r in rows)

    def padded(k: int, value: int) -> torch.Tensor:
        return torch.tensor([r[k] + [value] * (length - len(r[k])) for r in rows])

    seg = padded(2, -1)  # 0: shared prefix, j: turn j, -1: padding
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    visible = causal & ((seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None]))
    mask = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
    return {
        "input_ids": padded(0, tok.pad_token_id),
        "position_ids": padded(1, 0),
        "labels": padded(3, -100),
        "attention_mask": mask[:, None],
    }


def prefix_ids(processor: LlavaProcessor, n_patches: int) -> list[int]:
    """Ids of ``<s> {SYSTEM_PROMPT} USER :`` followed by ``n_patches`` image tokens."""
    tok = processor.tokenizer
    return tok(f"{SYSTEM_PROMPT} USER:")["input_ids"] + [tok.convert_tokens_to_ids(IMAGE)] * n_patches


def make_batch(
    processor: LlavaProcessor, config: TrainConfig, step: int, prefix: list[int]
) -> dict[str, torch.Tensor]:
    """The packed batch of ``step``: images ``step * images_per_step + b`` of the training split."""
    images, turns, patches = [], [], []
    for b in range(config.images_per_step):
        index = step * config.images_per_step + b
        if index >= SEED_STRIDE:
            raise ValueError(f"training split exhausted after {SEED_STRIDE} images")
        rng = np.random.default_rng((TRAIN_SPLIT + config.seed) * SEED_STRIDE + index)
        image, objects = draw_scene(rng, config.scenes)
        images.append(image)
        turns.append(draw_turns(rng, objects, config))
        patches.append(patch_labels(objects, image, config.arch.patch_size))
    batch = pack(processor, prefix, turns)
    batch["pixel_values"] = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    batch["patch_labels"] = torch.from_numpy(np.stack(patches))
    return batch


def _lr_factor(step: int, config: TrainConfig, steps: int | None = None) -> float:
    if step < config.warmup:
        return (step + 1) / config.warmup
    steps = config.steps if steps is None else steps
    progress = (step - config.warmup) / max(1, steps - config.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.final_lr_ratio + (1 - config.final_lr_ratio) * cosine


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def pretrain_vision(
    model: transformers.LlavaForConditionalGeneration,
    heads: torch.nn.Linear,
    processor: LlavaProcessor,
    config: TrainConfig,
    progress: bool,
) -> float:
    """Stage 1: train the vision tower alone to name each patch's shape and colour; returns the last loss."""
    vision = model.model.vision_tower
    params = [*vision.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.vision_lr, betas=config.betas, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config, config.vision_steps))
    layer, n = model.config.vision_feature_layer, config.vision_images_per_step
    loss = torch.tensor(float("nan"))
    for step in trange(config.vision_steps, disable=not progress, desc="stage 1: vision"):
        images, targets = [], []
        for b in range(n):
            rng = np.random.default_rng((VISION_SPLIT + config.seed) * SEED_STRIDE + step * n + b)
            image, objects = draw_scene(rng, config.scenes)
            images.append(image)
            targets.append(patch_labels(objects, image, config.arch.patch_size))
        pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        hidden = vision(pixel_values, output_hidden_states=True).hidden_states[layer][:, 1:]
        logits = heads(hidden).unflatten(-1, (2, 8))
        loss = F.cross_entropy(logits.flatten(0, 2), torch.from_numpy(np.stack(targets)).flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
    return loss.item()


def train(
    config: TrainConfig = TrainConfig(), *, progress: bool = True, history: list[dict] | None = None
) -> tuple[transformers.LlavaForConditionalGeneration, LlavaProcessor]:
    """Build and train shapes-llava under ``config``.

    Args:
        config: Training configuration; the default reproduces the shipped checkpoint.
        progress: Show a tqdm progress bar.
        history: When given, one record per held-out check and a final summary are appended.

    Returns:
        The trained model (in eval mode) and its processor.
    """
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    processor = shapes_processor(config.arch)
    model = transformers.LlavaForConditionalGeneration(shapes_llava_config(config.arch, processor))
    model.train()
    heads = torch.nn.Linear(config.arch.vision_d_model, 2 * 8)  # shape and colour logits
    features: list[torch.Tensor] = []
    if config.patch_aux_weight > 0:
        model.model.multi_modal_projector.register_forward_pre_hook(lambda _, args: features.append(args[0]))
    if config.vision_steps:
        vision_loss = pretrain_vision(model, heads, processor, config, progress)
        logger.info("stage 1 (vision) done: patch loss %.4f", vision_loss)
    optimizer = _optimizer(torch.nn.ModuleList([model, heads]), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    monitor = shapes_dataset(config.eval_per_type * len(QUESTION_TYPES), MONITOR_SPLIT, QUESTION_TYPES)
    prefix = prefix_ids(processor, config.arch.n_patches)
    history = [] if history is None else history
    start, step = time.perf_counter(), 0
    bar = trange(config.steps, disable=not progress, desc="train shapes-llava")
    for step in bar:
        batch = make_batch(processor, config, step, prefix)
        labels, patch_targets = batch.pop("labels"), batch.pop("patch_labels")
        features.clear()
        logits = model(**batch).logits[:, :-1]
        loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        if features:
            aux = heads(features.pop()).unflatten(-1, (2, 8))  # (batch, patch, 2, 8)
            loss = loss + config.patch_aux_weight * F.cross_entropy(aux.flatten(0, 2), patch_targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        minutes = (time.perf_counter() - start) / 60
        if config.eval_every and ((step + 1) % config.eval_every == 0 or step + 1 == config.steps):
            acc = accuracy_by_type(model, processor, monitor)
            history.append({"step": step + 1, "minutes": round(minutes, 2), "loss": loss.item(), **acc})
            logger.info("step %d (%.1f min) loss %.4f | %s", step + 1, minutes, loss.item(),
                        " ".join(f"{k} {v:.2f}" for k, v in acc.items()))  # fmt: skip
            model.train()
        if config.minutes is not None and minutes >= config.minutes:
            break
    history.append({"summary": True, "steps_done": step + 1, "minutes": (time.perf_counter() - start) / 60})
    return model.eval(), processor


def save(
    model: transformers.LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    out: str | Path,
    config: TrainConfig,
    history: list[dict],
) -> Path:
    """Write model, processor and ``training_log.json`` (config and held-out checks) to ``out``."""
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    record = {"config": asdict(config), "history": history, "torch": torch.__version__,
              "transformers": transformers.__version__}  # fmt: skip
    (out / "training_log.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m mmlens.zoo.train_shapes --out DIR [--steps N] [--small]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory (Hugging Face format)")
    parser.add_argument("--steps", type=int, help="optimiser steps")
    parser.add_argument("--minutes", type=float, help="stop after this many minutes")
    parser.add_argument("--seed", type=int, help="seed of weights and training scenes")
    parser.add_argument("--threads", type=int, help="torch CPU threads (numerics may differ slightly)")
    parser.add_argument("--small", action="store_true", help="tiny smoke-test configuration")
    args = parser.parse_args(argv)
    config = SMALL if args.small else TrainConfig()
    overrides = {k: getattr(args, k) for k in ("steps", "minutes", "seed", "threads") if getattr(args, k) is not None}
    config = replace(config, **overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    history: list[dict] = []
    with logging_redirect_tqdm():
        model, processor = train(config, history=history)
    save(model, processor, args.out, config, history)
    logger.info("saved to %s", args.out)


if __name__ == "__main__":
    main()
