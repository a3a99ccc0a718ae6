"""Notebook 02 (class-inherent transformations, FuCiTNet and COVID-SDNet) in the smoke run: its
tables, figures and predictions rows, and their place in notebook 03's seed-000 tables. The
training table is checked against the split files and the predictions its folds wrote."""
import pandas as pd
import pytest

from cxrlib.train.predictions import read_predictions

pytestmark = pytest.mark.notebook


def test_notebook_02_runs_on_the_binary_cohort_only(smoke_run):
    record, out = smoke_run
    status = {r.cohort: r.status for r in record.results
              if r.notebook.startswith("02_cit_training")}
    assert status == {"arias-noshortcut": "skipped", "arias": "skipped", "covidgr": "ok"}


def test_cit_training_table(smoke_run):
    _, out = smoke_run
    table = pd.read_csv(out / "covidgr" / "tables" / "cit_training.csv")
    for column in ("experiment", "lam", "repetition", "fold", "n_train", "n_valid", "n_test",
                   "epochs_run", "best_epoch", "valid_accuracy", "fucitnet_test_accuracy",
                   "sdnet_test_accuracy", "cit_seconds", "perceptual"):
        assert column in table.columns, column
    main = table[table["lam"] == 0.05]
    assert set(main["experiment"]) == {"sdnet", "sdnet@no_npcr"}
    assert sorted(main.loc[main["experiment"] == "sdnet", "fold"]) == [0, 1]
    assert set(table.loc[table["experiment"] == "sdnet", "lam"]) == {0.0, 0.05}  # the sweep
    assert table["perceptual"].str.contains("VGG16").all()
    # smoke trains every fold of its 2-fold plan: each fold's train + valid + test is the whole
    # cohort, and the test folds partition it
    for _, runs in main.groupby("experiment"):
        totals = runs["n_train"] + runs["n_valid"] + runs["n_test"]
        assert totals.nunique() == 1 and totals.iloc[0] == runs["n_test"].sum()
    # each fold's train / valid / test counts, from the split file it wrote
    artifacts = out / "covidgr" / "artifacts"
    runs = pd.read_csv(artifacts / "cit_runs.csv").set_index(
        ["experiment", "lam", "repetition", "fold"])
    for row in table.itertuples():
        split = pd.read_csv(artifacts / runs.loc[(row.experiment, row.lam, row.repetition,
                                                  row.fold), "split"])
        roles = split["role"].value_counts()
        assert (row.n_train, row.n_valid, row.n_test) == (roles["train"], roles["valid"],
                                                          roles["test"])
    # the test accuracies of the main runs (the lambda sweep writes no predictions), from the
    # predictions each fold wrote: FuCiTNet's CiT classifier and the COVID-SDNet fusion
    preds = read_predictions(artifacts / "predictions.parquet")
    for row in main.itertuples():
        fold = preds[(preds["experiment"] == row.experiment)
                     & (preds["repetition"] == row.repetition) & (preds["fold"] == row.fold)]
        for model, column in (("fucitnet", "fucitnet_test_accuracy"),
                              ("covid-sdnet", "sdnet_test_accuracy")):
            rows = fold[fold["model"] == model]
            accuracy = (rows["label"] == rows["predicted"]).mean()
            assert len(rows) == row.n_test and getattr(row, column) == pytest.approx(accuracy)
    curves = pd.read_csv(out / "covidgr" / "tables" / "cit_loss_curves.csv")
    assert {"train_pixel", "train_perceptual", "train_tv", "train_ce", "valid_loss"} \
        <= set(curves.columns)


def test_cit_figures_written(smoke_run):
    _, out = smoke_run
    for name in ("cit_transforms", "cit_loss_curves"):
        path = out / "covidgr" / "figures" / f"{name}.png"
        assert path.is_file() and path.stat().st_size > 5_000, name


def test_predictions_rows_of_both_methods(smoke_run):
    _, out = smoke_run
    preds = read_predictions(out / "covidgr" / "artifacts" / "predictions.parquet")
    plan = pd.read_csv(out / "covidgr" / "artifacts" / "split_plan.csv", dtype={"image_id": str})
    for experiment in ("sdnet", "sdnet@no_npcr"):
        baseline = preds[(preds["experiment"] == experiment) & (preds["model"] == "covidnet")]
        for model in ("fucitnet", "covid-sdnet"):
            rows = preds[(preds["experiment"] == experiment) & (preds["model"] == model)]
            assert len(rows) == len(baseline) > 0, (experiment, model)
            assert set(rows["image_id"]) == set(baseline["image_id"])
            fold_of = plan[plan["repetition"] == 0].set_index("image_id")["fold"]
            assert (rows["fold"].to_numpy() == fold_of[rows["image_id"]].to_numpy()).all()


def test_notebook_03_tables_include_the_cit_methods(smoke_run):
    _, out = smoke_run
    tables = out / "covidgr" / "tables"
    table5 = pd.read_csv(tables / "cv_table5_vs_paper.csv").set_index("metric")
    for column in ("sdnet/fucitnet", "sdnet/covid-sdnet", "sdnet/covidnet", "exp1/covidnet"):
        assert column in table5.columns, column
    assert table5.loc["accuracy", "COVID-SDNet (paper)"] == "76.18 ± 2.70"
    assert table5.loc["accuracy", "FuCiTNet (paper)"] == "74.35 ± 3.34"
    table7 = pd.read_csv(tables / "cv_table7_vs_paper.csv").set_index("metric")
    assert table7.loc["accuracy", "COVID-SDNet (paper)"] == "81.00 ± 2.87"
    assert "sdnet@no_npcr/covid-sdnet" in table7.columns
    performance = pd.read_csv(tables / "cv_performance.csv")
    assert {"fucitnet", "covid-sdnet"} <= set(performance["model"])
    severity = pd.read_csv(tables / "severity_accuracy.csv")
    assert {"fucitnet", "covid-sdnet"} <= set(severity.loc[severity["experiment"] == "sdnet",
                                                           "model"])
