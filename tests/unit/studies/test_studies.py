"""Dataset-level studies against per-input analyses and hand-written loops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmlens import HookedVLM
from mmlens.analysis import DisruptionResult, disruption, grad_cam, knockout_sweep
from mmlens.analysis.disruption import _targets
from mmlens.data.shapes import make_sample
from mmlens.errors import MMLensError
from mmlens.inputs import greedy_answer, is_correct, sample_inputs, score
from mmlens.studies import cam_hit_rate, disruption_study, evaluate, knockout_study, run_flow_study


@pytest.fixture(scope="module")
def model(checkpoint_factory):
    return HookedVLM.from_pretrained(checkpoint_factory(n_kv_heads=2))


def test_knockout_study_is_the_tagged_sweep_of_the_kept_samples(model):
    samples = [make_sample(i, t) for i, t in enumerate(["ChooseAttr", "QueryAttr", "Exist", "ChooseRel"])]
    kept = [s for s in samples if is_correct(greedy_answer(model, sample_inputs(model, s)), s.answer)]
    study = knockout_study(model, samples, ["image->last"], window_size=1, filter_correct=True, progress=False).to_dataframe()
    assert list(dict.fromkeys(study["sample"])) == [s.id for s in kept]
    every = knockout_study(model, samples, ["image->last"], window_size=1, progress=False).to_dataframe()
    for s in samples:
        rows = every[every["sample"] == s.id]
        alone = knockout_sweep(model, sample_inputs(model, s), ["image->last"], 1).to_dataframe()
        assert (rows["task"] == s.task).all()
        np.testing.assert_allclose(rows["p_knockout"].to_numpy(), alone["p_knockout"].to_numpy())


def test_disruption_metrics_and_d(model):
    samples = [make_sample(s, "QueryAttr") for s in range(3)]
    vt = disruption_study(model, samples, "instruction<-image", progress=False)
    vv = disruption_study(model, samples, "image<-image", scope="onward", mode="pre_softmax", progress=False)
    rnd = disruption_study(model, samples, "random<-image", progress=False)
    assert len(rnd.to_dataframe()) == 3 * model.cfg.n_layers
    table = vt.per_layer()
    assert ((table["E"] >= 0) & (table["E"] <= 3)).all()
    expected = 3 - vt.frame.groupby("layer")["jaccard"].sum().to_numpy()
    np.testing.assert_allclose(table["E"].to_numpy(), expected)
    d = DisruptionResult.concat([vt, vv]).d_metric()
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_allclose(d["D"].to_numpy(), np.log(d["E_vv"].to_numpy() / d["E_vt"].to_numpy()))
    with pytest.raises(MMLensError, match="both flows"):
        vt.d_metric()


def test_random_control_rows_come_from_one_generator_for_the_study(model):
    samples = [make_sample(s, "QueryAttr") for s in range(2)]
    study = disruption_study(model, samples, "random<-image", layers=[0], seed=3, progress=False).to_dataframe()
    rng = np.random.default_rng(3)
    for s in samples:
        inputs = sample_inputs(model, s)
        before = rng.bit_generator.state
        one = disruption(model, inputs, "random<-image", layers=[0], seed=rng).to_dataframe()
        rng.bit_generator.state = before
        dst = _targets(inputs, "random", rng)  # the same draw, replayed
        assert int(dst.sum()) == int(inputs.groups["user"].sum())
        row = study[study["sample"] == s.id].iloc[0]
        assert row["jaccard"] == pytest.approx(one["jaccard"].item())


def test_evaluate_scores_greedy_answers_and_summarises_per_policy_and_task(model):
    samples = [make_sample(i, t) for i, t in enumerate(["ChooseAttr", "QueryAttr", "Exist"])]
    result = evaluate(model, samples)
    df = result.to_dataframe()
    for s, row in zip(samples, df.itertuples()):
        answer = greedy_answer(model, sample_inputs(model, s))
        assert row.prediction == answer and row.score == score(s, answer) and row.correct == (row.score == 1.0)
    assert set(df["policy"]) == {"baseline"}
    assert result.accuracy == pytest.approx(df["correct"].mean())
    summary = type(result).concat([result, result.tag(policy="again")]).summary()
    assert summary["policy"].tolist() == ["baseline"] * 3 + ["again"] * 3 and (summary["n"] == 1).all()
    np.testing.assert_allclose(summary["mean"].to_numpy(), np.tile(df["score"].to_numpy(), 2))


def test_cam_hit_rate_scores_the_peak_against_the_named_boxes(model):
    samples = [make_sample(i, t) for i, t in enumerate(["ChooseAttr", "QueryAttr", "ChooseRel"])]
    result = cam_hit_rate(model, samples)
    hits = result.to_dataframe()
    last = model.cfg.n_layers - 1
    for s in samples:
        inputs = sample_inputs(model, s)
        cam = grad_cam(model, inputs, answer=s.answer)
        image = inputs.groups["image"][0]
        named = torch.zeros_like(image)
        for box in s.boxes.values():
            named |= inputs.patches_in_box(box)[0]
        rows = hits[hits["sample"] == s.id].set_index("layer")
        assert rows["chance"].iloc[0] == pytest.approx(named.sum().item() / image.sum().item())
        for i, layer in enumerate(cam.layers):
            heat = cam.raw[0, i]
            if layer == last:  # nothing after the last MLP reaches the answer: no gradient
                assert heat.abs().max() == 0
            if heat.max() <= 0:  # an all-zero map has no peak
                assert np.isnan(rows.loc[layer, "hit"])
                continue
            r, c = divmod(int(heat.argmax()), heat.shape[-1])
            pos = (inputs.image_grid.row[0] == r) & (inputs.image_grid.col[0] == c)
            assert rows.loc[layer, "hit"] == float(named[pos].item())
    per_layer = result.per_layer().set_index("layer")
    np.testing.assert_allclose(per_layer["hit_rate"], hits.groupby("layer")["hit"].mean())


def test_flow_study_result_reads_back_its_tables(model, tmp_path):
    samples = [make_sample(i, t) for i, t in enumerate(["ChooseAttr", "Exist"])]
    result = run_flow_study(model, samples, tmp_path, window_size=1, progress=False)
    long = result.to_dataframe()
    ko = long[long["table"] == "knockout"]
    np.testing.assert_allclose(ko["value"].to_numpy(), result.knockout.frame["relative_change"].to_numpy())
    assert set(long["table"]) == {"knockout", "lens", "shares"} and set(ko["sample"]) == {s.id for s in samples}
    shares = pd.read_csv(tmp_path / "shares.csv")
    assert ((shares.groupby(["sample", "layer"])["share"].sum() - 1).abs() < 1e-4).all()
    with pytest.raises(MMLensError, match="table must be"):
        result.plot("saliency")
