"""Transactional run folders: a manifest of what a study computes and a journal of its samples.

A study that writes to a folder records there a ``manifest.json`` (the model's identity with a
weights fingerprint, the data, every option, the mmlens version) and commits each sample's
result tables as one file ``journal/<key>.json``, written to a temporary name and renamed. The
rename is the commit: an interrupt at any instant leaves each sample either wholly done or not
started, never half-written. A rerun skips the committed samples and rebuilds the output CSVs
from the journal in sample order, so its files are byte-identical to an uninterrupted run. A
rerun with different settings refuses, naming the setting (``force=True`` starts over).

Sharding: with ``WORLD_SIZE`` > 1 (``torchrun --nproc_per_node N``) rank ``r`` computes the
samples ``r, r + N, ...``, every rank commits into the same journal, and after a barrier (a
``gloo`` process group) rank 0 writes the merged outputs; see :mod:`mmlens.studies.shard`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from mmlens.data.readers.base import ImageFile
from mmlens.data.sample import Sample
from mmlens.errors import MMLensError
from mmlens.studies.shard import Shard

MANIFEST = "manifest.json"
JOURNAL = "journal"
GROWABLE = frozenset({"options.n"})
"""Manifest keys a rerun may change: samples are keyed by id and the outputs are rebuilt for
exactly the samples asked for, so a larger ``--n`` resumes and a smaller one reuses a prefix."""

Tables = dict[str, pd.DataFrame]


class RunMismatchError(MMLensError):
    """A run folder holds a run made with other settings, model, data or mmlens version."""


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` all or nothing: a temporary sibling, fsync, then rename.

    Every file of a run folder is written through this one function (the fault-injection tests
    make it fail at each call in turn).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def mmlens_version() -> str:
    """The installed mmlens version (``"unknown"`` when not installed as a distribution)."""
    try:
        return metadata.version("mmlens")
    except metadata.PackageNotFoundError:
        return "unknown"


def checkpoint_fingerprint(path: str | Path) -> str:
    """SHA-256 of a checkpoint folder's weights and config, without loading it.

    Hashes every ``*.json`` file whole and, of every weights file (``*.safetensors``, ``*.bin``,
    ``*.pt``, ``*.pth``), its name, its size, its first MiB (a safetensors header lists every
    tensor's name, dtype, shape and byte range) and 256 blocks of 4 KiB spread evenly over the
    rest: retrained or corrupted weights of the same architecture differ there, and a 14 GB
    checkpoint costs about 2 MB of reading.
    """
    h = hashlib.sha256()
    root = Path(path)
    for file in sorted(root.rglob("*")):
        if not file.is_file() or file.name.startswith("."):
            continue
        rel = file.relative_to(root).as_posix()
        if file.suffix == ".json":
            h.update(f"{rel}\0".encode() + file.read_bytes())
        elif file.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            size = file.stat().st_size
            h.update(f"{rel}\0{size}\0".encode())
            with file.open("rb") as f:
                h.update(f.read(1 << 20))
                for i in range(256):
                    f.seek((1 << 20) + i * max(0, size - (1 << 20)) // 256)
                    h.update(f.read(4096))
    return h.hexdigest()


def parameter_fingerprint(model: Any) -> str:
    """SHA-256 of a loaded model's state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sample_fingerprint(sample: Sample) -> str:
    """SHA-256 of what a sample asks (text, answer, options, boxes) and of its image (pixels,
    or the file it is read from)."""
    h = hashlib.sha256()
    fields = [sample.id, sample.question, sample.answer, sample.task, list(sample.options), sample.true_option,
              sample.false_option, sorted((k, list(map(float, v))) for k, v in sample.boxes.items())]  # fmt: skip
    h.update(json.dumps(fields, default=str).encode())
    if isinstance(sample.image, Image.Image):
        h.update(f"{sample.image.mode}{sample.image.size}".encode() + sample.image.tobytes())
    elif isinstance(sample.image, ImageFile):
        h.update(str(sample.image.path).encode())
    return h.hexdigest()


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _plain(value: Any) -> Any:
    """A JSON value for a manifest or journal cell (numpy scalars, paths and tuples included)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _encode(frame: pd.DataFrame) -> dict:
    return {"columns": [str(c) for c in frame.columns],
            "data": [[_plain(v) for v in row] for row in frame.itertuples(index=False, name=None)]}  # fmt: skip


def _decode(table: dict) -> pd.DataFrame:
    return pd.DataFrame(table["data"], columns=table["columns"])


def check_folder(out: str | Path, manifest: Mapping[str, Any], *, partial: bool = False) -> None:
    """Refuse a folder whose run manifest differs from ``manifest`` (read only).

    Args:
        out: The run folder (missing or without a manifest: nothing to check).
        manifest: This run's manifest (``mmlens_version`` is added).
        partial: Compare only the settings ``manifest`` names (a caller that knows part of it).

    Raises:
        RunMismatchError: Naming every differing setting with both values.
    """
    out = Path(out)
    file = out / MANIFEST
    if not file.exists():
        if (out / "done.json").exists():
            raise RunMismatchError(f"{out} holds results of an earlier mmlens without a run manifest, which cannot be "
                                   "resumed safely: rerun with --force to start over, or use a new --out folder.")  # fmt: skip
        return
    try:
        old = _flatten(json.loads(file.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunMismatchError(f"{file} is unreadable ({err}): rerun with --force to start over.") from err
    now = _flatten(_plain({**manifest, "mmlens_version": mmlens_version()}))
    keys = set(now) if partial else set(old) | set(now)
    diff = [k for k in sorted(keys) if k not in GROWABLE and old.get(k) != now.get(k)]
    if diff:
        shown = "; ".join(f"{k} = {old.get(k)!r} there, {now.get(k)!r} now" for k in diff)
        raise RunMismatchError(f"{out} holds a run made with other settings ({shown}): rerun with --force to start "
                               "over, or use a new --out folder.")  # fmt: skip


class RunFolder:
    """A study's output folder: manifest, journal of committed samples, merged outputs.

    Args:
        out: The folder (created).
        manifest: What the run computes: ``study``, ``model`` (identity with a ``fingerprint``),
            ``data``, ``options``... (nested JSON values; ``mmlens_version`` is added).
        force: Delete an earlier run's manifest and journal instead of refusing a mismatch.
        shard: This process's rank and the world size (default: from ``RANK``/``WORLD_SIZE``).

    Raises:
        RunMismatchError: ``out`` holds a run whose manifest differs (the message names each
            differing setting), or results of an mmlens without manifests.
    """

    def __init__(self, out: str | Path, manifest: Mapping[str, Any], *, force: bool = False,
                 shard: Shard | None = None) -> None:  # fmt: skip
        self.out = Path(out)
        self.shard = shard if shard is not None else Shard.from_env()
        self.manifest = _plain({**manifest, "mmlens_version": mmlens_version()})
        if self.out.exists() and not self.out.is_dir():
            raise MMLensError(f"--out {self.out} is a file; give a folder (it is created when missing).")
        if not force:
            check_folder(self.out, manifest)
        if self.shard.is_main:
            if force:
                shutil.rmtree(self.out / JOURNAL, ignore_errors=True)
            (self.out / JOURNAL).mkdir(parents=True, exist_ok=True)
            for stale in [*self.out.glob(".*.tmp-*"), *(self.out / JOURNAL).glob(".*.tmp-*")]:
                stale.unlink(missing_ok=True)  # an interrupted write (the rename never happened)
            self.write(MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True) + "\n")
        self.shard.barrier()
        (self.out / JOURNAL).mkdir(parents=True, exist_ok=True)

    @property
    def is_main(self) -> bool:
        """Whether this process writes the merged outputs (rank 0)."""
        return self.shard.is_main

    def write(self, name: str, data: bytes | str) -> Path:
        """Write one file of the folder atomically; returns its path."""
        atomic_write(self.out / name, data)
        return self.out / name

    def write_csv(self, name: str, frame: pd.DataFrame) -> Path:
        """Write a table (no index) atomically."""
        return self.write(name, frame.to_csv(index=False))

    def write_figure(self, name: str, fig: Any, dpi: int = 120) -> Path:
        """Save a matplotlib figure atomically."""
        import io

        buf = io.BytesIO()
        fig.savefig(buf, dpi=dpi, format=Path(name).suffix.lstrip(".") or "png")
        return self.write(name, buf.getvalue())

    def _entry(self, sample: Sample) -> Path:
        return self.out / JOURNAL / (hashlib.sha256(sample.id.encode()).hexdigest()[:24] + ".json")

    def load(self, sample: Sample) -> Tables | None:
        """The committed tables of ``sample``, or None when it is not done.

        Raises:
            RunMismatchError: The journal holds a different sample under the same id.
        """
        file = self._entry(sample)
        if not file.exists():
            return None
        entry = json.loads(file.read_text())
        if entry["id"] != sample.id or entry["sample"] != sample_fingerprint(sample):
            raise RunMismatchError(f"sample {sample.id!r} in {file} is not the dataset's sample {sample.id!r} (the data "
                                   "changed under the same ids): rerun with --force, or use a new --out folder.")  # fmt: skip
        return {name: _decode(t) for name, t in entry["tables"].items()}

    def commit(self, sample: Sample, tables: Mapping[str, pd.DataFrame]) -> None:
        """Record ``sample`` as done with its result tables (one atomic file)."""
        entry = {"id": sample.id, "sample": sample_fingerprint(sample),
                 "tables": {name: _encode(frame) for name, frame in tables.items()}}  # fmt: skip
        atomic_write(self._entry(sample), json.dumps(entry, sort_keys=True, allow_nan=True))

    def run(
        self,
        samples: Sequence[Sample],
        compute: Callable[[Sample], Mapping[str, pd.DataFrame]],
        columns: Mapping[str, Sequence[str]],
        *,
        desc: str = "samples",
        progress: bool = True,
    ) -> Tables:
        """Compute and commit this rank's samples not yet done, then merge every sample's tables.

        Args:
            samples: All samples of the study, in output order (ids unique).
            compute: One sample → its tables (``name → frame``, names from ``columns``).
            columns: Table name → the columns of an empty table.
            desc: Progress bar label.
            progress: Show a progress bar (rank 0 only).

        Returns:
            Each table: the samples' frames concatenated in sample order.

        Raises:
            MMLensError: Duplicate sample ids.
        """
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise MMLensError(f"duplicate sample ids {dup[:5]}: ids key the run's journal, so each must be unique.")
        mine = self.shard.select(samples)
        todo = [s for s in mine if self.load(s) is None]
        for sample in tqdm(todo, desc=desc, disable=not progress or not self.is_main):
            self.commit(sample, compute(sample))
        self.shard.barrier()
        return self.merge(samples, columns)

    def merge(self, samples: Sequence[Sample], columns: Mapping[str, Sequence[str]]) -> Tables:
        """Every sample's committed tables, concatenated per table in sample order.

        Raises:
            MMLensError: A sample is not committed (another rank failed).
        """
        parts: dict[str, list[pd.DataFrame]] = {name: [] for name in columns}
        for sample in samples:
            tables = self.load(sample)
            if tables is None:
                raise MMLensError(f"sample {sample.id!r} has no result in {self.out / JOURNAL}: a process of the run "
                                  "failed; rerun the same command to resume.")  # fmt: skip
            for name in columns:
                frame = tables.get(name)
                if frame is not None and len(frame):
                    parts[name].append(frame)
        return {name: pd.concat(parts[name], ignore_index=True) if parts[name] else pd.DataFrame(columns=list(cols))
                for name, cols in columns.items()}  # fmt: skip
