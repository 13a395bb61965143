"""Everything a study command checks before it loads a model: options, data, run folder.

A command line run should fail in its first second on a user error, not after minutes of model
loading or halfway through a dataset. :func:`prepare_command` validates every option it knows
(counts, layers against the checkpoint's depth read from ``config.json``, templates, question
types, pruning policies), reads the whole dataset (images decoded, boxes checked, ids unique;
``lenient`` skips bad records and lists them in ``<out>/skipped.csv``), refuses an empty one,
and compares the run folder's manifest with this run's, all before any weights are read.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mmlens.data.sample import Sample
from mmlens.errors import MMLensError
from mmlens.studies.run import atomic_write, check_folder, checkpoint_fingerprint
from mmlens.studies.shard import Shard

NOT_OPTIONS = ("func", "out", "force", "model", "data", "command")
"""Namespace attributes that are not recorded under ``options`` in the manifest (the rest all are)."""


@dataclass(frozen=True)
class Prepared:
    """A validated command: its samples, what its run folder records, the checkpoint to load.

    Attributes:
        samples: The dataset's samples (unique ids, never empty).
        skipped: Messages of the records ``--lenient`` skipped.
        manifest: The run manifest (model with fingerprint, data, every option).
        model_path: The checkpoint folder.
        n_layers: Decoder depth from ``config.json`` (None when not found there).
        policy: The pruning policy of ``--policy`` (bare names scaled to the depth), or None.
        policy_label: The policy as a full spec (``"himap:1,0.5,2,0.75"``), or None.
    """

    samples: list[Sample]
    skipped: list[str]
    manifest: dict[str, Any]
    model_path: Path
    n_layers: int | None
    policy: Any = None
    policy_label: str | None = None


def model_path(name: str) -> Path:
    """The checkpoint folder of a registered name (``tiny-random`` is built) or a path.

    Raises:
        MMLensError: Neither a registered name nor a folder holding ``config.json``.
    """
    from mmlens.zoo.registry import MODELS, TINY_RANDOM, resolve_model_name

    if name not in MODELS and name != TINY_RANDOM and not (Path(name).expanduser() / "config.json").is_file():
        raise MMLensError(f"--model {name!r} is neither a registered model {sorted([*MODELS, TINY_RANDOM])} nor a folder "
                          "holding config.json: give a Hugging Face checkpoint folder.")  # fmt: skip
    return Path(resolve_model_name(name)) if name in MODELS or name == TINY_RANDOM else Path(name).expanduser()


def model_depths(path: Path) -> tuple[int | None, int | None]:
    """``(decoder layers, vision layers)`` from a checkpoint's ``config.json`` (None when absent).

    Raises:
        MMLensError: ``config.json`` is not valid JSON.
    """
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MMLensError(f"{path / 'config.json'} cannot be read ({err}): the checkpoint is corrupt.") from err
    text = cfg.get("text_config") or cfg.get("llm_config") or cfg
    vision = cfg.get("vision_config") or {}
    return text.get("num_hidden_layers"), vision.get("num_hidden_layers")


def scaled_policy(spec: str, n_layers: int | None) -> tuple[str, Any]:
    """Parse ``--policy``; a bare ``fastv`` or ``himap`` takes the paper's LLaVA-1.5-7B layers
    (FastV K=2; HiMAP K1=2, K2=8 of 32) scaled to the model's depth.

    Returns:
        The policy as a full spec, and the policy.

    Raises:
        MMLensError: An unknown or malformed policy, or layers the model does not have.
    """
    from mmlens.pruning.spec import parse_policy

    if n_layers and spec in ("fastv", "himap"):
        k1 = max(1, round(2 * n_layers / 32))
        spec = f"fastv:{k1},0.5" if spec == "fastv" else f"himap:{k1},0.5,{max(k1 + 1, round(8 * n_layers / 32))},0.75"
    policy = parse_policy(spec)
    if n_layers:
        try:
            policy.plan(n_layers)
        except MMLensError as err:
            raise MMLensError(f"--policy {spec}: {err}") from None
    return spec, policy


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise MMLensError(message)


def check_options(args: argparse.Namespace, n_layers: int | None, n_vision: int | None) -> None:
    """Validate the options a command has (by name), against the checkpoint's depths.

    Raises:
        MMLensError: Naming the option, its value and what is allowed.
    """
    from mmlens.data.shapes import QUESTION_TYPES, SEED_STRIDE
    from mmlens.inputs.templates import TEMPLATES

    get = vars(args).get
    _check(get("n") is None or get("n") >= 1, f"--n {get('n')}: give at least 1 sample.")
    _check(get("seed") is None or get("seed") >= 0, f"--seed {get('seed')}: the dataset seed must be >= 0.")
    if get("data") == "shapes":
        _check(get("n") is None or get("n") <= SEED_STRIDE, f"--n {get('n')}: the shapes world has at most {SEED_STRIDE} samples per seed.")
        bad = sorted(set(get("types") or ()) - set(QUESTION_TYPES))
        _check(not bad, f"--types {bad}: unknown question type(s) of the shapes world; valid: {list(QUESTION_TYPES)}.")
    _check(get("types") is None or len(get("types")) > 0, "--types needs at least one question type (or leave it out).")
    _check(get("template") in (None, "auto") or get("template") in TEMPLATES, f"--template {get('template')!r} is not registered; use 'auto' (the model family's own) or one of {sorted(TEMPLATES)}.")
    if get("window") is not None:
        top = f" and <= {n_layers}, the model's depth" if n_layers else ""
        _check(get("window") >= 1 and (not n_layers or get("window") <= n_layers), f"--window {get('window')}: the knockout window must be >= 1{top}.")
    if get("layers") is not None:
        depth, tower = (n_vision, "vision tower") if get("tower") == "vision" else (n_layers, "decoder")
        _check(len(get("layers")) > 0, "--layers needs at least one layer (or leave it out for all).")
        bad = [layer for layer in get("layers") if depth and not -depth <= layer < depth]
        _check(not bad, f"--layers {bad}: out of range for the {tower}, which has {depth} layers (use 0..{(depth or 1) - 1}).")
    if get("smooth") is not None:
        try:
            count, sigma = int(get("smooth")[0]), float(get("smooth")[1])
        except ValueError:
            raise MMLensError(f"--smooth {' '.join(get('smooth'))}: give an integer N and a number SIGMA, e.g. 50 0.1.") from None
        _check(count >= 1 and sigma > 0, f"--smooth {count} {sigma}: N must be >= 1 and SIGMA > 0.")
    _check(get("figures") is None or get("figures") >= 0, f"--figures {get('figures')}: must be >= 0.")
    _check(get("repeats") is None or get("repeats") >= 1, f"--repeats {get('repeats')}: time at least 1 prefill.")
    out = Path(get("out")) if get("out") else None
    _check(out is None or not out.exists() or out.is_dir(), f"--out {out} is a file: give a folder (created when missing).")


def read_samples(data: str, n: int, types: list[str] | None, seed: int, *, lenient: bool = False) -> tuple[list[Sample], list[str]]:
    """Samples from ``--data`` (``shapes`` or ``<reader>:<path>``) and the records skipped.

    Raises:
        MMLensError: A malformed spec, a bad record (file and line), or no sample at all.
    """
    from mmlens.data.readers import load_dataset
    from mmlens.data.shapes import shapes_dataset

    if data == "shapes":
        return shapes_dataset(n, seed=seed, types=types or None), []
    if ":" not in data:
        raise MMLensError(f"--data {data!r}: use 'shapes' or '<reader>:<path>', e.g. pope:/data/pope/coco_pope_random.json.")
    read = load_dataset(data, n=None if types else n, lenient=lenient)
    samples = [s for s in read if s.task in types][:n] if types else list(read)
    if not samples:
        found = sorted({s.task for s in read})
        why = f" of type(s) {types} (types found: {found})" if types else ""
        raise MMLensError(f"--data {data} holds no usable sample{why}" + (f"; {len(read.skipped)} record(s) skipped" if read.skipped else "")
                          + ": check the path, the reader and --types.")  # fmt: skip
    return samples, list(read.skipped)


def run_manifest(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """The manifest of a command's run: the command, model name and weights fingerprint, the
    data spec and every other option of ``args`` (new options are recorded without code)."""
    options = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_OPTIONS}
    return {"command": args.command, "model": {"name": args.model, "fingerprint": checkpoint_fingerprint(path)},
            "data": args.data, "options": options}  # fmt: skip


def prepare_command(args: argparse.Namespace) -> Prepared:
    """Validate options, read the data, check the run folder; nothing loads a model.

    Writes ``<out>/skipped.csv`` (columns ``record``, ``problem``) when ``--lenient`` skipped
    records, and says how many on stderr.

    Raises:
        MMLensError: Any bad option or record, an empty dataset, or a run folder holding a
            run with other settings (unless ``--force``).
    """
    import sys

    path = model_path(args.model)
    n_layers, n_vision = model_depths(path)
    check_options(args, n_layers, n_vision)
    label, policy = scaled_policy(args.policy, n_layers) if getattr(args, "policy", None) else (None, None)
    samples, skipped = read_samples(args.data, args.n, args.types, args.seed, lenient=getattr(args, "lenient", False))
    if getattr(args, "template", None) == "auto":
        from mmlens.studies.plan import model_config

        args.template = model_config(str(path)).template  # the manifest records the template used
    manifest = run_manifest(args, path)
    if not getattr(args, "force", False):
        check_folder(args.out, manifest, partial=True)
    if skipped and Shard.from_env().is_main:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        rows = [m.split(": ", 1) if ": " in m else ["", m] for m in skipped]
        atomic_write(Path(args.out) / "skipped.csv", pd.DataFrame(rows, columns=["record", "problem"]).to_csv(index=False))
        print(f"mmlens: --lenient skipped {len(skipped)} malformed record(s); the list is in {args.out}/skipped.csv",
              file=sys.stderr)  # fmt: skip
    return Prepared(samples, skipped, manifest, path, n_layers, policy, label)
