"""Bias analysis of the predictions table (cxrlib.analysis.bias) on hand-made tables."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from cxrlib.analysis import bias
CLASSES = ["control", "covid19"]


def _predictions(labels, predicted, p_covid=None, experiment="exp1"):
    n = len(labels)
    p = np.where(np.asarray(predicted) == "covid19", 0.8, 0.2) if p_covid is None else \
        np.asarray(p_covid, dtype=float)
    return pd.DataFrame({
        "image_id": [f"i{k}" for k in range(n)], "repetition": 0, "fold": 0,
        "experiment": experiment, "model": "covidnet", "method": "m", "label": labels,
        "p_control": 1 - p, "p_covid19": p, "predicted": predicted})


def _manifest(n, **columns):
    base = {"image_id": [f"i{k}" for k in range(n)], "patient_id": [f"p{k}" for k in range(n)],
            "projection": "PA", "sensor": "DX", "sex": "M", "source": "A", "age": 50.0}
    base.update(columns)
    return pd.DataFrame(base)


def test_age_bands_by_hand():
    bands = bias.age_bands([39, 40, 59.5, 60, 80, np.nan])
    assert bands.tolist() == ["<40", "40-59", "40-59", "60-79", "80+", "unknown"]
    with pytest.raises(ValueError, match="increase"):
        bias.age_bands([1], edges=(0, 50, 40))


def test_error_distribution_by_hand():
    # six COVID-19 images: men hit, hit, miss; women hit, miss, miss
    labels = ["covid19"] * 6
    predicted = ["covid19", "covid19", "control", "covid19", "control", "control"]
    preds = _predictions(labels, predicted)
    manifest = _manifest(6, sex=["M", "M", "M", "F", "F", "F"])
    table = bias.error_distribution(preds, manifest, factors=("sex",))
    table = table.set_index("level")
    assert table.loc["M", ["n_test", "n_correct", "n_error"]].tolist() == [3, 2, 1]
    assert table.loc["F", ["n_test", "n_correct", "n_error"]].tolist() == [3, 1, 2]
    assert table.loc["M", "test_share"] == pytest.approx(0.5)
    assert table.loc["M", "correct_share"] == pytest.approx(2 / 3)
    assert table.loc["F", "error_share"] == pytest.approx(2 / 3)
    # chi-square of [[2, 1], [1, 2]]: every expected count 1.5, chi2 = 4 * 0.5**2 / 1.5
    assert table["chi2"].iloc[0] == pytest.approx(2 / 3)
    assert table["dof"].iloc[0] == 1
    assert table["p_value"].iloc[0] == pytest.approx(stats.chi2.sf(2 / 3, 1))


def test_error_distribution_without_errors_has_no_test():
    preds = _predictions(["covid19", "covid19"], ["covid19", "covid19"])
    table = bias.error_distribution(preds, _manifest(2, sex=["M", "F"]), factors=("sex",))
    assert table["n_error"].sum() == 0
    assert table["chi2"].isna().all() and table["error_share"].isna().all()


def test_missing_factor_and_unknown_image_raise():
    preds = _predictions(["covid19"], ["covid19"])
    with pytest.raises(ValueError, match="lacks column"):
        bias.error_distribution(preds, _manifest(1).drop(columns="sensor"), factors=("sensor",))
    with pytest.raises(ValueError, match="not in the manifest"):
        bias.error_distribution(preds, _manifest(1).assign(image_id="other"), factors=("sex",))


def test_weighted_auc_matches_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.random(40) < 0.4
    scores = np.round(rng.random(40), 1)  # ties
    weights = rng.integers(0, 4, size=(5, 40))
    got = bias.weighted_auc(y, scores, weights)
    want = [roc_auc_score(y, scores, sample_weight=w) for w in weights]
    np.testing.assert_allclose(got, want)
    assert np.isnan(bias.weighted_auc(np.ones(3, bool), [0.1, 0.2, 0.3], np.ones(3)))


def test_subgroup_bootstrap_resamples_patients():
    # level A: one patient, four control images, two called wrongly -> specificity 0.5 in every
    # resample that draws the patient (an image-level bootstrap would spread it); level B: two
    # patients, perfectly classified
    labels = ["control"] * 4 + ["covid19", "control"] * 2
    predicted = ["control", "control", "covid19", "covid19"] + ["covid19", "control"] * 2
    p = [0.1, 0.2, 0.7, 0.9, 0.9, 0.1, 0.8, 0.2]
    preds = _predictions(labels, predicted, p_covid=p)
    manifest = _manifest(8, patient_id=["a"] * 4 + ["b", "b", "c", "c"], sex=["F"] * 4 + ["M"] * 4)
    table = bias.subgroup_metrics(preds, manifest, "covid19", factors=("sex",), n_boot=200,
                                  min_level=1)
    rows = table.set_index(["level", "metric"])
    spec_f = rows.loc[("F", "specificity")]
    assert spec_f["value"] == pytest.approx(0.5)
    assert (spec_f["ci_low"], spec_f["ci_high"]) == (pytest.approx(0.5), pytest.approx(0.5))
    assert spec_f["n"] == 4 and spec_f["n_patients"] == 1
    assert rows.loc[("M", "auc"), "value"] == pytest.approx(1.0)
    assert rows.loc[("M", "auc"), "ci_low"] == pytest.approx(1.0)
    assert np.isnan(rows.loc[("F", "sensitivity"), "value"])  # no positives among women
    gap = rows.loc[("largest gap", "specificity")]
    assert gap["value"] == pytest.approx(0.5) and gap["levels"] == "M - F"
    assert gap["ci_low"] == pytest.approx(0.5) and gap["n_patients"] == 3


def test_subgroup_rejects_unknown_class():
    preds = _predictions(["covid19"], ["covid19"])
    with pytest.raises(ValueError, match="no probability column"):
        bias.subgroup_metrics(preds, _manifest(1), "pneumonia")


def test_error_vs_age_sex_matches_scipy():
    labels = ["covid19"] * 8
    predicted = ["covid19", "control"] * 4
    ages = [30.0, 70.0, 35.0, 75.0, 40.0, 65.0, 33.0, 80.0]
    sexes = ["F", "F", "F", "F", "M", "M", "M", "M"]
    table = bias.error_vs_age_sex(_predictions(labels, predicted),
                                  _manifest(8, age=ages, sex=sexes)).set_index("test")
    errors, hits = ages[1::2], ages[0::2]
    want = stats.ttest_ind(errors, hits, equal_var=False)
    assert table.loc["age", "statistic"] == pytest.approx(want.statistic)
    assert table.loc["age", "effect"] == pytest.approx(np.mean(errors) - np.mean(hits))
    assert table.loc["sex", "statistic"] == pytest.approx(0.0)  # 2 errors of 4 in each sex
    assert table.loc["sex", "effect"] == pytest.approx(0.0)


def test_projection_metrics_beside_paper():
    labels = ["covid19", "covid19", "control", "control"]
    predicted = ["covid19", "control", "control", "control"]
    preds = _predictions(labels, predicted)
    table = bias.projection_metrics(preds, _manifest(4, projection=["PA", "PA", "AP", "AP"]))
    pa = table[(table["projection"] == "PA") & (table["class"] == "covid19")].iloc[0]
    assert (pa["ppv"], pa["recall"]) == (1.0, 0.5)
    beside = bias.projection_beside_paper(table)
    row = beside[(beside["projection"] == "PA") & (beside["class"] == "covid19")].iloc[0]
    assert row["recall"] == 50.0
    assert row["f1_paper"] == pytest.approx(86.33)  # seed 001, Table V, exp1 PA COVID-19


def test_plot_subgroups_one_panel_per_factor():
    import matplotlib
    matplotlib.use("Agg")
    preds = _predictions(["covid19", "control"] * 4, ["covid19", "control"] * 4,
                         p_covid=[0.9, 0.1] * 4)
    manifest = _manifest(8, sex=["F", "M"] * 4, projection=["PA"] * 4 + ["AP"] * 4)
    table = bias.subgroup_metrics(preds, manifest, "covid19", factors=("sex", "projection"),
                                  n_boot=20)
    fig = bias.plot_subgroups(table, "auc")
    assert [ax.get_title() for ax in fig.axes] == ["sex", "projection"]
    with pytest.raises(ValueError, match="no subgroup rows"):
        bias.plot_subgroups(table, "ppv")


def test_gap_ci_keeps_its_direction_and_can_cross_zero():
    # two sexes with the same mix of hits and misses, one patient per image: the sampled gap is
    # as often negative as positive, so its CI spans 0 (a max - min per resample never would)
    labels = ["covid19"] * 40
    predicted = (["covid19", "control"] * 20)
    preds = _predictions(labels, predicted, p_covid=[0.9, 0.1] * 20)
    manifest = _manifest(40, patient_id=[f"p{i}" for i in range(40)], sex=["F", "F", "M", "M"] * 10)
    table = bias.subgroup_metrics(preds, manifest, "covid19", factors=("sex",), n_boot=300,
                                  min_level=1)
    gap = table.set_index(["level", "metric"]).loc[("largest gap", "sensitivity")]
    assert gap["value"] == pytest.approx(0.0)
    assert gap["ci_low"] < 0 < gap["ci_high"]


def test_projection_metrics_average_repetitions_instead_of_pooling_them():
    labels = ["covid19", "covid19", "control", "control"]
    rep0 = _predictions(labels, ["covid19", "covid19", "control", "control"])  # recall 1
    rep1 = _predictions(labels, ["covid19", "control", "control", "control"]).assign(repetition=1)
    table = bias.projection_metrics(pd.concat([rep0, rep1]), _manifest(4, projection="PA"))
    covid = table[table["class"] == "covid19"].iloc[0]
    assert covid["support"] == 2  # images, not images x repetitions
    assert covid["recall"] == pytest.approx(0.75)  # mean of 1 and 0.5
