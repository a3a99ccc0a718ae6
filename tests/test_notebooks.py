"""Smoke runs: every notebook through papermill at the smoke profile, on both synthetic cohorts,
checking the tables and artifacts they write.

One run of the whole study is shared by the tests of this module (module-scoped fixture); the
synthetic cohorts are generated into a temporary data folder, not the user's ``data/``.
"""
import json

import pandas as pd
import pytest

from cxrlib.paths import NOTEBOOKS_DIR
from cxrlib.runner import list_notebooks, run_study

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    out = tmp_path_factory.mktemp("run")
    mp = pytest.MonkeyPatch()
    mp.setenv("CXR_DATA_DIR", str(data))
    try:
        record = run_study("smoke", out_dir=out, log=lambda *a: None)
    finally:
        mp.undo()
    return record, out


def test_every_notebook_ran_on_both_cohorts(smoke_run):
    record, out = smoke_run
    assert record.status == "ok"
    ran = {(r.cohort, r.notebook) for r in record.results if r.status == "ok"}
    for nb in list_notebooks(None, NOTEBOOKS_DIR):
        presets = json.loads(nb.read_text()).get("metadata", {}).get("cxr_study", {}).get("presets")
        for cohort in presets or ("arias", "covidgr"):
            assert (cohort, nb.name) in ran
            assert (out / cohort / nb.name).is_file()
            assert (out / cohort / (nb.stem + ".html")).stat().st_size > 10_000
    index = (out / "index.html").read_text()
    assert "arias/00_data_audit.html" in index and "covidgr/00_data_audit.html" in index


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

    covidgr = pd.read_csv(out / "covidgr" / "tables" / "cohort_by_class_source.csv").set_index("source")
    assert covidgr.loc["total", "control"] == covidgr.loc["total", "covid19"] == 32
    comp = pd.read_csv(out / "covidgr" / "tables" / "covidgr_composition.csv").set_index("class")
    sev = comp.loc["positive", ["normal_pcr_pos", "mild", "moderate", "severe"]]
    assert sev.sum() == 32


def test_split_plan_artifact(smoke_run):
    _, out = smoke_run
    for cohort in ("arias", "covidgr"):
        plan = pd.read_csv(out / cohort / "artifacts" / "split_plan.csv")
        assert plan.groupby(["repetition", "group"])["fold"].nunique().max() == 1
        assert set(plan["fold"]) == {0, 1}  # smoke profile: 2 folds


def test_figures_written(smoke_run):
    _, out = smoke_run
    for name in ("examples_by_class_source", "intensity_histograms"):
        assert (out / "arias" / "figures" / f"{name}.png").stat().st_size > 5_000
