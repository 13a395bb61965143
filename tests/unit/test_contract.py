"""Every public analysis and study follows the contract of :mod:`mmlens.result`.

Signatures: analyses are ``(model, inputs, ...)``, studies ``(model, samples, ...)``, and both are
annotated to return a frozen ``Result`` dataclass with documented ``COLUMNS``. Behaviour: each one,
called on a tiny model with one prepared input (or one sample), returns a result whose tidy table
has exactly those columns and whose ``plot()`` is a Figure that pyplot does not hold.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

import mmlens.analysis
import mmlens.studies
from mmlens import HookedVLM
from mmlens.data.shapes import make_sample
from mmlens.errors import MMLensError
from mmlens.inputs import sample_inputs
from mmlens.result import Result

FIRST_PARAMS = {
    "mmlens.analysis": ["model", "inputs"],
    "mmlens.studies": ["model", "samples"],
    "mmlens.patching": ["model", "clean", "corrupt"],  # patching compares a pair of inputs
}
MODULES = [mmlens.analysis, mmlens.studies]
if importlib.util.find_spec("mmlens.patching") is not None:
    MODULES.append(importlib.import_module("mmlens.patching"))

NOT_ANALYSES = {
    "group_metrics": "the tensor maths of saliency (no model)",
    "saliency_matrix": "the tensor maths of saliency (no model)",
    "write_report": "writes a finished FlowStudyResult to files",
    "image_attention_example": "draws one report figure to a file",
    # mmlens.patching: counterfactual builders and metric factories, not analyses.
    **{n: "builds patching inputs or metrics" for n in (
        "answer_prob", "blur_box", "check_aligned", "fill_box", "image_pair", "logit_diff", "move", "noise_box",
        "recolour", "remove", "swap", "text_pair",
    )},
}
"""Public functions that are not analyses, and why."""

KNOWN_DEVIATIONS = {"attribution_patch": "returns a dict of results when given several hooks"}
"""Analyses that break the contract today (strict xfail: fixing one makes its test fail until removed)."""

CALLS: dict[str, dict] = {
    "attention_share": {},
    "disruption": {"layers": [0, 1]},
    "grad_cam": {"answer": "Red", "layers": [0]},
    "knockout_sweep": {"flows": ["image->last", "related->question"], "window_size": 1},
    "logit_lens": {"words": ["red"]},
    "saliency": {},
    "cam_hit_rate": {"layers": [0]},
    "cliff_layer": {"layers": [1], "progress": False},
    "disruption_study": {"layers": [0], "progress": False},
    "evaluate": {"max_new_tokens": 1},
    "knockout_study": {"flows": ["image->last"], "window_size": 1, "progress": False},
    "patching_study": {"corrupt": "recolour", "answers": ("Red", "Blue"), "progress": False},
    "run_flow_study": {"window_size": 1, "progress": False},
    "saliency_study": {"progress": False},
}
"""Arguments after ``(model, inputs|samples)`` that make each call small (``out`` is added)."""


def public(kind: type | None = None) -> list[tuple[str, str, object]]:
    """(module name, name, object) of every name in the modules' ``__all__``."""
    found = [(m.__name__, n, getattr(m, n)) for m in MODULES for n in m.__all__]
    return [f for f in found if kind is None or isinstance(f[2], kind)]


FUNCTIONS = [(m, n, f) for m, n, f in public() if inspect.isfunction(f) and n not in NOT_ANALYSES]
RESULTS = [obj for _, _, obj in public(type) if issubclass(obj, Result)]


def check_result_class(cls: type) -> None:
    assert isinstance(cls, type) and issubclass(cls, Result), f"{cls} is not a Result"
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, f"{cls.__name__} is not a frozen dataclass"
    assert cls.COLUMNS and all(isinstance(v, str) and v for v in cls.COLUMNS.values()), f"{cls.__name__}.COLUMNS is empty"


CALLED = [f for f in FUNCTIONS if f[0] != "mmlens.patching"]  # patching's own tests run its pairs


def test_every_public_function_is_called_here_or_listed_as_a_helper():
    assert {n for m, n, _ in CALLED} == set(CALLS), "add the new analysis to CALLS (or to NOT_ANALYSES, with why)"


@pytest.mark.parametrize(
    "module, name, fn",
    [pytest.param(*f, marks=pytest.mark.xfail(strict=True, reason=KNOWN_DEVIATIONS[f[1]])) if f[1] in KNOWN_DEVIATIONS else f for f in FUNCTIONS],
    ids=[n for _, n, _ in FUNCTIONS],
)
def test_signature_follows_the_contract(module, name, fn):
    params = list(inspect.signature(fn).parameters)
    first = FIRST_PARAMS[module]
    assert params[: len(first)] == first, f"{name}{params}"
    check_result_class(typing.get_type_hints(fn)["return"])


@pytest.mark.parametrize("cls", RESULTS, ids=[c.__name__ for c in RESULTS])
def test_exported_results_are_frozen_dataclasses_with_columns(cls):
    check_result_class(cls)


@pytest.fixture(scope="module")
def setup(checkpoint_factory):
    model = HookedVLM.from_pretrained(checkpoint_factory(n_kv_heads=2))
    sample = make_sample(3, "ChooseAttr")
    return model, sample, sample_inputs(model, sample)


@pytest.mark.parametrize("module, name, fn", CALLED, ids=[n for _, n, _ in CALLED])
def test_result_has_its_columns_a_figure_and_combines(setup, tmp_path, module, name, fn):
    model, sample, inputs = setup
    kwargs = dict(CALLS[name], **({"out": tmp_path} if name == "run_flow_study" else {}))
    result = fn(model, inputs if module != "mmlens.studies" else [sample], **kwargs)
    assert isinstance(result, typing.get_type_hints(fn)["return"])
    df = result.to_dataframe()
    assert list(df.columns) == list(type(result).COLUMNS) and len(df) > 0
    figures = plt.get_fignums()
    fig = result.plot()
    assert isinstance(fig, Figure) and plt.get_fignums() == figures  # not held by pyplot: shown once
    try:
        both = type(result).concat([result, result])
    except MMLensError:
        return  # a result that does not combine says so
    assert list(both.to_dataframe().columns) == list(df.columns) and len(both.to_dataframe()) == 2 * len(df)
