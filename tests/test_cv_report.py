"""Notebooks 02 and 03's tables beside the papers: seed 000's columns, paper tables, sentences."""
import numpy as np
import pandas as pd
import pytest

from cxrlib.report import cv_report
from cxrlib.analysis.metrics import class_metrics, global_metrics, summarize
from cxrlib.train.predictions import make_predictions


def _manifest():
    return pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e", "f"],
        "label": ["covid19", "covid19", "covid19", "covid19", "control", "control"],
        "severity": ["mild", "mild", "severe", "normal_pcr_pos", None, None],
    })


def _predictions(fold=0, predicted_positive=("a", "c", "e")):
    ids = ["a", "b", "c", "d", "e", "f"]
    labels = list(_manifest()["label"])
    probs = np.array([[0.2, 0.8] if i in predicted_positive else [0.7, 0.3] for i in ids])
    return make_predictions(ids, labels, probs, ["control", "covid19"], experiment="sdnet",
                            model="covidnet", method="m", repetition=0, fold=fold)










def test_binary_metrics_use_seed_000_names():
    preds = pd.concat([_predictions(0), _predictions(1, ("a", "b", "c", "d"))])
    cls = summarize(class_metrics(preds))
    glob = summarize(global_metrics(preds))
    table = cv_report.binary_metrics(cls, glob).iloc[0]
    # fold 0: control recall 1/2, covid recall 2/4; fold 1: control recall 1, covid recall 1
    assert table["neg_specificity_mean"] == pytest.approx(0.75)
    assert table["pos_sensitivity_mean"] == pytest.approx(0.75)
    assert table["accuracy_mean"] == pytest.approx((3 / 6 + 1) / 2)
    beside = cv_report.binary_beside_paper(cv_report.binary_metrics(cls, glob),
                                           {"sdnet": "ResNet-50 with segmentation"})
    acc = beside.set_index("metric").loc["accuracy"]
    assert acc["sdnet"] == "75.00 ± 35.36"
    assert acc["ResNet-50 with segmentation (paper)"] == "74.60 ± 2.93"
    with pytest.raises(ValueError, match="no method"):
        cv_report.binary_beside_paper(cv_report.binary_metrics(cls, glob), {"sdnet": "Nope"})


def test_compare_experiments_sentence():
    glob = pd.DataFrame({"experiment": ["exp1", "exp3"], "balanced_accuracy_mean": [0.9, 0.8],
                         "balanced_accuracy_sd": [0.02, 0.01]})
    text = cv_report.compare_experiments(glob, "exp1", "exp3")
    assert "90.0% for `exp1` against 80.0%" in text and "`exp1` higher" in text
    glob["balanced_accuracy_sd"] = [0.2, 0.01]
    assert "within the fold-to-fold spread" in cv_report.compare_experiments(glob, "exp1", "exp3")
    with pytest.raises(ValueError, match="'exp2' is not in the summary"):
        cv_report.compare_experiments(glob, "exp2", "exp3")




def test_table4_beside_paper_reads_published_numbers():
    cls = pd.DataFrame({"experiment": ["exp1"], "model": ["covidnet"], "method": ["m"],
                        "class": ["covid19"], "n_runs": [2], "ppv_mean": [0.5], "ppv_sd": [0.1],
                        "recall_mean": [0.25], "recall_sd": [np.nan], "f1_mean": [0.3],
                        "f1_sd": [0.0]})
    row = cv_report.table4_beside_paper(cls).iloc[0]
    assert (row["PPV"], row["PPV (paper)"]) == ("50.00 ± 10.00", "91.67 ± 2.56")
    assert row["Recall"] == "25.00"  # a single run has no sd




def test_binary_beside_paper_picks_a_model_within_an_experiment():
    base = _predictions(0)  # covidnet: accuracy 3/6
    cit = _predictions(0, ("a", "b", "c", "d")).assign(model="covid-sdnet")  # all correct
    preds = pd.concat([base, cit])
    binary = cv_report.binary_metrics(summarize(class_metrics(preds)),
                                      summarize(global_metrics(preds)))
    rows = cv_report.cit_rows(binary, "sdnet")
    assert rows == {("sdnet", "covid-sdnet"): "COVID-SDNet"}  # no fucitnet rows here
    beside = cv_report.binary_beside_paper(
        binary, {("sdnet", "covidnet"): "ResNet-50 with segmentation", **rows}).set_index("metric")
    assert beside.loc["accuracy", "sdnet/covidnet"] == "50.00"
    assert beside.loc["accuracy", "sdnet/covid-sdnet"] == "100.00"
    assert beside.loc["accuracy", "COVID-SDNet (paper)"] == "76.18 ± 2.70"
    assert cv_report.cit_rows(binary, "exp1") == {}
    with pytest.raises(ValueError, match="model 'fucitnet' has no rows"):
        cv_report.binary_beside_paper(binary, {("sdnet", "fucitnet"): "FuCiTNet"})


def test_cutoff_beside_paper_by_hand():
    from cxrlib.train.predictions import make_predictions

    # two images per patient; covid19 scores .9/.7 and .6/.4 (COVID-19 patients), .3/.1 (control)
    # and .45/.35 (pneumonia): patient means .8, .5 | .2, .4
    covid = np.array([.9, .7, .6, .4, .3, .1, .45, .35])
    labels = ["covid19"] * 4 + ["control"] * 2 + ["pneumonia"] * 2
    probs = np.stack([(1 - covid) / 2, (1 - covid) / 2, covid], axis=1)
    ids = [f"i{k}" for k in range(8)]
    preds = make_predictions(ids, labels, probs, ["control", "pneumonia", "covid19"],
                             experiment="exp1", model="covidnet", method="m", repetition=0,
                             fold=0)
    manifest = pd.DataFrame({"image_id": ids, "patient_id": np.repeat(["a", "b", "c", "d"], 2),
                             "study_date": "2020-04-01"})
    table = cv_report.cutoff_beside_paper(preds, manifest, positives=("covid19",), n_boot=20)
    value = table.set_index("metric")["value"]
    assert (table["level"] == "patient").all() and (table["n"] == 4).all()
    # patients: threshold .5 separates them all
    assert value["threshold"] == pytest.approx(0.5) and value["accuracy"] == 1.0
    assert (value["detection_rate"], value["fpr"], value["ppv"]) == (1.0, 0.0, 1.0)
    assert np.isinf(value["lr_plus"]) and value["lr_minus"] == 0.0
    paper = table.set_index("metric")["paper"]
    assert paper["detection_rate"] == pytest.approx(0.918) and paper["lr_plus"] == 86.3
    assert np.isnan(paper["threshold"])
    # a manifest without study dates: each patient's images are averaged together, as here
    undated = cv_report.cutoff_beside_paper(preds, manifest.drop(columns="study_date"),
                                            positives=("covid19",), n_boot=20)
    pd.testing.assert_frame_equal(undated, table)
    # images: the most accurate threshold (ties to the highest) is .6: 3 of 4 detected, no FP
    images = cv_report.cutoff_beside_paper(preds, manifest, positives=("covid19",),
                                           by_patient=False, n_boot=20).set_index("metric")
    assert images.loc["threshold", "value"] == pytest.approx(0.6)
    assert images.loc["detection_rate", "value"] == 0.75 and images.loc["fpr", "value"] == 0.0
    assert (images["level"] == "image").all() and (images["n"] == 8).all()
    with pytest.raises(ValueError, match="none of the classes"):
        cv_report.cutoff_beside_paper(preds, manifest, positives=("tuberculosis",))


def test_format_cutoff_reads_percent_and_ratios():
    table = pd.DataFrame({
        "experiment": "exp1", "model": "covidnet", "method": "m", "repetition": 0,
        "positive": "covid19", "level": "patient", "n": 40,
        "metric": ["threshold", "detection_rate", "lr_plus"], "value": [0.42, 0.9, 12.5],
        "ci_low": [0.3, 0.8, 6.0], "ci_high": [0.5, 0.95, np.inf], "paper": [np.nan, 0.918, 86.3]})
    row = cv_report.format_cutoff(table).iloc[0]
    assert row["detection_rate"] == "90.0 [80.0, 95.0]" and row["detection_rate (paper)"] == "91.8"
    assert row["lr_plus"] == "12.50 [6.00, inf]" and row["lr_plus (paper)"] == "86.30"
    assert row["threshold"] == "0.42 [0.30, 0.50]" and "threshold (paper)" not in row.index


def test_plot_auc_by_train_fraction_draws_one_line_per_model():
    table = pd.DataFrame({"view": "exp1", "model": ["covidnet"] * 2 + ["vgg16"] * 2,
                          "method": "m", "repetition": 0, "train_fraction": [0.9, 0.33] * 2,
                          "n_test": 10, "auc": [0.9, 0.8, 0.7, 0.6]})
    fig = cv_report.plot_auc_by_train_fraction(table)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2
    assert list(lines[0].get_xdata()) == pytest.approx([33, 90])  # sorted by share
    assert list(lines[0].get_ydata()) == [0.8, 0.9]
    with pytest.raises(ValueError, match="no train fraction"):
        cv_report.plot_auc_by_train_fraction(table.iloc[:0])
