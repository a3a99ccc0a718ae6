"""Notebook 04 (bias and shortcut analysis) in the smoke run of the whole study."""
import json

import numpy as np
import pandas as pd
import pytest

from cxrlib.shortcuts import MASKED_VIEWS, QUESTIONS

pytestmark = pytest.mark.notebook


def _table(out, name, cohort="arias"):
    path = out / cohort / "tables" / f"{name}.csv"
    assert path.is_file(), f"notebook 04 did not write {path}"
    return pd.read_csv(path)


def test_only_arias_is_analysed(smoke_run):
    _, out = smoke_run
    assert (out / "arias" / "04_bias_analysis.ipynb").is_file()
    assert not (out / "covidgr" / "tables" / "shortcut_probes.csv").exists()


def test_projection_table(smoke_run):
    _, out = smoke_run
    table = _table(out, "bias_projection")
    assert set(table["analysis"]) == {"stratified out-of-fold", "retrained per projection"}
    stratified = table[table["analysis"] == "stratified out-of-fold"]
    assert set(stratified["experiment"]) == {"exp1", "exp2", "exp3"}
    assert set(stratified["projection"]) <= {"PA", "AP"}
    assert set(table.loc[table["analysis"] != "stratified out-of-fold", "experiment"]) <= \
        {"exp1@PA", "exp1@AP"}
    rates = table[["ppv", "recall", "f1"]].to_numpy(dtype=float)
    assert np.nanmin(rates) >= 0 and np.nanmax(rates) <= 100  # percent
    assert table.loc[table["experiment"] == "exp1", "f1_paper"].notna().all()


def test_error_distribution_shares_add_up(smoke_run):
    _, out = smoke_run
    table = _table(out, "bias_error_distribution")
    assert set(table["factor"]) == {"projection", "sensor", "sex", "source", "age_band"}
    blocks = table.groupby(["experiment", "repetition", "factor", "class"])
    np.testing.assert_allclose(blocks["test_share"].sum(), 1.0)
    assert (blocks["n_test"].sum() == blocks["n_correct"].sum() + blocks["n_error"].sum()).all()
    assert table["p_value"].dropna().between(0, 1).all()


def test_subgroups_have_patient_bootstrap_cis(smoke_run):
    _, out = smoke_run
    table = _table(out, "bias_subgroups")
    assert set(table["metric"]) == {"auc", "sensitivity", "specificity"}
    assert "largest gap" in set(table["level"])
    both = table.dropna(subset=["ci_low", "ci_high"])
    assert len(both) and (both["ci_low"] <= both["ci_high"] + 1e-12).all()
    assert (table["n_patients"] <= table["n"]).all()
    age_sex = _table(out, "bias_error_age_sex")
    assert set(age_sex["test"]) <= {"age", "sex"} and len(age_sex)
    assert (out / "arias" / "figures" / "bias_subgroup_auc.png").is_file()


def test_probes_on_given_and_twin_cohorts(smoke_run):
    _, out = smoke_run
    probes = _table(out, "shortcut_probes")
    assert set(probes["cohort"]) == {"given", "twin"}
    assert dict(probes.groupby("cohort")["synth_shortcut"].first()) == {"given": 1.0, "twin": 0.0}
    logistic = probes[probes["model"] == "logistic"]
    assert set(zip(logistic["target"], logistic["input"])) == \
        {(t, v) for t in ("label", "source") for v in MASKED_VIEWS}
    assert (probes["model"] == "covidnet").sum() == 2  # lungs-removed control, both cohorts
    assert probes["balanced_accuracy"].between(0, 1).all()
    verdicts = _table(out, "shortcut_verdicts")
    assert set(verdicts["question"]) == set(QUESTIONS)
    assert set(verdicts["answer"]) <= {"yes", "no"}
    assert len(verdicts) == 2 * len(QUESTIONS)
    # the reading checks each cohort against what was planted
    nb = json.loads((out / "arias" / "04_bias_analysis.ipynb").read_text())
    texts = ["".join(o.get("data", {}).get("text/markdown", "")) for c in nb["cells"]
             for o in c.get("outputs", [])]
    reading = [t for t in texts if "Do all verdicts match what was planted?" in t]
    assert len(reading) == 1
    assert "given cohort (shortcut planted)" in reading[0]
    assert "twin cohort (shortcut absent)" in reading[0]


def test_external_validation_table(smoke_run):
    _, out = smoke_run
    table = _table(out, "external_validation")
    assert len(table)
    assert set(table["scenario"]) == {"hard", "soft 10%", "soft 40%"}
    hard = table[table["scenario"] == "hard"]
    soft = table[table["scenario"] == "soft 40%"]
    # soft transfer moves patients of the held-out source into training
    assert (soft["n_train"].to_numpy() > hard["n_train"].to_numpy()).all()
    assert table[["auc_internal", "auc_external"]].stack().between(0, 1).all()
