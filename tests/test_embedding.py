"""Embedding analyses of notebook 05: k-NN purity and its chance level on hand-made embeddings,
seeded t-SNE, stratified subsampling, and the inputs read from notebook 03's artifacts."""
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from cxrlib.analysis import embedding  # noqa: E402
from cxrlib.train.predictions import (  # noqa: E402
    CROSSVAL_RUNS_FILE, RUN_KEY, append_predictions, artifact_stem, make_predictions,
    save_embeddings,
)
from cxrlib.run_folder import upsert_row  # noqa: E402

# Five points on a line, groups a a b b b. With k = 2 (the point itself excluded):
#   0 -> {1, 3}: a, b -> 1/2      1 -> {0, 3}: a, b -> 1/2      3 -> {1, 0}: a, a -> 0
#   10 -> {11, 3}: b, b -> 1      11 -> {10, 3}: b, b -> 1                  mean 3/5
# Chance: a point of a has 1 other a among 4 others (1/4), one of b 2 of 4 (1/2): mean 2/5.
LINE = np.array([[0.0], [1.0], [3.0], [10.0], [11.0]])
GROUPS = ["a", "a", "b", "b", "b"]


def test_knn_purity_by_hand():
    purity = embedding.knn_purity(LINE, GROUPS, k=2)
    np.testing.assert_allclose(purity, [0.5, 0.5, 0.0, 1.0, 1.0])
    assert purity.mean() == pytest.approx(0.6)
    # k = 1: nearest neighbours 1, 0, 1, 11, 10
    np.testing.assert_allclose(embedding.knn_purity(LINE, GROUPS, k=1), [1, 1, 0, 1, 1])


def test_chance_purity_by_hand():
    chance = embedding.chance_purity(GROUPS)
    np.testing.assert_allclose(chance, [0.25, 0.25, 0.5, 0.5, 0.5])
    assert chance.mean() == pytest.approx(0.4)
    # one group only: every neighbour shares it
    np.testing.assert_allclose(embedding.chance_purity(["x"] * 3), [1.0, 1.0, 1.0])


def test_purity_within_strata_by_hand():
    within = ["x", "x", "x", "y", "y"]
    # stratum x = {0, 1, 3} with groups a a b, k = 2: 0 -> {1, 3}, 1 -> {0, 3}, 3 -> {1, 0};
    # stratum y = {10, 11}: k lowered to 1, both b.
    np.testing.assert_allclose(embedding.knn_purity(LINE, GROUPS, k=2, within=within),
                               [0.5, 0.5, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(embedding.chance_purity(GROUPS, within=within),
                               [0.5, 0.5, 0.0, 1.0, 1.0])
    alone = embedding.knn_purity(LINE, GROUPS, k=2, within=["x", "x", "x", "x", "y"])
    assert np.isnan(alone[4]) and not np.isnan(alone[:4]).any()
    assert np.isnan(embedding.chance_purity(GROUPS, within=["x", "x", "x", "x", "y"])[4])


def test_purity_bad_input():
    with pytest.raises(ValueError, match="do not match"):
        embedding.knn_purity(LINE, GROUPS[:4])
    with pytest.raises(ValueError, match="k must be"):
        embedding.knn_purity(LINE, GROUPS, k=0)


def test_fold_purity_in_pca_space():
    # PCA of 2-D points keeping both components is a rotation: the neighbours are those of the line.
    x = np.hstack([LINE, np.zeros_like(LINE)]) @ np.array([[0.6, 0.8], [-0.8, 0.6]])
    meta = pd.DataFrame({"split": "test", "label": GROUPS, "source": ["s", "t", "s", "t", None]})
    rows = embedding.fold_purity(meta, x, [("label", None), ("source", None)], k=2)
    label = rows[rows["factor"] == "label"].iloc[0]
    assert (label["purity"], label["chance"]) == (pytest.approx(0.6), pytest.approx(0.4))
    assert label["above_chance"] == pytest.approx((0.6 - 0.4) / (1 - 0.4))
    # source known on the first four points only: 0 -> {1, 3}: t, s; 1 -> {0, 3}: s, s;
    # 3 -> {1, 0}: t, s; 10 -> {3, 1}: s, t -> purity (1/2 + 0 + 1/2 + 1/2) / 4, chance 1/3
    source = rows[rows["factor"] == "source"].iloc[0]
    assert source["n_images"] == 4 and source["n_groups"] == 2
    assert source["purity"] == pytest.approx(0.375)
    assert source["chance"] == pytest.approx(1 / 3)


def test_purity_factors():
    one_source = pd.DataFrame({"label": ["control", "covid19", "covid19"],
                               "source": ["COVIDGR"] * 3, "severity": [None, "mild", "severe"]})
    specs, notes = embedding.purity_factors(one_source)
    assert specs == [("label", None), ("severity", None)]
    assert len(notes) == 1 and "COVIDGR" in notes[0] and "no source purity" in notes[0]
    assert embedding.secondary_factor(one_source) == "severity"
    two_sources = one_source.assign(source=["A", "A", "B"])
    specs, _ = embedding.purity_factors(two_sources)
    assert ("source", None) in specs and ("source", "label") in specs
    assert ("severity", "label") not in specs  # severities occur in one class only
    assert embedding.secondary_factor(two_sources) == "source"


def test_tsne_reproducible_with_seed():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8))
    first = embedding.tsne_map(x, seed=3)
    assert first.shape == (30, 2) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, embedding.tsne_map(x, seed=3))
    with pytest.raises(ValueError, match="N >= 4"):
        embedding.tsne_map(x[:3])


def test_pca_reduce_shape():
    x = np.random.default_rng(1).normal(size=(12, 256))
    assert embedding.pca_reduce(x, 50).shape == (12, 12)
    x = np.random.default_rng(1).normal(size=(80, 20))
    assert embedding.pca_reduce(x, 50).shape == (80, 20)


def test_stratified_subsample_keeps_shares():
    strata = ["a"] * 80 + ["b"] * 20
    keep = embedding.stratified_subsample(strata, 10, seed=0)
    assert len(keep) == 10 and (np.diff(keep) > 0).all()
    assert (np.asarray(strata)[keep] == "b").sum() == 2
    np.testing.assert_array_equal(embedding.stratified_subsample(strata, 100), np.arange(100))
    # a stratum of one is pooled rather than rejected
    assert len(embedding.stratified_subsample(strata[:-1] + ["c"], 10, seed=0)) == 10


def test_missing_embeddings_folder_names_notebook_03(tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebook 03 .03_classifier_cv. first"):
        embedding.embedding_runs(tmp_path)


def _artifacts(tmp_path, missing_file=False):
    """Two folds of one model on 12 images: classes separated along the first axis."""
    ids = [f"im{i:02d}" for i in range(12)]
    labels = ["control"] * 6 + ["covid19"] * 6
    manifest = pd.DataFrame({"image_id": ids, "label": labels, "source": ["A", "A", "B", "B"] * 3,
                             "severity": [None] * 6 + ["mild", "mild", "severe", "severe", "mild",
                                                       "mild"]})
    rng = np.random.default_rng(0)
    x = rng.normal(scale=0.1, size=(12, 16)).astype(np.float32)
    x[6:, 0] += 10
    for fold in (0, 1):
        test = np.arange(12) % 2 == fold
        preds = make_predictions(np.array(ids)[test], np.array(labels)[test],
                                 np.tile([0.5, 0.5], (test.sum(), 1)), ["control", "covid19"],
                                 experiment="exp1", model="covidnet", method="m", repetition=0,
                                 fold=fold)
        append_predictions(tmp_path / "predictions.parquet", preds)
        upsert_row(tmp_path / CROSSVAL_RUNS_FILE,
                   {"experiment": "exp1", "model": "covidnet", "method": "m",
                    "repetition": 0, "fold": fold}, RUN_KEY)
        # a method of another notebook (no checkpoint, no embeddings) is not a trained fold here
        append_predictions(tmp_path / "predictions.parquet", preds.assign(model="covid-sdnet"))
        if missing_file and fold == 1:
            continue
        stem = artifact_stem("exp1", "covidnet", "m", 0, fold)
        save_embeddings(tmp_path / "embeddings" / f"{stem}.npz", ids,
                        np.where(test, "test", "train"), x, labels)
    return manifest


def test_embedding_purity_from_artifacts(tmp_path):
    manifest = _artifacts(tmp_path)
    runs = embedding.embedding_runs(tmp_path)
    assert list(runs["fold"]) == [0, 1] and all(p.is_file() for p in runs["path"])
    per_fold, notes = embedding.embedding_purity(tmp_path, manifest, k=2)
    assert notes == []
    label = per_fold[per_fold["factor"] == "label"]
    assert len(label) == 4  # 2 folds x train, test
    assert (label["purity"] == 1.0).all()  # the classes are 10 sd apart
    assert np.allclose(label["chance"], 2 / 5)  # 3 of each class per split: (3 - 1) / (6 - 1)
    summary = embedding.summarize_purity(per_fold)
    assert set(summary["factor"]) == {"label", "source", "severity"}
    row = summary[(summary["split"] == "test") & (summary["factor"] == "label")].iloc[0]
    assert row["n_runs"] == 2 and row["above_chance_mean"] == pytest.approx(1.0)
    assert row["above_chance_sd"] == pytest.approx(0.0)
    assert row["pca_dims"] == 6  # a split of 6 images: PCA keeps at most 6 components
    reading = embedding.purity_reading(summary)
    assert reading.startswith("On the test images") and "class 1.00 vs 0.40 (+1.00)" in reading
    assert re.search(r"so neighbourhoods follow the (source|severity)[a-z ]* less than the class",
                     reading)


def test_missing_embedding_file_is_named(tmp_path):
    _artifacts(tmp_path, missing_file=True)
    with pytest.raises(FileNotFoundError, match="exp1_covidnet_m_r0_f1.npz"):
        embedding.embedding_runs(tmp_path)


def test_embeddings_of_another_cohort(tmp_path):
    manifest = _artifacts(tmp_path)
    path = embedding.embedding_runs(tmp_path)["path"].iloc[0]
    with pytest.raises(ValueError, match="im00.*not in the manifest"):
        embedding.read_split_embeddings(path, manifest.iloc[1:])


def test_purity_reading_compares_above_chance():
    base = dict(experiment="exp1", model="covidnet", method="m", split="test", n_runs=2, k=10,
                pca_dims=50,
                purity_sd=0.0, chance_sd=0.0, above_chance_sd=0.01)
    summary = pd.DataFrame([
        dict(base, factor="label", within="", purity_mean=0.6, chance_mean=0.5,
             above_chance_mean=0.2),
        dict(base, factor="source", within="label", purity_mean=0.7, chance_mean=0.4,
             above_chance_mean=0.5),
    ])
    reading = embedding.purity_reading(summary)
    assert "k = 10 neighbours in the PCA space of 50 dimensions, mean over 2 fold(s)" in reading
    assert "source within class 0.70 vs 0.40 (+0.50)" in reading
    assert "follow the source within class more than the class" in reading
    assert "spread" not in reading
    noisy = summary.assign(above_chance_sd=0.4)  # a gap of 0.3 with folds 0.4 apart
    assert "(a gap within the spread over folds)" in embedding.purity_reading(noisy)
    with pytest.raises(ValueError, match="no purity rows"):
        embedding.purity_reading(summary, split="train")


def test_tsne_frame_and_figures(tmp_path):
    manifest = _artifacts(tmp_path)
    runs = embedding.first_folds(embedding.embedding_runs(tmp_path))
    assert len(runs) == 1 and runs["fold"].iloc[0] == 0
    frame = embedding.tsne_frame(runs, manifest, max_points=4, factor="source", seed=0)
    assert len(frame) == 8 and set(frame["split"]) == {"train", "test"}  # 4 per split
    assert {"tsne_1", "tsne_2", "source", "label"} <= set(frame.columns)
    fig = embedding.plot_tsne(frame, group="source")
    assert len(fig.axes) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="no 'severity' column"):
        embedding.plot_tsne(frame, group="severity")

