import numpy as np
import pandas as pd
import pytest
from scipy.stats import gmean
from sklearn.metrics import (
    accuracy_score, balanced_accuracy_score, precision_recall_fscore_support, roc_auc_score,
)

from cxrlib.analysis.metrics import (
    auc_by_train_fraction, binary_rates, class_metrics, confusion_matrices,
    cutoff_metrics, format_mean_sd, global_from_confusion, global_metrics, mean_roc,
    optimal_cutoff, patient_bootstrap_weights, per_class_from_confusion, roc_curves, summarize,
    severity_accuracy, training_curves,
)
from cxrlib.train.predictions import make_predictions

CLASSES = ["control", "pneumonia", "covid19"]
# rows = true class, columns = predicted class
CM = np.array([[8, 1, 1],
               [2, 6, 2],
               [0, 1, 4]])


def table_from_confusion(cm, classes=CLASSES, fold=0, experiment="exp1", seed=0):
    """A predictions table whose argmax reproduces ``cm``."""
    rng = np.random.default_rng(seed)
    labels, probs = [], []
    for i, row in enumerate(cm):
        for j, count in enumerate(row):
            for _ in range(count):
                p = rng.random(len(classes)) * 0.2
                p[j] = 1.0
                probs.append(p / p.sum())
                labels.append(classes[i])
    ids = [f"{experiment}_f{fold}_{k}" for k in range(len(labels))]
    return make_predictions(ids, labels, np.array(probs), classes, experiment=experiment,
                            model="covidnet", method="arias2020", repetition=0, fold=fold)


def test_per_class_rates_match_the_hand_computation():
    table = per_class_from_confusion(CM, CLASSES)
    # control: TP 8, FP 2, FN 2, TN 13; pneumonia: TP 6, FP 2, FN 4, TN 13;
    # covid19: TP 4, FP 3, FN 1, TN 17
    np.testing.assert_allclose(table["ppv"], [8 / 10, 6 / 8, 4 / 7])
    np.testing.assert_allclose(table["recall"], [8 / 10, 6 / 10, 4 / 5])
    np.testing.assert_allclose(table["f1"], [16 / 20, 12 / 18, 8 / 12])
    np.testing.assert_allclose(table["specificity"], [13 / 15, 13 / 15, 17 / 20])
    assert table["support"].tolist() == [10, 10, 5]


def test_global_rates_match_the_hand_computation():
    out = global_from_confusion(CM)
    assert out["accuracy"] == pytest.approx(18 / 25)
    assert out["balanced_accuracy"] == pytest.approx((0.8 + 0.6 + 0.8) / 3)
    assert out["gmr"] == pytest.approx((0.8 * 0.6 * 0.8) ** (1 / 3))
    assert global_from_confusion([[5, 0], [3, 0]])["gmr"] == 0.0  # a class never found


def test_binary_rates_and_likelihood_ratios():
    r = binary_rates(tp=45, fp=5, fn=5, tn=45)
    assert ((r["detection_rate"], r["fpr"], r["ppv"], r["npv"])
            == pytest.approx((0.9, 0.1, 0.9, 0.9)))
    assert r["lr_plus"] == pytest.approx(9.0) and r["lr_minus"] == pytest.approx(0.1 / 0.9)
    r = binary_rates(tp=3, fp=0, fn=1, tn=4)
    assert r["lr_plus"] == np.inf and r["lr_minus"] == pytest.approx(0.25)
    assert np.isnan(binary_rates(tp=0, fp=0, fn=2, tn=2)["ppv"])


def test_table_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(3)
    n = 200
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array(CLASSES)[y]
    pred = make_predictions([str(i) for i in range(n)], labels, probs, CLASSES, experiment="exp1",
                            model="m", method="r", repetition=0, fold=0)
    per_class = class_metrics(pred).set_index("class").loc[CLASSES]
    p, r, f, _ = precision_recall_fscore_support(labels, pred["predicted"], labels=CLASSES)
    np.testing.assert_allclose(per_class["ppv"], p)
    np.testing.assert_allclose(per_class["recall"], r)
    np.testing.assert_allclose(per_class["f1"], f)
    np.testing.assert_allclose(per_class["auc"],
                               [roc_auc_score(y == k, probs[:, k]) for k in range(3)])
    overall = global_metrics(pred).iloc[0]
    assert overall["accuracy"] == pytest.approx(accuracy_score(labels, pred["predicted"]))
    assert overall["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels, pred["predicted"]))
    assert overall["gmr"] == pytest.approx(gmean(r))
    assert overall["auc_macro"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))


def test_mean_and_sd_over_folds():
    pred = pd.concat([table_from_confusion(CM, fold=0),
                      table_from_confusion(np.array([[10, 0, 0], [0, 10, 0], [0, 1, 4]]), fold=1)])
    per_fold = global_metrics(pred)
    assert per_fold["accuracy"].tolist() == pytest.approx([18 / 25, 24 / 25])
    summary = summarize(per_fold)
    row = summary.iloc[0]
    assert row["n_runs"] == 2
    assert row["accuracy_mean"] == pytest.approx(0.84)
    assert row["accuracy_sd"] == pytest.approx(np.std([0.72, 0.96], ddof=1))
    text = format_mean_sd(summary, ["accuracy"])
    assert text["accuracy"].iloc[0] == "84.00 ± 16.97"
    per_class = summarize(class_metrics(pred))
    assert set(per_class["class"]) == set(CLASSES) and (per_class["n_runs"] == 2).all()


def test_normalised_confusion_matrix():
    frame = (confusion_matrices(table_from_confusion(CM), by=())
             .pivot(index="true", columns="predicted", values="value").loc[CLASSES, CLASSES])
    np.testing.assert_allclose(frame.to_numpy(), CM / CM.sum(axis=1, keepdims=True))
    long = confusion_matrices(table_from_confusion(CM), normalize=None)
    assert long["count"].sum() == CM.sum() and (long["value"] == long["count"]).all()


def test_roc_curves_of_a_perfect_and_a_useless_classifier():
    perfect = table_from_confusion(np.diag([5, 5, 5]))
    curves = roc_curves(perfect, fpr_grid=np.array([0.0, 0.5, 1.0]))
    assert set(curves["class"]) == set(CLASSES) | {"macro", "micro"}
    assert (curves.loc[curves["fpr"] == 0.5, "tpr"] == 1.0).all()
    assert (curves.loc[curves["fpr"] == 0.0, "tpr"] == 0.0).all()
    averaged = mean_roc(pd.concat([curves, curves.assign(fold=1)]))
    assert (averaged["n_curves"] == 2).all() and (averaged["tpr_sd"] == 0).all()


def test_optimal_cutoff_by_hand():
    out = optimal_cutoff(np.array([0, 0, 1, 1], bool), np.array([0.1, 0.4, 0.35, 0.8]))
    # thresholds 0.8 and 0.35 both reach accuracy 3/4; the higher one wins
    assert out["threshold"] == 0.8 and out["accuracy"] == 0.75
    assert ((out["detection_rate"], out["fpr"], out["ppv"], out["npv"])
            == pytest.approx((0.5, 0, 1, 2 / 3)))
    assert out["lr_plus"] == np.inf and out["lr_minus"] == pytest.approx(0.5)


def _two_image_patients(n_patients=30, seed=0):
    rng = np.random.default_rng(seed)
    ids, labels, probs, manifest = [], [], [], []
    for p in range(n_patients):
        label = "covid19" if p % 3 == 0 else "control"
        score = rng.uniform(0.5, 1.0) if label == "covid19" else rng.uniform(0.0, 0.6)
        for k in range(2):
            ids.append(f"P{p}_{k}")
            labels.append(label)
            probs.append([1 - score, score])
            manifest.append({"image_id": f"P{p}_{k}", "patient_id": f"P{p}",
                             "study_date": "2020-03-01"})
    pred = make_predictions(ids, labels, np.array(probs), ["control", "covid19"], experiment="exp1",
                            model="covidnet", method="arias2020", repetition=0, fold=0)
    return pred, pd.DataFrame(manifest)


def test_cutoff_metrics_bootstrap_patients():
    pred, manifest = _two_image_patients()
    out = cutoff_metrics(pred, "covid19", manifest, n_boot=200, seed=1).set_index("metric")
    assert (out["n"] == 60).all() and (out["n_patients"] == 30).all()
    point = optimal_cutoff((pred["label"] == "covid19").to_numpy(), pred["p_covid19"].to_numpy())
    for metric in ("detection_rate", "fpr", "ppv", "npv", "accuracy"):
        assert out.loc[metric, "value"] == pytest.approx(point[metric])
        assert out.loc[metric, "ci_low"] <= point[metric] <= out.loc[metric, "ci_high"]
    assert out.loc["accuracy", "ci_low"] < out.loc["accuracy", "ci_high"]
    with pytest.raises(ValueError, match="resampling patients needs"):
        cutoff_metrics(pred, "covid19", None)
    with pytest.raises(ValueError, match="positive class 'pneumonia'"):
        cutoff_metrics(pred, "pneumonia", manifest)


def test_bootstrap_draws_whole_patients():
    patients = np.array(["a", "a", "b", "c", "c", "c"])
    weights = patient_bootstrap_weights(patients, n_boot=50, rng=0)
    assert weights.shape == (50, 6)
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 3] == weights[:, 5]).all()
    per_patient = weights[:, [0, 2, 3]]
    assert (per_patient.sum(axis=1) == 3).all()  # three patients drawn each time
    assert len({tuple(w) for w in per_patient}) > 1


def test_training_curves_read_the_logs(tmp_path):
    (tmp_path / "logs").mkdir()
    pd.DataFrame({"epoch": [0, 1], "train_loss": [1.0, 0.5], "valid_loss": [1.1, 0.9],
                  "accuracy": [0.4, 0.6], "balanced_accuracy_score": [0.3, 0.5], "lr": [1e-3, 1e-3],
                  "time": ["00:01", "00:01"]}).to_csv(tmp_path / "logs" / "a.csv", index=False)
    runs = pd.DataFrame([{"experiment": "exp1", "model": "covidnet", "method": "arias2020",
                          "repetition": 0, "fold": 2, "log": "logs/a.csv"}])
    runs.to_csv(tmp_path / "crossval_runs.csv", index=False)
    curves = training_curves(tmp_path)
    assert curves["fold"].tolist() == [2, 2] and curves["valid_loss"].tolist() == [1.1, 0.9]
    assert "balanced_accuracy" in curves and "time" not in curves


def test_auc_by_train_fraction():
    a = table_from_confusion(np.diag([4, 4, 4]), experiment="exp1@train50")
    b = table_from_confusion(CM, experiment="exp1@train90")
    out = auc_by_train_fraction(pd.concat([b, a, table_from_confusion(CM)]), "covid19")
    assert out["train_fraction"].tolist() == [0.5, 0.9] and out["view"].tolist() == ["exp1", "exp1"]
    assert out["auc"].iloc[0] == 1.0 and out["n_test"].tolist() == [12, 25]


def _severity_manifest():
    return pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e", "f"],
        "label": ["covid19", "covid19", "covid19", "covid19", "control", "control"],
        "severity": ["mild", "mild", "severe", "normal_pcr_pos", None, None],
    })


def _severity_predictions():
    ids, labels = list("abcdef"), list(_severity_manifest()["label"])
    probs = np.array([[0.2, 0.8] if i in "ace" else [0.7, 0.3] for i in ids])
    return make_predictions(ids, labels, probs, ["control", "covid19"], experiment="sdnet",
                            model="covidnet", method="m", repetition=0, fold=0)


def test_severity_accuracy_hand_computed():
    table = severity_accuracy(_severity_predictions(), _severity_manifest())
    # positives called positive: a (mild) and c (severe); b (mild) and d (normal_pcr_pos) missed
    assert list(table["severity"]) == ["normal_pcr_pos", "mild", "severe"]
    assert list(table["n"]) == [1, 2, 1]
    assert list(table["accuracy"]) == [0.0, 0.5, 1.0]
