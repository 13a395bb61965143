"""``mmlens flow`` under ``torchrun --nproc_per_node 2`` (gloo, CPU): the bytes of one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmlens.cli import main


def files(folder: Path) -> dict[str, bytes]:
    """The run's tables, manifest and journal (figures and the summary are drawn from them)."""
    keep = ("knockout.csv", "lens.csv", "shares.csv", "done.json", "manifest.json")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and (p.name in keep or p.parent.name == "journal")}  # fmt: skip


# Two fresh interpreters import torch and transformers (~30-60 s on 2 cores): run by default, since CI must show
# that a 2-process run equals one process (issue: data parallel studies).
def test_two_ranks_shard_resume_and_merge_to_the_single_process_bytes(tmp_path, checkpoint_factory):
    args = ["flow", "--model", checkpoint_factory(), "--window", "3", "--n", "6"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    # Half the samples are done by an earlier single-process run: the two ranks resume the rest.
    assert main([*args[:-1], "3", "--out", str(tmp_path / "two")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    # torchrun reads every option up to the script's: --n would be ambiguous with its --nnodes, ...
    ranked = [a if a != "--n" else "--num-samples" for a in args]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mmlens.cli", *ranked, "--out", str(tmp_path / "two")]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # only rank 0 reports
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert len(one) == 5 + 6 and one == two
