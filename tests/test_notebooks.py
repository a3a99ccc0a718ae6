"""Smoke runs: every notebook through papermill at the smoke profile, on every synthetic cohort
(``arias-noshortcut``, ``arias``, ``covidgr``), checking the tables and artifacts they write.

One run of the whole study is shared by every notebook test file (the session fixture ``smoke_run``
in ``conftest.py``, run once across pytest-xdist workers); the synthetic cohorts are generated into
a temporary data folder, not the user's ``data/``. Notebooks 02 and later keep their checks in
``tests/test_notebook_NN_*.py``.

The tables are checked against values recomputed from what they were computed from: the manifest,
the per-image files of the run (``artifacts/``) and the predicted and true lung masks.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score, balanced_accuracy_score, precision_recall_fscore_support, roc_auc_score,
)

from cxrlib.data.images import read_image, read_mask
from cxrlib.data.manifest import load_manifest
from cxrlib.paths import NOTEBOOKS_DIR
from cxrlib.train.predictions import MODEL_KEY, RUN_KEY, read_predictions
from cxrlib.runner import list_notebooks
from cxrlib.preprocess.segmentation import split_by_patient
from cxrlib.data.synthetic import COHORTS
from cxrlib.preprocess.views import BOX_COLUMNS, mask_file_name, view_box

pytestmark = pytest.mark.notebook


def _manifest(out, cohort):
    """The manifest a cohort of the run was analysed with (its ``data_root`` in ``attrs``)."""
    path = json.loads((out / "study.json").read_text())["cohorts"][cohort]["manifest"]
    return load_manifest(path, check_files=False)


def _seed(out):
    return int(json.loads((out / "study.json").read_text())["settings"]["seed"])


def _assert_same(table, expected, keys):
    """``table``'s columns of ``expected`` equal ``expected`` row by row (matched on ``keys``)."""
    got = table.set_index(keys)[list(expected.columns)].sort_index()
    expected = expected.sort_index()
    assert got.index.equals(expected.index), (got.index, expected.index)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, check_exact=False,
                                  rtol=1e-9, atol=1e-12)


def test_every_notebook_ran_on_every_cohort_it_applies_to(smoke_run):
    record, out = smoke_run
    assert record.status == "ok"
    assert record.cohorts == list(COHORTS)  # the twin without the shortcut runs first
    ran = {(r.cohort, r.notebook) for r in record.results if r.status == "ok"}
    skipped = {(r.cohort, r.notebook) for r in record.results if r.status == "skipped"}
    for nb in list_notebooks(None, NOTEBOOKS_DIR):
        meta = json.loads(nb.read_text()).get("metadata", {})
        applies_to = meta.get("cxr_study", {}).get("cohorts")
        for cohort in COHORTS:
            if applies_to is None or cohort in applies_to:
                assert (cohort, nb.name) in ran
                assert (out / cohort / nb.name).is_file()
                assert (out / cohort / (nb.stem + ".html")).stat().st_size > 10_000
            else:
                assert (cohort, nb.name) in skipped and not (out / cohort / nb.name).exists()
    index = (out / "index.html").read_text()
    assert "arias/00_data_audit.html" in index and "covidgr/00_data_audit.html" in index
    assert "arias-noshortcut/06_gradcam.html" in index


def test_twin_cohort_is_arias_without_the_shortcut(smoke_run):
    _, out = smoke_run
    tables = {c: pd.read_csv(out / c / "tables" / "cohort_by_class_source.csv").set_index("source")
              for c in ("arias", "arias-noshortcut")}
    # same preset and size: the same images per class and source; only the acquisition differs
    pd.testing.assert_frame_equal(
        tables["arias"].drop(columns="patients", errors="ignore"),
        tables["arias-noshortcut"].drop(columns="patients", errors="ignore"))
    for cohort, knob in (("arias", 1.0), ("arias-noshortcut", 0.0)):
        scores = pd.read_csv(out / cohort / "artifacts" / "cam_scores.csv")
        assert set(scores["synth_shortcut"]) == {knob}


def test_data_audit_tables(smoke_run):
    _, out = smoke_run
    arias = pd.read_csv(out / "arias" / "tables" / "cohort_by_class_source.csv").set_index("source")
    assert set(arias.columns) >= {"control", "pneumonia", "covid19", "total", "patients"}
    assert arias.loc["total", "total"] == 120  # smoke profile n_arias
    covid_sources = set(arias.index[(arias["covid19"] > 0)]) - {"total"}
    assert covid_sources <= {"HM Hospitales", "BIMCV", "ACT"}
    demo = pd.read_csv(out / "arias" / "tables" / "demographics_by_source.csv")
    assert len(demo) == 8 and demo["images"].sum() == 120
    # the counts per class and source, and the demographics, recomputed from the manifest
    manifest = _manifest(out, "arias")
    counts = pd.crosstab(manifest["source"], manifest["label"])
    for cls in counts.columns:
        assert (arias.loc[counts.index, cls] == counts[cls]).all(), cls
    assert (arias.loc[counts.index, "total"] == counts.sum(axis=1)).all()
    g = manifest.groupby("source")
    expected = pd.DataFrame({
        "images": g.size(), "patients": g["patient_id"].nunique(),
        "age_mean": g["age"].mean().round(1), "age_sd": g["age"].std().round(1),
        "males": g["sex"].apply(lambda s: (s == "M").sum()),
        "females": g["sex"].apply(lambda s: (s == "F").sum()),
        "ap": g["projection"].apply(lambda s: (s == "AP").sum()),
        "pa": g["projection"].apply(lambda s: (s == "PA").sum()),
        "dx": g["sensor"].apply(lambda s: (s == "DX").sum()),
        "cr": g["sensor"].apply(lambda s: (s == "CR").sum())})
    _assert_same(demo, expected, "source")
    support = pd.read_csv(out / "arias" / "tables" / "corpus_support.csv")
    assert support["class"].tolist() == ["control", "pneumonia", "covid19"]
    assert support["enough"].all() and (support["folds"] == 2).all()

    covidgr = pd.read_csv(out / "covidgr" / "tables" / "cohort_by_class_source.csv"
                          ).set_index("source")
    assert covidgr.loc["total", "control"] == covidgr.loc["total", "covid19"] == 32
    comp = pd.read_csv(out / "covidgr" / "tables" / "covidgr_composition.csv").set_index("class")
    sev = comp.loc["positive", ["normal_pcr_pos", "mild", "moderate", "severe"]]
    assert sev.sum() == 32


def test_split_plan_artifact(smoke_run):
    _, out = smoke_run
    for cohort in COHORTS:
        plan = pd.read_csv(out / cohort / "artifacts" / "split_plan.csv")
        assert plan.groupby(["repetition", "group"])["fold"].nunique().max() == 1
        assert set(plan["fold"]) == {0, 1}  # smoke profile: 2 folds


def test_figures_written(smoke_run):
    _, out = smoke_run
    for name in ("examples_by_class_source", "intensity_histograms"):
        assert (out / "arias" / "figures" / f"{name}.png").stat().st_size > 5_000


def test_lung_segmentation_tables(smoke_run):
    _, out = smoke_run
    for cohort, n_images in (("arias-noshortcut", 120), ("arias", 120), ("covidgr", 64)):
        tables = out / cohort / "tables"
        qc = pd.read_csv(tables / "segmentation_qc.csv").set_index("source")
        assert qc.loc["total", "images"] == n_images
        per_source = qc.drop(index="total")
        assert per_source["images"].sum() == n_images
        assert (qc["passed"] + qc["flagged"] == qc["images"]).all()
        manifest = _manifest(out, cohort)
        flags = pd.read_csv(out / cohort / "artifacts" / "segmentation_qc.csv",
                            dtype={"image_id": str})
        assert len(flags) == n_images and flags["image_id"].is_unique
        # the summary per source and in all, recomputed from the per-image QC file
        flags = flags.merge(manifest[["image_id", "source"]], on="image_id", validate="1:1")
        summary = pd.concat([flags, flags.assign(source="total")])
        g = summary.groupby("source")
        expected = pd.DataFrame({
            "images": g.size(), "passed": g["qc_pass"].sum(),
            "low_lung_fraction": g["qc_lung_fraction"].apply(lambda f: (f < 0.20).sum()),
            "mean_lung_fraction": g["qc_lung_fraction"].mean().round(3)})
        _assert_same(qc.reset_index(), expected, "source")

        scores = pd.read_csv(tables / "segmentation_scores.csv")
        paper = scores[scores["what"] == "paper"].set_index("name")
        assert paper.loc["JSRT", "dice"] == 0.985 and paper.loc["JSRT", "iou"] == 0.971
        ours = scores[scores["what"] == "reproduced"]
        assert set(ours["group"]) == {"source", "label", "all"}
        overall = ours[ours["group"] == "all"].iloc[0]
        # held-out patients only: about 20% of the images, and every group adds up to them
        assert 0 < overall["n"] < n_images / 2
        assert ours.loc[ours["group"] == "source", "n"].sum() == overall["n"]
        assert ours.loc[ours["group"] == "label", "n"].sum() == overall["n"]
        assert (ours["iou"] <= ours["dice"] + 1e-12).all()  # IoU <= Dice image by image
        # Dice and IoU recomputed from the saved predicted masks and the true masks of the
        # U-Net's held-out patients (the same patient split, drawn again with the run's seed)
        with_masks = manifest[manifest["lung_mask_path"].fillna("").astype(str).str.strip() != ""]
        held_out = with_masks[split_by_patient(with_masks, seed=_seed(out)) == "test"]
        root = Path(manifest.attrs["data_root"])
        per_image = []
        for image_id, truth_path in zip(held_out["image_id"], held_out["lung_mask_path"]):
            pred = read_mask(out / cohort / "artifacts" / "lung_masks" / mask_file_name(image_id))
            truth = read_mask(root / truth_path)
            both, union = (pred & truth).sum(), (pred | truth).sum()
            total = pred.sum() + truth.sum()
            per_image.append((2 * both / total if total else 1.0, both / union if union else 1.0))
        per_image = held_out[["source", "label"]].assign(
            dice=[d for d, _ in per_image], iou=[i for _, i in per_image], all="all")
        for group in ("source", "label", "all"):
            g = per_image.groupby(group)
            expected = pd.DataFrame({"n": g.size(), "dice": g["dice"].mean(),
                                     "dice_sd": g["dice"].std(), "iou": g["iou"].mean(),
                                     "iou_sd": g["iou"].std()}).rename_axis("name")
            _assert_same(ours[ours["group"] == group], expected, "name")
    # arias trains on ~80 images: the smoke U-Net already finds the lungs
    arias_qc = pd.read_csv(out / "arias" / "tables" / "segmentation_qc.csv").set_index("source")
    assert arias_qc.loc["total", "passed"] > 60


def test_lung_segmentation_artifacts_and_views(smoke_run):
    _, out = smoke_run
    for cohort in COHORTS:
        artifacts = out / cohort / "artifacts"
        assert (artifacts / "unet_lung.pt").stat().st_size > 10_000
        assert json.loads((artifacts / "unet_lung.json").read_text())["size"] == 64  # smoke
        flags = pd.read_csv(artifacts / "segmentation_qc.csv")
        assert len(list((artifacts / "lung_masks").glob("*.png"))) == len(flags)
        views = pd.read_csv(artifacts / "views.csv")
        assert list(views.columns) == ["image_id", "view", "path", *BOX_COLUMNS]
        # each view's box of the original image, recomputed from the image and predicted mask
        manifest = _manifest(out, cohort)
        root = Path(manifest.attrs["data_root"])
        manifest = manifest.set_index("image_id")
        for rec in views.groupby("view").head(2).itertuples(index=False):
            shape = read_image(root / manifest.loc[rec.image_id, "path"]).shape
            mask = read_mask(artifacts / "lung_masks" / mask_file_name(rec.image_id))
            assert tuple(getattr(rec, c) for c in BOX_COLUMNS) == view_box(
                rec.view, shape, mask, size=64), (cohort, rec.image_id, rec.view)
        assert set(views["view"]) <= {"exp1", "exp2", "exp3", "sdnet"}
        assert not views.duplicated(["image_id", "view"]).any()
        per_image = views.groupby("image_id")["view"].nunique()
        assert set(per_image.index) == set(flags["image_id"])  # exp1 needs no mask
        passed = flags.loc[flags["qc_pass"], "image_id"]
        assert (per_image.reindex(passed) == 4).all()
        assert all(Path(p).is_file() for p in views["path"])
    figures = out / "arias" / "figures"
    for name in ("unet_training_curves", "segmentation_worst_cases", "segmentation_examples",
                 "views_paper_vs_public_code"):
        assert (figures / f"{name}.png").stat().st_size > 5_000


def test_classifier_cv_outputs(smoke_run):
    _, out = smoke_run
    arias = out / "arias"
    perf = pd.read_csv(arias / "tables" / "cv_performance.csv")
    assert set(zip(perf["experiment"], perf["class"])) == {
        (e, c) for e in ("exp1", "exp2", "exp3") for c in ("control", "pneumonia", "covid19")}
    assert {"ppv_mean", "ppv_sd", "recall_mean", "f1_mean", "auc_mean"} <= set(perf.columns)
    assert (perf["n_runs"] == 2).all()  # smoke profile: 2 folds
    preds = pd.read_parquet(arias / "artifacts" / "predictions.parquet")
    qc = pd.read_csv(arias / "artifacts" / "segmentation_qc.csv")
    per_experiment = preds.groupby("experiment")["image_id"].nunique()
    # every image that passed QC (and has the view) is a test image exactly once
    assert per_experiment["exp1"] == qc["qc_pass"].sum()
    assert not preds.duplicated(["experiment", "model", "method", "image_id"]).any()
    assert not set(preds["image_id"]) & set(qc.loc[~qc["qc_pass"], "image_id"])
    for name in ("cv_roc_curves", "cv_confusion_matrices"):
        assert (arias / "figures" / f"{name}.png").stat().st_size > 5_000

    covidgr = out / "covidgr"
    sev = pd.read_csv(covidgr / "tables" / "severity_accuracy.csv")
    assert set(sev["experiment"]) == {"sdnet", "exp1", "sdnet@no_npcr"}
    assert "normal_pcr_pos" not in set(sev.loc[sev["experiment"] == "sdnet@no_npcr", "severity"])
    table5 = pd.read_csv(covidgr / "tables" / "cv_table5_vs_paper.csv").set_index("metric")
    assert table5.loc["accuracy", "ResNet-50 with segmentation (paper)"] == "74.60 ± 2.93"
    classes = set(pd.read_csv(covidgr / "tables" / "cv_performance.csv")["class"])
    assert classes == {"control", "covid19"}


def _summary(per_run, keys):
    """Mean and sd (ddof 1, NaN skipped) over the runs of each group, and ``n_runs``."""
    g = per_run.groupby(keys)
    metrics = [c for c in per_run.columns if c not in keys and c not in RUN_KEY]
    out = pd.concat({f"{m}_{stat}": getattr(g[m], stat)() for m in metrics
                     for stat in ("mean", "std")}, axis=1)
    return out.rename(columns=lambda c: c.replace("_std", "_sd")).assign(n_runs=g.size())


@pytest.mark.parametrize("cohort", COHORTS)
def test_cv_tables_recomputed_from_the_predictions(smoke_run, cohort):
    """Notebook 03's per-class, global and severity tables, recomputed with scikit-learn from the
    out-of-fold predictions of every trained fold, then averaged over the folds."""
    _, out = smoke_run
    tables = out / cohort / "tables"
    perf = pd.read_csv(tables / "cv_performance.csv")
    glob = pd.read_csv(tables / "cv_global.csv")
    preds = read_predictions(out / cohort / "artifacts" / "predictions.parquet")
    preds = preds[preds["experiment"].isin(set(glob["experiment"]))]
    classes = [c[2:] for c in preds.columns if c.startswith("p_")]
    per_class, per_run = [], []
    for key, part in preds.groupby(list(RUN_KEY)):
        truth, called = part["label"].to_numpy(), part["predicted"].to_numpy()
        ppv, recall, f1, _ = precision_recall_fscore_support(truth, called, labels=classes,
                                                             zero_division=np.nan)
        aucs = []
        for j, cls in enumerate(classes):
            positive = truth == cls
            auc = roc_auc_score(positive, part[f"p_{cls}"]) if 0 < positive.sum() < len(part) \
                else np.nan
            aucs.append(auc)
            negative = ~positive
            per_class.append({**dict(zip(RUN_KEY, key)), "class": cls, "ppv": ppv[j],
                              "recall": recall[j], "f1": f1[j],
                              "specificity": (negative & (called != cls)).sum() / negative.sum(),
                              "auc": auc})
        recalls = recall[[(truth == c).any() for c in classes]]
        per_run.append({**dict(zip(RUN_KEY, key)), "accuracy": accuracy_score(truth, called),
                        "balanced_accuracy": balanced_accuracy_score(truth, called),
                        "gmr": float(np.prod(recalls) ** (1 / len(recalls))),
                        "auc_macro": np.nanmean(aucs)})
    _assert_same(perf, _summary(pd.DataFrame(per_class), [*MODEL_KEY, "class"]),
                 [*MODEL_KEY, "class"])
    _assert_same(glob, _summary(pd.DataFrame(per_run), list(MODEL_KEY)), list(MODEL_KEY))

    # Table 6: the share of the COVID-19 images of each severity grade called COVID-19
    severity = _manifest(out, cohort).set_index("image_id")["severity"]
    positives = preds[preds["label"] == "covid19"].assign(
        severity=lambda p: p["image_id"].map(severity))
    positives = positives[positives["severity"].fillna("").astype(str) != ""]
    per_grade = (positives.assign(accuracy=positives["predicted"] == "covid19")
                 .groupby([*RUN_KEY, "severity"])["accuracy"].mean().reset_index())
    sev = pd.read_csv(tables / "severity_accuracy.csv")
    _assert_same(sev, _summary(per_grade, [*MODEL_KEY, "severity"]), [*MODEL_KEY, "severity"])


def test_seed003_cutoff_and_train_fraction_sweep_recomputed(smoke_run):
    """Notebook 03's seed 003 tables: the patient-level optimal cut-off of COVID-19 recomputed
    with pandas and scikit-learn from the exp1 predictions, and the train-fraction sweep's AUCs
    from the sweep's own predictions table."""
    from sklearn.metrics import roc_curve

    from cxrlib.profiles import get_profile

    _, out = smoke_run
    manifest = _manifest(out, "arias").set_index("image_id")
    preds = read_predictions(out / "arias" / "artifacts" / "predictions.parquet")
    main = preds[(preds["experiment"] == "exp1") & (preds["model"] == "covidnet")]
    # one unit per patient and day, its score the mean of its images' scores
    units = main.assign(patient=main["image_id"].map(manifest["patient_id"]),
                        day=main["image_id"].map(manifest["study_date"]))
    units = units.groupby(["patient", "day", "label"])["p_covid19"].mean().reset_index()
    positive = (units["label"] == "covid19").to_numpy()
    fpr, tpr, thresholds = roc_curve(positive, units["p_covid19"], drop_intermediate=False)
    accuracy = (tpr * positive.sum() + (1 - fpr) * (~positive).sum()) / len(units)
    best = int(np.argmax(accuracy))
    cutoff = pd.read_csv(out / "arias" / "tables" / "cv_cutoff_seed003.csv")
    ours = cutoff[cutoff["positive"] == "covid19"].set_index("metric")
    assert (ours["level"] == "patient").all() and (ours["n"] == len(units)).all()
    assert ours.loc["threshold", "value"] == pytest.approx(thresholds[best])
    assert ours.loc["accuracy", "value"] == pytest.approx(accuracy[best])
    assert ours.loc["detection_rate", "value"] == pytest.approx(tpr[best])
    assert ours.loc["fpr", "value"] == pytest.approx(fpr[best])
    assert ours.loc["detection_rate", "paper"] == pytest.approx(0.918)

    sweep = read_predictions(out / "arias" / "artifacts" / "train_fraction_sweep"
                             / "predictions.parquet")
    table = pd.read_csv(out / "arias" / "tables" / "cv_train_fraction_auc.csv")
    fractions = get_profile("smoke").sweep_train_fractions
    assert table["train_fraction"].tolist() == pytest.approx(sorted(fractions))
    for rec in table.itertuples(index=False):
        part = sweep[sweep["experiment"] == f"exp1@train{round(100 * rec.train_fraction)}"]
        assert rec.n_test == len(part)
        assert rec.auc == pytest.approx(roc_auc_score(part["label"] == "covid19",
                                                      part["p_covid19"]))
    # the held-out patients are the share the fraction leaves out, and never trained on
    for f in fractions:
        plan = pd.read_csv(out / "arias" / "artifacts" / "train_fraction_sweep"
                           / f"split_plan_train{round(100 * f)}.csv")
        tested = plan.loc[plan["fold"] == 0, "group"].nunique() / plan["group"].nunique()
        assert tested == pytest.approx(1 - f, abs=0.1)
    assert not preds["experiment"].str.contains("@train").any()  # kept apart from the CV
