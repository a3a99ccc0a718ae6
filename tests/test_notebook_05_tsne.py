"""Notebook 05 (t-SNE and neighbourhood purity) in the smoke run of the whole study: the purity
table recomputed with scikit-learn from notebook 03's embedding files, and the numbers its
reading states."""
import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from cxrlib.data.manifest import load_manifest
from cxrlib.train.predictions import MODEL_KEY, artifact_stem, load_embeddings

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
    label = table[table["factor"] == "label"]
    assert (label["n_groups"] == 3).all() and (label["k"] == 10).all()


def _purity_in(x, groups, within, k):
    """Mean purity of the k nearest neighbours (Euclidean, the point itself left out, searched
    within each stratum) and the mean chance level (n_g - 1) / (n - 1) of the same points."""
    purity, chance = np.full(len(x), np.nan), np.full(len(x), np.nan)
    for stratum in pd.unique(within):
        idx = np.flatnonzero(within == stratum)
        if len(idx) < 2:
            continue
        nn = NearestNeighbors(n_neighbors=min(k, len(idx) - 1)).fit(x[idx])
        neighbours = idx[nn.kneighbors(return_distance=False)]
        purity[idx] = (groups[neighbours] == groups[idx][:, None]).mean(axis=1)
        sizes = pd.Series(groups[idx]).value_counts()
        chance[idx] = (sizes[groups[idx]].to_numpy() - 1) / (len(idx) - 1)
    return np.nanmean(purity), np.nanmean(chance)


@pytest.mark.parametrize("cohort", ["arias", "arias-noshortcut", "covidgr"])
def test_purity_recomputed_from_the_embeddings(smoke_run, cohort):
    """Every row of the purity table, recomputed from the embedding file of each trained fold
    with scikit-learn's PCA (fitted on the split) and nearest neighbours (among the images whose
    factor is known): mean and sd over the folds of the purity, the chance level and the share of
    the way from chance to pure, and the images and groups counted."""
    _, out = smoke_run
    settings = json.loads((out / "study.json").read_text())
    seed = int(settings["settings"]["seed"])
    manifest = load_manifest(settings["cohorts"][cohort]["manifest"], check_files=False)
    info = manifest.drop_duplicates("image_id").set_index("image_id")
    artifacts = out / cohort / "artifacts"
    runs = pd.read_csv(artifacts / "crossval_runs.csv")
    table = _purity(out, cohort)
    assert len(table)
    for row in table.itertuples(index=False):
        folds = runs[(runs["experiment"] == row.experiment) & (runs["model"] == row.model)
                     & (runs["method"] == row.method)]
        values = []
        for fold in folds.itertuples(index=False):
            meta, x = load_embeddings(artifacts / "embeddings" / (artifact_stem(
                fold.experiment, fold.model, fold.method, fold.repetition, fold.fold) + ".npz"))
            split = meta["split"].eq(row.split).to_numpy()
            meta, x = meta[split].reset_index(drop=True), x[split].astype(float)
            factor = (meta["label"] if row.factor == "label"
                      else meta["image_id"].map(info[row.factor])).astype(object)
            known = (factor.notna() & (factor.astype(str) != "")).to_numpy()
            groups = factor.astype(str).to_numpy()[known]
            within = (meta[row.within].astype(str).to_numpy()[known] if row.within
                      else np.zeros(known.sum()))
            if len(set(groups)) < 2:
                continue  # nothing to measure in this fold
            x = PCA(n_components=min(50, *x.shape), random_state=seed).fit_transform(x)
            purity, chance = _purity_in(x[known], groups, within, int(row.k))
            if np.isnan(purity) or chance >= 1:
                continue
            values.append((purity, chance, (purity - chance) / (1 - chance), known.sum(),
                           len(set(groups)), x.shape[1]))
        values = pd.DataFrame(values, columns=["purity", "chance", "above_chance", "n_images",
                                               "n_groups", "pca_dims"])
        assert len(values) == row.n_runs, row
        assert row.n_images == pytest.approx(values["n_images"].mean()), row
        assert (row.n_groups, row.pca_dims) == (values["n_groups"].max(),
                                                values["pca_dims"].min()), row
        for metric in ("purity", "chance", "above_chance"):
            assert getattr(row, f"{metric}_mean") == pytest.approx(values[metric].mean()), row
            assert getattr(row, f"{metric}_sd") == pytest.approx(values[metric].std(),
                                                                 nan_ok=True), row


def test_single_source_cohort_has_no_source_purity(smoke_run):
    _, out = smoke_run
    table = _purity(out, "covidgr")
    assert "source" not in set(table["factor"])
    assert {"label", "severity"} <= set(table["factor"])
    assert set(table["within"]) == {""}  # the severity is graded in one class only
    n = table.pivot_table(index=["experiment", "split"], columns="factor", values="n_images")
    # the severity is measured on the graded (COVID-19) images only: half the balanced cohort
    assert (n["severity"] < n["label"]).all() and (n["severity"] >= n["label"] / 4).all()


def _markdown_of(notebook, code):
    """The Markdown outputs of the one code cell of an executed notebook whose source contains
    ``code`` (found by what the cell runs, not by what it prints)."""
    nb = json.loads(notebook.read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and code in "".join(c["source"])]
    assert len(cells) == 1, (notebook, code)
    return ["".join(o["data"]["text/markdown"]) for o in cells[0].get("outputs", [])
            if "text/markdown" in o.get("data", {})]


def _numbers(text):
    """The numbers a sentence states, as written (``+0.12``, ``0.80``, ``10``)."""
    return re.findall(r"[-+]?\d+(?:\.\d+)?%?", text)


def test_figures_and_reading(smoke_run):
    _, out = smoke_run
    for cohort, factor in (("arias", "source"), ("covidgr", "severity")):
        figures = out / cohort / "figures"
        for name in ("tsne_by_class", f"tsne_by_{factor}_class"):
            assert (figures / f"{name}.png").stat().st_size > 10_000
        # the reading states, per model, each test purity beside its chance level and the share
        # of the way from chance to pure, as in the table, in the table's order
        [reading] = _markdown_of(out / cohort / "05_tsne.ipynb", "embedding.purity_reading(")
        numbers = _numbers(reading)
        test = _purity(out, cohort).query("split == 'test'")
        stated = [f"{v:{f}}" for _, rows in test.groupby(list(MODEL_KEY), sort=False)
                  for r in rows.itertuples() for v, f in (
                      (r.purity_mean, ".2f"), (r.chance_mean, ".2f"),
                      (r.above_chance_mean, "+.2f"))]
        assert [n for n in numbers if re.fullmatch(r"[-+]?\d\.\d\d", n)] == stated
        assert {str(int(test["k"].iloc[0])), str(int(test["n_runs"].max()))} <= set(numbers)


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
