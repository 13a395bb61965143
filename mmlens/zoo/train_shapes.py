"""Train the shipped shapes-llava model: ``python -m mmlens.zoo.train_shapes --out DIR``.

Earlier trials stayed at the base rate of most question types: the decoder never learned to
look up the patches of the object a question names. The recipe attacks that lookup directly:

1. **Vision stage.** The CLIP tower alone learns to name, at every patch of its feature layer
   (the projector's input), the shape, colour and column of the object there (linear heads, a
   thermometer code for the column so that left/right is an ordered direction). Shape is the
   slow part to learn from scratch; doing it first, on many cheap images, removes a moving target.
2. **VQA stage**, everything trained end to end, the patch heads kept as an auxiliary loss:
   * shared-prefix packing (:func:`mmlens.zoo.shapes_model.pack`): the system prompt and the 64
     image tokens once, then several turns that each see only that prefix and themselves, with
     the position ids of a single-turn prompt, so every turn is exactly an evaluation-format
     sample and one image forward pass serves many supervised answers;
   * auxiliary turns (``AUX_KINDS``) in which the word after a shape or colour word is a
     one-hop lookup of that object (its colour, its image half, its side of a reference object);
   * question types drawn half uniformly, half in proportion to their held-out error.
   AdamW with warm-up and cosine decay; the loss covers answer tokens and ``</s>`` only.

Seeds: the weights come from ``--seed``; vision-stage images from the ``shapes_dataset``-style
seeds ``(VISION_SPLIT + seed) * SEED_STRIDE + i`` and VQA images from ``(TRAIN_SPLIT + seed) *
SEED_STRIDE + i``, so the held-out splits ``0..9`` are never drawn. The defaults reproduce the
shipped checkpoint (bit for bit on the same CPU type and thread count).
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
from tqdm.auto import trange
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import LlavaProcessor

from mmlens.data.shapes import QUESTION_TYPES, SEED_STRIDE, ShapesConfig, draw_scene, shapes_dataset
from mmlens.zoo.shapes_model import (
    AUX_KINDS,
    MONITOR_SPLIT,
    TRAIN_SPLIT,
    ShapesArch,
    accuracy_by_type,
    draw_turns,
    pack,
    patch_labels,
    prefix_ids,
    shapes_llava_config,
    shapes_processor,
)

logger = logging.getLogger(__name__)

VISION_SPLIT = TRAIN_SPLIT + 50
"""First split seed of vision-stage images (``VISION_SPLIT + seed``)."""

PATCH_TARGETS, PATCH_CLASSES = 3, 16
"""Per-patch auxiliary targets (shape, colour, object column) and the classes of each head."""


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs; the architecture is ``arch``. The defaults made the shipped checkpoint.

    Attributes:
        arch: Model sizes.
        scenes: How training scenes are drawn.
        steps: Optimiser steps of the VQA stage.
        minutes: Stop the VQA stage after this many minutes (None: run all steps).
        images_per_step: Images (packed sequences) per VQA step.
        turns_per_image: Turns packed after each image.
        aux_rate: Chance that a turn is auxiliary rather than a question.
        aux_kinds: How many of ``AUX_KINDS`` auxiliary turns are drawn from (the first six by
            default; 7 adds the two-shape colour lookup).
        balance_yes_no: Steer yes/no questions to equal Yes and No answers (see :func:`draw_turns`).
        adaptive_types: After each held-out check, draw question types half uniformly and half
            in proportion to their held-out error.
        lr: Peak learning rate of the VQA stage.
        final_lr_ratio: Learning rate at the last step, as a fraction of the peak.
        warmup: Linear warm-up steps (both stages).
        weight_decay: AdamW weight decay (matrices only in the VQA stage).
        betas: AdamW betas.
        grad_clip: Gradient norm clip.
        patch_aux_weight: Weight of the per-patch loss during the VQA stage (0: off).
        vision_steps: Steps of the vision stage (0: skip it).
        vision_images_per_step: Images per vision step.
        vision_lr: Peak learning rate of the vision stage.
        seed: Seed of the weights and of the training scenes.
        threads: Torch CPU threads. One keeps a run unaffected by a busy second core.
        eval_every: VQA steps between held-out checks (0: none; the adaptive mix then stays uniform).
        eval_per_type: Held-out samples per type for those checks (split ``MONITOR_SPLIT``).
        init: Continue from this saved checkpoint (model and processor) instead of fresh weights;
            use another ``seed`` so that its scenes are new, and ``vision_steps=0``.
        sentence_rate: Chance that a question turn is asked in its sentence form (the question
            plus ``PHRASE_SUFFIX``, answered ``"The circle is red ."``), so that the lower-case
            answer words are produced mid-sentence; the plain questions keep their capitalised
            one-word answers (see :func:`mmlens.zoo.shapes_model.sentence_answer`). 0: off.
        checkpoint_every: VQA steps between intermediate checkpoints written to
            ``OUT/step-N`` by the command line (0: only the final one).
    """

    arch: ShapesArch = field(default_factory=ShapesArch)
    scenes: ShapesConfig = field(default_factory=ShapesConfig)
    steps: int = 3000
    minutes: float | None = None
    images_per_step: int = 16
    turns_per_image: int = 8
    aux_rate: float = 0.4
    aux_kinds: int = 6
    balance_yes_no: bool = False
    adaptive_types: bool = True
    lr: float = 2e-3
    final_lr_ratio: float = 0.05
    warmup: int = 200
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    patch_aux_weight: float = 1.0
    vision_steps: int = 1000
    vision_images_per_step: int = 64
    vision_lr: float = 3e-3
    seed: int = 0
    threads: int = 1
    eval_every: int = 250
    eval_per_type: int = 40
    init: str | None = None
    sentence_rate: float = 0.0
    checkpoint_every: int = 0


SMALL = TrainConfig(
    arch=ShapesArch(d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_mlp=64, vision_d_model=32,
                    vision_layers=2, vision_heads=2, vision_d_mlp=64),
    steps=5, images_per_step=2, turns_per_image=3, warmup=1, vision_steps=2,
    vision_images_per_step=4, eval_every=0, eval_per_type=2,
)  # fmt: skip
"""A seconds-long smoke-test configuration."""

DEEP = TrainConfig(
    arch=ShapesArch(d_model=192, n_layers=8, n_heads=6, n_kv_heads=2, d_mlp=576),
    turns_per_image=10, aux_rate=0.3, sentence_rate=0.35, checkpoint_every=500,
)  # fmt: skip
"""shapes-llava-deep: 8 decoder layers, narrower (fits 25 MB), with sentence-form turns."""


class PatchHeads(torch.nn.Module):
    """Linear heads on the vision features naming each patch's object; a training loss only.

    Besides a class per target, the object's column is read as a thermometer code (``column > k``
    for every ``k``) so that horizontal position becomes an ordered direction in the features.
    """

    def __init__(self, d_model: int, grid: int) -> None:
        super().__init__()
        self.classes = torch.nn.Linear(d_model, PATCH_TARGETS * PATCH_CLASSES)
        self.order = torch.nn.Linear(d_model, grid - 1)

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of ``features`` ``(batch, patch, d)`` against ``patch_labels`` ``(batch, patch, 3)``."""
        logits = self.classes(features).unflatten(-1, (PATCH_TARGETS, PATCH_CLASSES))
        loss = F.cross_entropy(logits.flatten(0, 2), targets.flatten())
        column, on_object = targets[..., 2] - 1, targets[..., 2] > 0
        above = (column[..., None] >= torch.arange(1, self.order.out_features + 1)).float()
        order = F.binary_cross_entropy_with_logits(self.order(features), above, reduction="none")
        return loss + (order.mean(-1) * on_object).sum() / on_object.sum().clamp(min=1)


def make_batch(
    processor: LlavaProcessor,
    config: TrainConfig,
    step: int,
    prefix: list[int],
    type_weights: np.ndarray | None = None,
    balance: dict[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """The packed batch of VQA ``step``: images ``step * images_per_step + b`` of the training split.

    Returns:
        :func:`pack`'s tensors plus ``pixel_values`` and ``patch_labels`` ``(batch, patch, 3)``.
    """
    images, turns, patches = [], [], []
    for b in range(config.images_per_step):
        index = step * config.images_per_step + b
        if index >= SEED_STRIDE:
            raise ValueError(f"training split exhausted after {SEED_STRIDE} images")
        rng = np.random.default_rng((TRAIN_SPLIT + config.seed) * SEED_STRIDE + index)
        image, objects = draw_scene(rng, config.scenes)
        images.append(image)
        turns.append(draw_turns(rng, objects, config.scenes, config.turns_per_image, config.aux_rate,
                                config.aux_kinds, type_weights, balance, config.sentence_rate))  # fmt: skip
        patches.append(patch_labels(objects, image, config.arch.patch_size))
    batch = pack(processor, prefix, turns)
    batch["pixel_values"] = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    batch["patch_labels"] = torch.from_numpy(np.stack(patches))
    return batch


def _lr_factor(step: int, config: TrainConfig, steps: int) -> float:
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, steps - config.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.final_lr_ratio + (1 - config.final_lr_ratio) * cosine


def _type_weights(accuracy: dict[str, float]) -> np.ndarray:
    """Half uniform, half proportional to each type's held-out error."""
    error = np.array([1.0 - accuracy[t] for t in QUESTION_TYPES])
    uniform = np.full(len(QUESTION_TYPES), 1.0 / len(QUESTION_TYPES))
    return uniform if error.sum() == 0 else 0.5 * uniform + 0.5 * error / error.sum()


def pretrain_vision(
    model: transformers.LlavaForConditionalGeneration,
    heads: PatchHeads,
    processor: LlavaProcessor,
    config: TrainConfig,
    progress: bool = False,
) -> float:
    """Stage 1: train the vision tower alone against ``heads``; returns the last loss."""
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
        hidden = vision(pixel_values, output_hidden_states=True).hidden_states[layer][:, 1:]  # CLS dropped
        loss = heads(hidden, torch.from_numpy(np.stack(targets)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
    return loss.item()


def _vqa_optimizer(modules: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in modules.parameters() if p.ndim >= 2]
    rest = [p for p in modules.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def train(
    config: TrainConfig = TrainConfig(),
    *,
    progress: bool = True,
    history: list[dict] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> tuple[transformers.LlavaForConditionalGeneration, LlavaProcessor]:
    """Build and train shapes-llava under ``config``.

    Args:
        config: Training configuration; the default reproduces the shipped checkpoint.
        progress: Show tqdm progress bars.
        history: When given, one record per held-out check and a final summary are appended.
        checkpoint_dir: Where ``config.checkpoint_every`` writes ``step-N`` checkpoints.

    Returns:
        The trained model (in eval mode) and its processor.
    """
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    history = [] if history is None else history
    if config.init is None:
        processor = shapes_processor(config.arch)
        model = transformers.LlavaForConditionalGeneration(shapes_llava_config(config.arch, processor)).train()
    else:
        processor = LlavaProcessor.from_pretrained(config.init)
        model = transformers.LlavaForConditionalGeneration.from_pretrained(config.init).train()
    heads = PatchHeads(config.arch.vision_d_model, config.arch.image_size // config.arch.patch_size)
    start = time.perf_counter()
    if config.vision_steps:
        vision_loss = pretrain_vision(model, heads, processor, config, progress)
        history.append({"stage": "vision", "patch_loss": vision_loss, "minutes": (time.perf_counter() - start) / 60})
        logger.info("stage 1 (vision) done: patch loss %.4f", vision_loss)
    features: list[torch.Tensor] = []  # the projector's input, caught for the patch loss
    hook = model.model.multi_modal_projector.register_forward_pre_hook(lambda _, args: features.append(args[0]))
    optimizer = _vqa_optimizer(torch.nn.ModuleList([model, heads]), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config, config.steps))
    monitor = shapes_dataset(config.eval_per_type * len(QUESTION_TYPES), MONITOR_SPLIT, QUESTION_TYPES)
    prefix = prefix_ids(processor, config.arch.n_patches)
    step, type_weights = 0, None
    balance: dict[str, int] | None = {} if config.balance_yes_no else None
    bar = trange(config.steps, disable=not progress, desc="stage 2: VQA")
    for step in bar:
        batch = make_batch(processor, config, step, prefix, type_weights, balance)
        labels, patch_targets = batch.pop("labels"), batch.pop("patch_labels")
        features.clear()
        logits = model(**batch).logits[:, :-1]
        loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        if config.patch_aux_weight > 0:
            loss = loss + config.patch_aux_weight * heads(features.pop(), patch_targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        minutes = (time.perf_counter() - start) / 60
        if config.eval_every and ((step + 1) % config.eval_every == 0 or step + 1 == config.steps):
            acc = accuracy_by_type(model, processor, monitor)
            if config.adaptive_types:
                type_weights = _type_weights(acc)
            history.append({"step": step + 1, "minutes": round(minutes, 2), "loss": loss.item(), **acc})
            logger.info("step %d (%.1f min) loss %.4f | %s", step + 1, minutes, loss.item(),
                        " ".join(f"{k} {v:.2f}" for k, v in acc.items()))  # fmt: skip
            model.train()
        if checkpoint_dir is not None and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            save(model, processor, Path(checkpoint_dir) / f"step-{step + 1}", config, history)
        if config.minutes is not None and minutes >= config.minutes:
            break
    hook.remove()
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
    """Command line: ``python -m mmlens.zoo.train_shapes --out DIR [--steps N] [--small | --deep]``.

    ``--set FIELD=JSON`` overrides a ``TrainConfig`` field, ``--set arch.FIELD=JSON`` a
    ``ShapesArch`` one (e.g. ``--set arch.n_layers=8``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory (Hugging Face format)")
    parser.add_argument("--steps", type=int, help="VQA-stage optimiser steps")
    parser.add_argument("--minutes", type=float, help="stop the VQA stage after this many minutes")
    parser.add_argument("--seed", type=int, help="seed of weights and training scenes")
    parser.add_argument("--threads", type=int, help="torch CPU threads (the last bits of numerics may differ)")
    parser.add_argument("--small", action="store_true", help="tiny smoke-test configuration")
    parser.add_argument("--deep", action="store_true", help="the shapes-llava-deep configuration (DEEP)")
    parser.add_argument("--init", help="continue from this saved checkpoint (see TrainConfig.init)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help="override any TrainConfig field, e.g. --set aux_rate=0.3 (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("steps", "minutes", "seed", "threads", "init") if getattr(args, k) is not None}
    if args.small and args.deep:
        parser.error("--small and --deep are alternatives; give one")
    base = SMALL if args.small else DEEP if args.deep else TrainConfig()
    arch_overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name.startswith("arch.") and name[5:] in ShapesArch.__dataclass_fields__:
            arch_overrides[name[5:]] = json.loads(value)
        elif name in TrainConfig.__dataclass_fields__ and name not in ("arch", "scenes"):
            overrides[name] = json.loads(value)
        else:
            settable = sorted(set(TrainConfig.__dataclass_fields__) - {"arch", "scenes"})
            arch = ", ".join(ShapesArch.__dataclass_fields__)
            parser.error(f"--set {item!r}: unknown field; settable: {settable} and arch.<{arch}>")
    config = replace(base, arch=replace(base.arch, **arch_overrides), **overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    history: list[dict] = []
    with logging_redirect_tqdm():
        model, processor = train(config, history=history, checkpoint_dir=args.out)
    save(model, processor, args.out, config, history)
    logger.info("saved to %s", args.out)


if __name__ == "__main__":
    main()
