"""The "Cross-modal Information Flow" study over a dataset (knockouts, logit lens) with the
attention shares of "From Redundancy to Relevance": resumable, written to a folder."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from matplotlib.figure import Figure

from mmlens.analysis.knockout_sweep import PAPER_FLOWS, KnockoutResult, knockout_sweep
from mmlens.analysis.lens import LensResult, logit_lens
from mmlens.analysis.shares import ShareResult, attention_share
from mmlens.data.sample import Sample
from mmlens.errors import MMLensError
from mmlens.inputs import greedy_answer, sample_inputs, score
from mmlens.result import Result
from mmlens.studies.run import RunFolder, parameter_fingerprint
from mmlens.viz.flow import plot_lens, plot_shares

TABLES = ("knockout", "lens", "shares")
STUDY_COLUMNS = ["sample", "task", "correct"]


@dataclass(frozen=True)
class FlowStudyResult(Result):
    """The three tables of a flow study, as written to ``folder``.

    Attributes:
        knockout: Knockouts of the six flows (``KnockoutResult.COLUMNS``).
        lens: Logit lens per sample (``LensResult.COLUMNS`` + sample, task, correct, role).
        shares: Attention shares per sample (``ShareResult.COLUMNS`` + sample, task, correct).
        folder: Where the CSV files live.
    """

    COLUMNS: ClassVar[dict[str, str]] = {
        "table": "'knockout', 'lens' or 'shares'",
        "sample": "sample id",
        "task": "question type",
        "layer": "window centre (knockout), boundary (lens; 0 = embeddings) or layer (shares)",
        "key": "flow (knockout), 'role (variant)' of the tracked word (lens) or group (shares)",
        "value": "relative change % (knockout), probability (lens) or attention share (shares)",
    }

    knockout: KnockoutResult
    lens: pd.DataFrame
    shares: pd.DataFrame
    folder: Path

    def to_dataframe(self) -> pd.DataFrame:
        ko, lens, shares = self.knockout.frame, self.lens, self.shares
        parts = [
            ko.assign(table="knockout", key=ko["flow"], value=ko["relative_change"]),
            lens.assign(table="lens", layer=lens["boundary"], key=lens["role"] + " (" + lens["variant"] + ")", value=lens["prob"]),
            shares.assign(table="shares", key=shares["group"], value=shares["share"]),
        ]
        return pd.concat([p[list(self.COLUMNS)] for p in parts], ignore_index=True)

    def plot(self, table: str = "knockout") -> Figure:
        """The study's figure for ``table``: knockout curves per task, lens curves of the answer
        and the false option, or stacked attention shares.

        Raises:
            MMLensError: an unknown table, or an empty one.
        """
        if table not in TABLES:
            raise MMLensError(f"table must be one of {TABLES}, not {table!r}.")
        if table == "knockout":
            return self.knockout.plot()
        frame = self.lens.assign(word=self.lens["role"]) if table == "lens" else self.shares
        if frame.empty:
            raise MMLensError(f"the {table} table is empty: were all samples filtered out (filter_correct)?")
        return plot_lens(frame) if table == "lens" else plot_shares(frame)


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"sample": str}) if path.exists() else pd.DataFrame(columns=columns)


def run_flow_study(
    model,
    samples: Sequence[Sample],
    out: str | Path,
    *,
    window_size: int | None = None,
    template: str = "auto",
    filter_correct: bool = False,
    progress: bool = True,
    force: bool = False,
    manifest: Mapping[str, Any] | None = None,
    convention: str = "paper",
    fill: str | None = None,
    final_norm: str | None = None,
    head_reduce: str | None = None,
) -> FlowStudyResult:
    """Knockouts of the paper's six flows, the logit lens and attention shares for every sample.

    The folder is a transactional run (:mod:`mmlens.studies.run`): ``manifest.json`` records
    the model's weights fingerprint and every option, each sample's tables are committed
    atomically to ``journal/``, and ``{knockout,lens,shares}.csv`` (plus ``done.json``, the
    ids) are rebuilt from the journal in sample order. An interrupted study resumes where it
    stopped, byte for byte; under ``torchrun`` each rank computes its shard and rank 0 merges.

    Args:
        model: A :class:`~mmlens.HookedVLM`.
        samples: Dataset samples (unique ids).
        out: Output folder (created).
        window_size: Knockout window k (None: the paper's k scaled to the depth).
        template: Prompt template.
        filter_correct: Keep only samples answered correctly ("Cross-modal Information Flow" §4).
        progress: Show a progress bar.
        force: Start over when ``out`` holds a run with other settings instead of refusing.
        manifest: What identifies the run (the CLI passes the model name and checkpoint
            fingerprint, the data spec and its options); default: the model's parameter
            fingerprint. The function's own options are always recorded under ``study``.
        convention: ``"paper"`` or ``"released_code"``: the options below as the papers' text or
            their authors' code have them (docs/conventions.md); explicit options win.
        fill: Knockout fill, ``"-inf"`` or ``"finfo_min"`` (None: from ``convention``).
        final_norm: Logit lens final norm, ``"all"`` or ``"last_only"`` (None: from ``convention``).
        head_reduce: Attention-share head reduction, ``"mean"`` or ``"max"`` (None: from ``convention``).

    Returns:
        The three tables over exactly ``samples``.

    Raises:
        RunMismatchError: ``out`` holds a run with other settings (named), unless ``force``.
    """
    options = {k: v for k, v in locals().items() if k not in ("model", "samples", "out", "progress", "force", "manifest")}
    identity = dict(manifest) if manifest is not None else {"model": {"fingerprint": parameter_fingerprint(model)}}
    folder = RunFolder(out, {**identity, "study": {"name": "flow", **options}}, force=force)

    def one(sample: Sample) -> dict[str, pd.DataFrame]:
        inputs = sample_inputs(model, sample, template)
        correct = score(sample, greedy_answer(model, inputs)) == 1.0
        if filter_correct and not correct:
            return {}
        tags = {"sample": sample.id, "task": sample.task, "correct": correct}
        ko = knockout_sweep(model, inputs, PAPER_FLOWS, window_size, fill=fill, convention=convention, allow_empty=True)
        ko = ko.tag(sample=sample.id, task=sample.task)
        words = [sample.answer] + ([sample.false_option] if sample.false_option else [])
        lens = logit_lens(model, inputs, words=words, final_norm=final_norm, convention=convention).to_dataframe().assign(**tags)
        lens["role"] = lens["word"].map({sample.answer: "answer"}).fillna("false option")
        shares = attention_share(model, inputs, head_reduce=head_reduce, convention=convention).to_dataframe().assign(**tags)
        return {"knockout": ko.frame.assign(correct=correct), "lens": lens, "shares": shares}

    columns = {"knockout": [*KnockoutResult.COLUMNS, "correct"], "lens": [*LensResult.COLUMNS, *STUDY_COLUMNS, "role"],
               "shares": [*ShareResult.COLUMNS, *STUDY_COLUMNS]}  # fmt: skip
    tables = folder.run(samples, one, columns, desc="flow study", progress=progress)
    out = folder.out
    if folder.is_main:
        for name in TABLES:
            folder.write_csv(f"{name}.csv", tables[name])
        folder.write("done.json", json.dumps(sorted(s.id for s in samples)))
    folder.shard.barrier()
    knockout = _read(out / "knockout.csv", list(KnockoutResult.COLUMNS))
    return FlowStudyResult(
        KnockoutResult(knockout[list(KnockoutResult.COLUMNS)]),
        _read(out / "lens.csv", [*LensResult.COLUMNS, *STUDY_COLUMNS, "role"]),
        _read(out / "shares.csv", [*ShareResult.COLUMNS, *STUDY_COLUMNS]),
        out,
    )
