"""Run folders: an interrupt at any write, then a rerun, gives the bytes of an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mmlens import HookedVLM
from mmlens.data.shapes import make_sample
from mmlens.errors import MMLensError
from mmlens.studies import run as run_module
from mmlens.studies import run_flow_study
from mmlens.studies.run import RunFolder, RunMismatchError, checkpoint_fingerprint, sample_fingerprint
from mmlens.studies.shard import Shard


class Crash(Exception):
    """The injected fault (not an MMLensError, so nothing handles it on the way up)."""


def inject(monkeypatch, k: int, torn: bool) -> None:
    """Make the k-th atomic write fail: before writing (``torn=False``) or after writing the
    temporary file, before its rename (``torn=True``: a crash mid-commit)."""
    real = run_module.atomic_write
    calls = {"n": 0}

    def flaky(path, data):
        calls["n"] += 1
        if calls["n"] == k:
            if torn:
                Path(path).with_name(f".{Path(path).name}.tmp-999").write_bytes(b"half")
            raise Crash(f"write {k} ({path})")
        real(path, data)

    monkeypatch.setattr(run_module, "atomic_write", flaky)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def toy_study(out: Path, samples, scale: float = 2.0, shard: Shard | None = None, log: list | None = None) -> pd.DataFrame:
    """A study whose per-sample result is cheap: the machinery under test, not a model."""
    folder = RunFolder(out, {"study": "toy", "options": {"scale": scale}}, shard=shard)

    def one(s):
        if log is not None:
            log.append(s.id)
        n = len(s.question)
        rows = {"sample": [s.id] * 2, "task": [s.task] * 2, "x": [n * scale / 3, float("nan") if n % 2 else 0.1]}
        return {"t": pd.DataFrame(rows), "u": pd.DataFrame({"sample": [s.id], "ok": [n % 2 == 0]})}

    tables = folder.run(samples, one, {"t": ["sample", "task", "x"], "u": ["sample", "ok"]}, progress=False)
    if folder.is_main:
        folder.write_csv("t.csv", tables["t"])
        folder.write_csv("u.csv", tables["u"])
    return tables["t"]


SAMPLES = [make_sample(i) for i in range(3)]
TOY_WRITES = 1 + len(SAMPLES) + 2  # manifest, one journal entry per sample, two tables


@pytest.mark.parametrize("torn", [False, True])
def test_a_fault_at_every_write_then_a_rerun_gives_the_uninterrupted_bytes(tmp_path, monkeypatch, torn):
    toy_study(tmp_path / "ref", SAMPLES)
    reference = snapshot(tmp_path / "ref")
    assert len(reference) == TOY_WRITES
    for k in range(1, TOY_WRITES + 1):
        out = tmp_path / f"k{k}"
        with monkeypatch.context() as m:
            inject(m, k, torn)
            with pytest.raises(Crash):
                toy_study(out, SAMPLES)
        toy_study(out, SAMPLES)
        assert snapshot(out) == reference, f"fault at write {k}"
    with monkeypatch.context() as m:  # one past the last write: nothing fails
        inject(m, TOY_WRITES + 1, torn)
        toy_study(tmp_path / "none", SAMPLES)


def test_committed_samples_are_not_recomputed_and_a_larger_n_resumes(tmp_path):
    toy_study(tmp_path / "a", SAMPLES[:2])
    seen = []
    folder = RunFolder(tmp_path / "a", {"study": "toy", "options": {"scale": 2.0}})
    folder.run(SAMPLES, lambda s: seen.append(s.id) or {}, {"t": ["sample"]}, progress=False)
    assert seen == [SAMPLES[2].id]
    toy_study(tmp_path / "b", SAMPLES)
    toy_study(tmp_path / "c", SAMPLES[:1])  # a smaller n reuses a prefix: outputs cover exactly it
    assert (tmp_path / "c" / "t.csv").read_text().count("\n") == 3


def test_a_rerun_with_other_settings_names_the_setting_and_force_starts_over(tmp_path):
    toy_study(tmp_path / "a", SAMPLES)
    with pytest.raises(RunMismatchError, match=r"options\.scale = 2\.0 there, 3\.0 now.*--force"):
        toy_study(tmp_path / "a", SAMPLES, scale=3.0)
    RunFolder(tmp_path / "a", {"study": "toy", "options": {"scale": 3.0}}, force=True)
    assert not list((tmp_path / "a" / "journal").iterdir())
    toy_study(tmp_path / "a", SAMPLES, scale=3.0)
    toy_study(tmp_path / "b", SAMPLES, scale=3.0)
    assert (tmp_path / "a" / "t.csv").read_bytes() == (tmp_path / "b" / "t.csv").read_bytes()


def test_changed_data_under_the_same_ids_and_duplicate_ids_refuse(tmp_path):
    toy_study(tmp_path / "a", SAMPLES)
    other = [make_sample(10 + i, sample_id=s.id) for i, s in enumerate(SAMPLES)]
    assert sample_fingerprint(other[0]) != sample_fingerprint(SAMPLES[0])
    with pytest.raises(RunMismatchError, match="data changed"):
        toy_study(tmp_path / "a", other)
    with pytest.raises(MMLensError, match="duplicate sample ids"):
        toy_study(tmp_path / "b", [SAMPLES[0], SAMPLES[0]])
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "done.json").write_text("[]")
    with pytest.raises(RunMismatchError, match="without a run manifest"):
        toy_study(tmp_path / "old", SAMPLES)


class NoBarrier(Shard):
    """A rank whose barrier returns at once: ranks run one after another in this process."""

    def barrier(self) -> None:
        pass


def test_shards_split_samples_by_rank_and_merge_to_the_single_process_bytes(tmp_path):
    toy_study(tmp_path / "one", SAMPLES)
    done: list[str] = []
    with pytest.raises(MMLensError, match=f"sample '{SAMPLES[0].id}' has no result.*rerun the same command"):
        toy_study(tmp_path / "two", SAMPLES, shard=NoBarrier(1, 2), log=done)  # rank 0 has not run yet
    toy_study(tmp_path / "two", SAMPLES, shard=NoBarrier(0, 2), log=done)
    assert done == [SAMPLES[1].id, SAMPLES[0].id, SAMPLES[2].id]  # rank r computes samples r, r + 2, ...
    assert snapshot(tmp_path / "two") == snapshot(tmp_path / "one")
    toy_study(tmp_path / "two", SAMPLES, log=done)  # one process resumes a sharded run: nothing left to do
    assert len(done) == 3 and snapshot(tmp_path / "two") == snapshot(tmp_path / "one")
    assert Shard(1, 3).select(list(range(8))) == [1, 4, 7]
    with pytest.raises(MMLensError, match="RANK < WORLD_SIZE"):
        Shard(2, 2)


def test_the_checkpoint_fingerprint_follows_weights_and_config(tmp_path, checkpoint_factory):
    path = Path(checkpoint_factory())
    base = checkpoint_fingerprint(path)
    assert checkpoint_fingerprint(path) == base
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    assert checkpoint_fingerprint(copy) == base
    cfg = json.loads((copy / "config.json").read_text())
    cfg["text_config"]["rms_norm_eps"] = 1e-3
    (copy / "config.json").write_text(json.dumps(cfg))
    assert checkpoint_fingerprint(copy) != base
    other = Path(checkpoint_factory(seed=1))
    assert checkpoint_fingerprint(other) != base  # same architecture, other weights
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one byte of the last tensor
    weights.write_bytes(bytes(data))
    cfg["text_config"]["rms_norm_eps"] = json.loads((path / "config.json").read_text())["text_config"]["rms_norm_eps"]
    (copy / "config.json").write_text(json.dumps(cfg))
    assert checkpoint_fingerprint(copy) != base


@pytest.fixture(scope="module")
def model(checkpoint_factory):
    return HookedVLM.from_pretrained(checkpoint_factory(n_kv_heads=2))


FLOW_SAMPLES = [make_sample(i, t) for i, t in enumerate(["ChooseAttr", "Exist"])]
FLOW_WRITES = 1 + len(FLOW_SAMPLES) + 3 + 1  # manifest, journal entries, three tables, done.json


def flow_faults(model, tmp_path, monkeypatch, ks) -> None:
    run_flow_study(model, FLOW_SAMPLES, tmp_path / "ref", window_size=3, progress=False)
    reference = snapshot(tmp_path / "ref")
    assert len(reference) == FLOW_WRITES
    for k in ks:
        out = tmp_path / f"k{k}"
        with monkeypatch.context() as m:
            inject(m, k, torn=k % 2 == 0)
            with pytest.raises(Crash):
                run_flow_study(model, FLOW_SAMPLES, out, window_size=3, progress=False)
        run_flow_study(model, FLOW_SAMPLES, out, window_size=3, progress=False)
        assert snapshot(out) == reference, f"fault at write {k}"


def test_the_flow_study_resumes_to_the_same_bytes_after_a_torn_commit(tmp_path, model, monkeypatch):
    flow_faults(model, tmp_path, monkeypatch, [3])  # torn mid-commit of the second sample
    with pytest.raises(RunMismatchError, match=r"study\.window_size = 3 there, 2 now"):
        run_flow_study(model, FLOW_SAMPLES, tmp_path / "ref", window_size=2, progress=False)


@pytest.mark.slow
def test_the_flow_study_resumes_to_the_same_bytes_after_a_fault_at_every_write(tmp_path, model, monkeypatch):
    flow_faults(model, tmp_path, monkeypatch, range(1, FLOW_WRITES + 1))


def test_disrupt_resumes_its_random_controls_from_the_journal(tmp_path, checkpoint_factory, monkeypatch):
    """The random<-image rows draw from one generator across samples: a resumed run continues
    from the generator state committed with the last done sample."""
    from mmlens.cli import main

    monkeypatch.setenv("MMLENS_CACHE", str(tmp_path / "cache"))
    args = ["disrupt", "--model", checkpoint_factory(), "--layers", "0"]
    assert main([*args, "--n", "3", "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--n", "2", "--out", str(tmp_path / "two")]) == 0
    assert main([*args, "--n", "3", "--out", str(tmp_path / "two")]) == 0
    for name in ("disruption.csv", "disruption_per_layer.csv", "d_metric.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    # the journal holds each sample's generator states: equal only if the third sample continued the second's
    assert snapshot(tmp_path / "one" / "journal") == snapshot(tmp_path / "two" / "journal")
