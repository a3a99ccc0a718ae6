"""Smoke runs: every notebook through papermill at the smoke profile, on every synthetic cohort
(``arias-noshortcut``, ``arias``, ``covidgr``), checking the tables and artifacts they write.

One run of the whole study is shared by every notebook test file (the session fixture ``smoke_run``
in ``conftest.py``, run once across pytest-xdist workers); the synthetic cohorts are generated into
a temporary data folder, not the user's ``data/``. Notebooks 02 and later keep their checks in
``tests/test_notebook_NN_*.py``.
"""
import json
from pathlib import Path

import pandas as pd
import pytest

from cxrlib.paths import NOTEBOOKS_DIR
from cxrlib.runner import list_notebooks
from cxrlib.synthetic import COHORTS

pytestmark = pytest.mark.notebook


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
    assert (demo["males"] + demo["females"] <= demo["images"]).all()
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
        assert qc["mean_lung_fraction"].between(0, 1).all()
        flags = pd.read_csv(out / cohort / "artifacts" / "segmentation_qc.csv")
        assert len(flags) == n_images and flags["image_id"].is_unique
        assert flags["qc_pass"].sum() == qc.loc["total", "passed"]

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
        assert ours[["dice", "iou"]].stack().between(0, 1).all()
        assert (ours["iou"] <= ours["dice"] + 1e-12).all()  # IoU <= Dice image by image
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
        assert list(views.columns) == ["image_id", "view", "path"]
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
    glob = pd.read_csv(arias / "tables" / "cv_global.csv")
    assert glob["balanced_accuracy_mean"].between(0, 1).all()
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
    assert sev["accuracy_mean"].between(0, 1).all()
    table5 = pd.read_csv(covidgr / "tables" / "cv_table5_vs_paper.csv").set_index("metric")
    assert table5.loc["accuracy", "ResNet-50 with segmentation (paper)"] == "74.60 ± 2.93"
    classes = set(pd.read_csv(covidgr / "tables" / "cv_performance.csv")["class"])
    assert classes == {"control", "covid19"}
