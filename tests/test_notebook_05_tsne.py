"""Notebook 05 (t-SNE and neighbourhood purity) in the smoke run of the whole study."""
import json

import numpy as np
import pandas as pd
import pytest

from cxrlib.predictions import load_embeddings

pytestmark = pytest.mark.notebook

KEY = ["experiment", "model", "method", "split", "factor", "within"]


def _purity(out, cohort):
    table = pd.read_csv(out / cohort / "tables" / "embedding_purity.csv",
                        keep_default_na=False, na_values=[""])
    within = table["within"].astype(object)
    table["within"] = within.where(within.notna(), "")
    return table


def test_purity_table_arias(smoke_run):
    _, out = smoke_run
    table = _purity(out, "arias")
    assert not table.duplicated(KEY).any()
    # seed 001's three experiments, and at the smoke profile seeds 002/004's hold-out VGG16s
    assert {"exp1", "exp2", "exp3"} <= set(table["experiment"]) <= {
        "exp1", "exp2", "exp3", "exp1@holdout", "raw@holdout"}
    assert set(table["split"]) == {"train", "test"}
    pairs = set(zip(table["factor"], table["within"]))
    assert {("label", ""), ("source", ""), ("source", "label")} <= pairs
    # smoke: two trained folds per cross-validated experiment, one hold-out split for seeds 002/004
    holdout = table["experiment"].str.endswith("@holdout")
    assert (table.loc[~holdout, "n_runs"] == 2).all() and (table.loc[holdout, "n_runs"] == 1).all()
    for col in ("purity_mean", "chance_mean"):
        assert table[col].between(0, 1).all()
    assert (table["above_chance_mean"] <= 1).all()
    label = table[table["factor"] == "label"]
    assert (label["n_groups"] == 3).all() and (label["k"] == 10).all()


def test_chance_level_matches_the_embeddings(smoke_run):
    """The class chance level of exp1's test images, recomputed from notebook 03's files."""
    _, out = smoke_run
    table = _purity(out, "arias").set_index(KEY)
    chances = []
    for fold in (0, 1):
        meta, _ = load_embeddings(out / "arias" / "artifacts" / "embeddings"
                                  / f"exp1_covidnet_arias2020-fast_r0_f{fold}.npz")
        counts = meta.loc[meta["split"] == "test", "label"].value_counts()
        n = counts.sum()
        chances.append((counts * (counts - 1)).sum() / (n * (n - 1)))
    row = table.loc[("exp1", "covidnet", "arias2020-fast", "test", "label", "")]
    assert row["chance_mean"] == pytest.approx(np.mean(chances))


def test_single_source_cohort_has_no_source_purity(smoke_run):
    _, out = smoke_run
    table = _purity(out, "covidgr")
    assert "source" not in set(table["factor"])
    assert {"label", "severity"} <= set(table["factor"])
    assert set(table["within"]) == {""}  # the severity is graded in one class only
    n = table.pivot_table(index=["experiment", "split"], columns="factor", values="n_images")
    # the severity is measured on the graded (COVID-19) images only: half the balanced cohort
    assert (n["severity"] < n["label"]).all() and (n["severity"] >= n["label"] / 4).all()


def test_figures_and_reading(smoke_run):
    _, out = smoke_run
    for cohort, factor in (("arias", "source"), ("covidgr", "severity")):
        figures = out / cohort / "figures"
        for name in ("tsne_by_class", f"tsne_by_{factor}_class"):
            assert (figures / f"{name}.png").stat().st_size > 10_000
        nb = json.loads((out / cohort / "05_tsne.ipynb").read_text())
        text = "".join("".join(o.get("data", {}).get("text/markdown", ""))
                       for c in nb["cells"] for o in c.get("outputs", []))
        assert "**Reading.** On the test images" in text
        for experiment, model, method in set(zip(*(_purity(out, cohort)[c] for c in
                                                     ("experiment", "model", "method")))):
            assert f"{experiment} ({model}, {method}): class " in text
    covidgr_text = (out / "covidgr" / "05_tsne.html").read_text()
    assert "no source purity" in covidgr_text


def test_purity_with_and_without_the_shortcut(smoke_run):
    _, out = smoke_run
    # the planted cohort runs after its twin and compares; the twin has nothing planted to compare
    twin_tables = out / "arias-noshortcut" / "tables"
    assert not (twin_tables / "embedding_purity_planted_vs_clean.csv").exists()
    beside = pd.read_csv(out / "arias" / "tables" / "embedding_purity_planted_vs_clean.csv",
                         keep_default_na=False, na_values=[""])
    within = beside["within"].astype(object)
    beside["within"] = within.where(within.notna(), "")
    planted, clean = (_purity(out, c).set_index(KEY) for c in ("arias", "arias-noshortcut"))
    assert len(beside) == len(planted.index.intersection(clean.index)) > 0
    for row in beside.itertuples():
        key = tuple(getattr(row, k) for k in KEY)
        assert row.above_chance_mean_planted == pytest.approx(planted.loc[key, "above_chance_mean"])
        assert row.above_chance_mean_clean == pytest.approx(clean.loc[key, "above_chance_mean"])
        assert row.difference == pytest.approx(row.above_chance_mean_planted
                                               - row.above_chance_mean_clean)
