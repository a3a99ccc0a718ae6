"""Notebook 05's helpers: the penultimate-layer embeddings, their t-SNE maps and their
neighbourhoods (seed 001, Figs. 5-6).

Notebook 03 saved, for every trained fold, the embeddings of its train, valid and test images
(``artifacts/embeddings/<stem>.npz``: the 256-d layer before the output of the COVID-Net variant,
the pooled features of the other networks; :func:`cxrlib.train.predictions.load_embeddings`). Here:

- :func:`embedding_runs`: the trained folds and their embedding files;
- :func:`read_split_embeddings`: one fold's train and test embeddings with the manifest's
  class, source and severity of each image;
- :func:`pca_reduce`, :func:`tsne_map`, :func:`stratified_subsample`: PCA to 50 dimensions, then
  a seeded t-SNE of at most ``tsne_max_points`` images (the maps of Figs. 5-6);
- :func:`knn_purity`, :func:`chance_purity`: the share of an image's k nearest neighbours that
  share its class (or source, or severity), and the share expected if the neighbours were drawn
  at random. The neighbours are searched in the PCA-50 space, not in the 2-D t-SNE map, whose
  distances t-SNE does not preserve;
- :func:`embedding_purity`, :func:`summarize_purity`, :func:`purity_reading`: the purity of every
  trained fold, its mean +- sd over folds (``tables/embedding_purity.csv``) and a sentence read
  from it;
- :func:`tsne_frame`, :func:`plot_tsne`: the t-SNE coordinates of one fold per experiment and the
  seaborn figures.

Purities and chance levels are fractions in [0, 1]. ``above_chance`` is
``(purity - chance) / (1 - chance)``: 0 when neighbourhoods are as mixed as the cohort, 1 when
every neighbour shares the image's group, so that class and source can be compared although their
chance levels differ.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors

from cxrlib.data.manifest import LABELS, SEVERITIES, join_manifest
from cxrlib.analysis.metrics import summarize
from cxrlib.train.predictions import (
    MODEL_KEY, RUN_KEY, artifact_stem, completed_runs, load_embeddings, read_predictions,
    with_checkpoints,
)

__all__ = [
    "EMBEDDINGS_DIR", "PURITY_METRICS", "embedding_runs", "read_split_embeddings", "pca_reduce",
    "tsne_map", "stratified_subsample", "knn_purity", "chance_purity", "purity_factors",
    "secondary_factor", "fold_purity", "embedding_purity", "summarize_purity", "purity_reading",
    "first_folds", "tsne_frame", "plot_tsne",
]

#: Folder of ``artifacts/`` that notebook 03 writes the embeddings to.
EMBEDDINGS_DIR = "embeddings"
#: Columns of a purity row that :func:`summarize_purity` averages over folds.
PURITY_METRICS = ("purity", "chance", "above_chance")
_RUN_FIRST = "run notebook 03 (03_classifier_cv) first: it trains the classifiers and writes"


# --------------------------------------------------------------------------------------------
# Inputs


def embedding_runs(artifacts_dir: str | Path) -> pd.DataFrame:
    """The trained folds of ``predictions.parquet`` and their embedding files.

    Returns ------- One row per trained fold: :data:`~cxrlib.train.predictions.RUN_KEY` columns,
    ``stem`` and ``path`` (``artifacts/embeddings/<stem>.npz``), sorted by experiment, model,
    method, repetition, fold.

    Raises
    ------
    FileNotFoundError
        naming notebook 03 when the embeddings folder or the predictions table is missing, and
        naming the file when a trained fold has no embeddings.
    """
    artifacts_dir = Path(artifacts_dir)
    folder = artifacts_dir / EMBEDDINGS_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: {_RUN_FIRST} "
                                f"{EMBEDDINGS_DIR}/<stem>.npz for every trained fold")
    predictions = artifacts_dir / "predictions.parquet"
    if not predictions.is_file():
        raise FileNotFoundError(f"{predictions} does not exist: {_RUN_FIRST} it")
    # only cross-validated classifiers leave embeddings (not notebook 02's FuCiTNet / COVID-SDNet)
    trained = with_checkpoints(read_predictions(predictions), artifacts_dir)
    runs = pd.DataFrame(sorted(completed_runs(trained)), columns=list(RUN_KEY))
    if runs.empty:
        raise FileNotFoundError(f"{predictions} has no trained fold: {_RUN_FIRST} its rows")
    runs["stem"] = [artifact_stem(*key) for key in runs[list(RUN_KEY)].itertuples(index=False)]
    runs["path"] = [folder / f"{stem}.npz" for stem in runs["stem"]]
    missing = [p for p in runs["path"] if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} does not exist although {predictions.name} has "
                                f"its fold ({len(missing)} file(s) missing): rerun notebook 03")
    return runs


def read_split_embeddings(
    path: str | Path,
    manifest: pd.DataFrame,
    splits: Sequence[str] = ("train", "test"),
    columns: Sequence[str] = ("source", "severity"),
) -> tuple[pd.DataFrame, np.ndarray]:
    """One fold's embeddings of some splits, with manifest columns of each image.

    Parameters
    ----------
    path : an ``embeddings/<stem>.npz`` file.
    manifest : the study's manifest (``image_id`` and ``columns``).
    splits : which of train / valid / test to keep.
    columns : manifest columns to attach (missing values stay missing).

    Returns
    -------
    meta : (N,) rows: ``image_id``, ``split``, ``label`` and ``columns``.
    embeddings : float32 (N, D).
    """
    table, embeddings = load_embeddings(path)
    keep = table["split"].isin(list(splits)).to_numpy()
    table = table[keep].reset_index(drop=True)
    return join_manifest(table, manifest, columns, what=Path(path).name), embeddings[keep]


# --------------------------------------------------------------------------------------------
# PCA and t-SNE


def pca_reduce(embeddings: np.ndarray, n_components: int = 50, seed: int = 0) -> np.ndarray:
    """Project embeddings on their first principal components (no scaling of the features).

    Parameters
    ----------
    embeddings : float (N, D).
    n_components : at most this many components (fewer when N or D is smaller).

    Returns float (N, min(n_components, N, D)).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need an (N, D) array with N >= 2 embeddings, got shape {x.shape}")
    n = min(int(n_components), *x.shape)
    return PCA(n_components=n, random_state=seed).fit_transform(x)


def tsne_map(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """Seeded 2-D t-SNE (scikit-learn, PCA initialisation) of (N, d) features, N >= 4.

    The perplexity is lowered to (N - 1) / 3 for small N. The same features and seed give the
    same coordinates. Returns float (N, 2).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 4:
        raise ValueError(f"t-SNE needs an (N, d) array with N >= 4 points, got shape {x.shape}")
    perplexity = min(float(perplexity), (len(x) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(x)


def stratified_subsample(strata: Sequence, max_points: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``max_points`` items, keeping each stratum's share (sorted).

    All indices when there are no more than ``max_points`` items. Strata with a single item are
    pooled, as scikit-learn's stratified split requires; when there are more strata than items
    drawn (or left out), the draw is a plain random one.
    """
    strata = pd.Series(np.asarray(strata, dtype=object)).astype(str)
    n, m = len(strata), int(max_points)
    if n <= m:
        return np.arange(n)
    strata = strata.where(strata.map(strata.value_counts()) >= 2, "(rare)")
    if (strata == "(rare)").sum() == 1:
        strata = strata.replace("(rare)", strata.value_counts().index[0])
    stratify = strata if strata.nunique() <= min(m, n - m) else None
    keep, _ = train_test_split(np.arange(n), train_size=m, stratify=stratify, random_state=seed)
    return np.sort(keep)


# --------------------------------------------------------------------------------------------
# Neighbourhood purity


def _strata(n: int, within) -> list[np.ndarray]:
    if within is None:
        return [np.arange(n)]
    within = pd.Series(np.asarray(within, dtype=object))
    if len(within) != n:
        raise ValueError(f"{len(within)} 'within' values for {n} points")
    return [np.flatnonzero((within == w).to_numpy()) for w in pd.unique(within)]


def knn_purity(features: np.ndarray, groups: Sequence, k: int = 10, within=None) -> np.ndarray:
    """Share of each point's k nearest neighbours (Euclidean, the point itself excluded) that
    belong to its group.

    Parameters
    ----------
    features : float (N, d), e.g. the PCA-50 embeddings.
    groups : (N,) group of each point (class, source...).
    k : neighbours; lowered to n - 1 in a set of n points.
    within : optional (N,) strata: neighbours are searched only among the points of the same
        stratum (e.g. the same class, to ask whether the source is readable within a class).

    Returns float (N,) in [0, 1]; NaN for a point alone in its stratum.
    """
    x = np.asarray(features, dtype=np.float64)
    groups = np.asarray(groups, dtype=object)
    if x.ndim != 2 or len(x) != len(groups):
        raise ValueError(f"features {x.shape} and {len(groups)} groups do not match")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    purity = np.full(len(x), np.nan)
    for idx in _strata(len(x), within):
        if len(idx) < 2:
            continue
        nn = NearestNeighbors(n_neighbors=min(int(k), len(idx) - 1)).fit(x[idx])
        neighbours = idx[nn.kneighbors(return_distance=False)]  # query point excluded
        purity[idx] = (groups[neighbours] == groups[idx][:, None]).mean(axis=1)
    return purity


def chance_purity(groups: Sequence, within=None) -> np.ndarray:
    """Expected :func:`knn_purity` of each point if its neighbours were drawn at random (without
    replacement) from the other points of its stratum: ``(n_g - 1) / (n - 1)`` for a point of
    group g with n_g members among the stratum's n points (any k).

    Returns float (N,); NaN for a point alone in its stratum.
    """
    groups = pd.Series(np.asarray(groups, dtype=object))
    chance = np.full(len(groups), np.nan)
    for idx in _strata(len(groups), within):
        if len(idx) < 2:
            continue
        part = groups.iloc[idx]
        chance[idx] = (part.map(part.value_counts()).to_numpy() - 1) / (len(idx) - 1)
    return chance


def _known(values: pd.Series) -> np.ndarray:
    """Boolean (N,): the values that are neither missing nor empty."""
    return (values.notna() & (values.astype(str) != "")).to_numpy()


def purity_factors(
    meta: pd.DataFrame,
    factors: Sequence[str] = ("source", "severity"),
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Which neighbourhood purities a cohort allows.

    Always the class (``("label", None)``); then each of ``factors`` that has at least two known
    values, measured on the images where it is known; and, when its known values occur in at
    least two classes, the same factor within a class (``(factor, "label")``: neighbours of the
    same class only), so that a source which goes with the class is not mistaken for a shortcut.

    Returns
    -------
    specs : ``(factor, within)`` pairs.
    notes : one sentence per factor left out, saying why.
    """
    specs: list[tuple[str, str | None]] = [("label", None)]
    notes = []
    for factor in factors:
        if factor not in meta.columns:
            notes.append(f"no `{factor}` column: no {factor} purity")
            continue
        known = meta[_known(meta[factor])]
        values = sorted(known[factor].astype(str).unique())
        if len(values) < 2:
            notes.append(f"{len(values)} {factor} value(s) ({', '.join(values) or 'none known'}): "
                         f"no {factor} purity")
            continue
        specs.append((factor, None))
        if known["label"].nunique() >= 2:
            specs.append((factor, "label"))
    return specs, notes


def secondary_factor(meta: pd.DataFrame,
                     factors: Sequence[str] = ("source", "severity")) -> str | None:
    """The first of ``factors`` with at least two known values (Fig. 6's colours), or None."""
    for factor in factors:
        if factor in meta.columns and meta.loc[_known(meta[factor]), factor].nunique() >= 2:
            return factor
    return None


def fold_purity(
    meta: pd.DataFrame,
    embeddings: np.ndarray,
    specs: Sequence[tuple[str, str | None]],
    k: int = 10,
    n_components: int = 50,
    seed: int = 0,
) -> pd.DataFrame:
    """Neighbourhood purity of one fold's embeddings, per split and factor.

    Parameters
    ----------
    meta : (N,) rows with ``split``, ``label`` and the factors' columns
        (:func:`read_split_embeddings`).
    embeddings : float (N, D); each split is reduced to ``n_components`` by its own PCA and the
        neighbours are searched there.
    specs : ``(factor, within)`` pairs of :func:`purity_factors`.

    Returns
    -------
    One row per split and spec (none where the split has fewer than two groups of the
    factor): ``split``, ``factor``, ``within`` (``""`` or the stratifying
    column), ``k``, ``pca_dims`` (dimensions of the split's PCA), ``n_images`` (images with a
    known factor), ``n_groups``, ``purity``,
    ``chance``, ``above_chance`` (means over the images).
    """
    rows = []
    for split in pd.unique(meta["split"]):
        idx = np.flatnonzero((meta["split"] == split).to_numpy())
        if len(idx) < 2:
            continue
        part = meta.iloc[idx]
        x = pca_reduce(np.asarray(embeddings)[idx], n_components, seed=seed)
        for factor, within in specs:
            known = _known(part[factor])
            groups = part[factor].astype(str).to_numpy()[known]
            if len(set(groups)) < 2:  # one group: every neighbour shares it, nothing to measure
                continue
            strata = part[within].astype(str).to_numpy()[known] if within else None
            per_image = knn_purity(x[known], groups, k, within=strata)
            if np.isnan(per_image).all():  # every image alone in its stratum
                continue
            purity = np.nanmean(per_image)
            chance = np.nanmean(chance_purity(groups, within=strata))
            if chance >= 1:  # one group per stratum (e.g. one source per class): nothing to measure
                continue
            rows.append({"split": split, "factor": factor, "within": within or "", "k": int(k),
                         "pca_dims": x.shape[1], "n_images": int(known.sum()),
                         "n_groups": len(set(groups)),
                         "purity": purity, "chance": chance,
                         "above_chance": (purity - chance) / (1 - chance)})
    return pd.DataFrame(rows)


def embedding_purity(
    artifacts_dir: str | Path,
    manifest: pd.DataFrame,
    k: int = 10,
    splits: Sequence[str] = ("train", "test"),
    factors: Sequence[str] = ("source", "severity"),
    n_components: int = 50,
    seed: int = 0,
) -> tuple[pd.DataFrame, list[str]]:
    """:func:`fold_purity` of every trained fold (:func:`embedding_runs`).

    Returns
    -------
    per_fold : :data:`~cxrlib.train.predictions.RUN_KEY` columns, then :func:`fold_purity`'s.
    notes : the factors left out and why (:func:`purity_factors`, decided on the manifest).
    """
    specs, notes = purity_factors(manifest, factors)
    tables = []
    for run in embedding_runs(artifacts_dir).itertuples(index=False):
        meta, x = read_split_embeddings(run.path, manifest, splits,
                                        [c for c in factors if c in manifest.columns])
        part = fold_purity(meta, x, specs, k=k, n_components=n_components, seed=seed)
        for key in reversed(RUN_KEY):
            part.insert(0, key, getattr(run, key))
        tables.append(part)
    return pd.concat(tables, ignore_index=True), notes


#: Columns that identify a row of :func:`summarize_purity`.
PURITY_KEYS = [*MODEL_KEY, "split", "factor", "within"]


def summarize_purity(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over folds of :data:`PURITY_METRICS`, per (experiment, model, method, split,
    factor, within), with ``k``, the fewest ``pca_dims``, the mean ``n_images`` and the most
    ``n_groups`` (``tables/embedding_purity.csv``)."""
    by = PURITY_KEYS
    out = summarize(per_fold, by=by, metrics=list(PURITY_METRICS))
    extra = per_fold.groupby(by, sort=False).agg(
        k=("k", "first"), pca_dims=("pca_dims", "min"), n_images=("n_images", "mean"),
        n_groups=("n_groups", "max"))
    return out.join(extra, on=by)[by + ["n_runs", "k", "pca_dims", "n_images", "n_groups"]
                                  + [c for c in out.columns if c.endswith(("_mean", "_sd"))]]


def _factor_name(row) -> str:
    names = {"label": "class"}
    name = names.get(row["factor"], row["factor"])
    return f"{name} within {names.get(row['within'], row['within'])}" if row["within"] else name


def _describe(row) -> str:
    return (f"{_factor_name(row)} {row['purity_mean']:.2f} vs {row['chance_mean']:.2f} "
            f"({row['above_chance_mean']:+.2f})")


def purity_reading(summary: pd.DataFrame, split: str = "test") -> str:
    """A sentence read from the ``split`` rows of :func:`summarize_purity`: per experiment, each
    purity beside its chance level, and whether the purest factor other than the class (once
    chance is discounted, ``above_chance``) is above the class."""
    part = summary[summary["split"] == split]
    if part.empty:
        raise ValueError(f"no purity rows for split {split!r}")
    clauses = []
    for key, rows in part.groupby(list(MODEL_KEY), sort=False):
        label = rows[rows["factor"] == "label"]
        if label.empty:
            raise ValueError(f"no class purity row for {key} on split {split!r}")
        others = rows[rows["factor"] != "label"]
        text = f"{key[0]} ({key[1]}, {key[2]}): " + ", ".join(_describe(r)
                                                                for _, r in rows.iterrows())
        if not others.empty:
            top = others.loc[others["above_chance_mean"].idxmax()]
            gap = top["above_chance_mean"] - label["above_chance_mean"].iloc[0]
            spread = pd.Series([top["above_chance_sd"], label["above_chance_sd"].iloc[0]]).max()
            text += (f", so neighbourhoods follow the {_factor_name(top)} "
                     f"{'more' if gap > 0 else 'less'} than the class"
                     + (" (a gap within the spread over folds)" if abs(gap) <= spread else ""))
        clauses.append(text)
    return (f"On the {split} images (purity vs chance, and in brackets the share of the way from "
            f"chance to pure, k = {int(part['k'].iloc[0])} neighbours in the PCA space of "
            f"{int(part['pca_dims'].max())} dimensions, mean over "
            f"{int(part['n_runs'].max())} fold(s)): " + "; ".join(clauses) + ".")


# --------------------------------------------------------------------------------------------
# t-SNE maps and figures


def first_folds(runs: pd.DataFrame) -> pd.DataFrame:
    """The first (repetition, fold) of each (experiment, model, method) of
    :func:`embedding_runs`: the fold whose maps are drawn."""
    return runs.sort_values(["repetition", "fold"]).drop_duplicates(list(MODEL_KEY)) \
        .sort_index().reset_index(drop=True)


def tsne_frame(
    runs: pd.DataFrame,
    manifest: pd.DataFrame,
    max_points: int,
    splits: Sequence[str] = ("train", "test"),
    factor: str | None = None,
    n_components: int = 50,
    seed: int = 0,
) -> pd.DataFrame:
    """t-SNE coordinates of each run's splits (one map per run and split: PCA to
    ``n_components``, then :func:`tsne_map` on a subsample of at most ``max_points`` images,
    stratified by class and ``factor``).

    Returns
    -------
    One row per plotted image: :data:`~cxrlib.train.predictions.RUN_KEY` columns, ``split``,
    ``image_id``, ``label``, the ``factor`` column if one is given (``"n/a"`` where unknown),
    ``tsne_1``, ``tsne_2``.
    """
    columns = [factor] if factor else []
    frames = []
    for run in runs.itertuples(index=False):
        meta, x = read_split_embeddings(run.path, manifest, splits, columns)
        if factor:
            meta[factor] = np.where(_known(meta[factor]), meta[factor].astype(str), "n/a")
        for split in splits:
            part = meta[meta["split"] == split]
            if len(part) < 4:
                continue
            strata = part["label"] + ("|" + part[factor] if factor else "")
            keep = part.index.to_numpy()[stratified_subsample(strata, max_points, seed)]
            xy = tsne_map(pca_reduce(x[keep], n_components, seed=seed), seed=seed)
            out = meta.loc[keep, ["image_id", "label", *columns]].reset_index(drop=True)
            out.insert(0, "split", split)
            for key in reversed(RUN_KEY):
                out.insert(0, key, getattr(run, key))
            out["tsne_1"], out["tsne_2"] = xy[:, 0], xy[:, 1]
            frames.append(out)
    if not frames:
        raise ValueError("no split of these runs has the 4 images t-SNE needs")
    return pd.concat(frames, ignore_index=True)


_MARKERS = ("o", "X", "^", "s", "D", "P", "v")


def plot_tsne(frame: pd.DataFrame, group: str | None = None, title: str = ""):
    """Seed 001's Fig. 5 (``group=None``: colour = class) or Fig. 6 (colour = the ``group``
    column, e.g. ``source``; marker = class) from :func:`tsne_frame`: one column per
    (experiment, model), one row per split. Returns the matplotlib figure."""
    import seaborn as sns

    data = frame.rename(columns={"label": "class"})
    data["model run"] = data["experiment"] + " · " + data["model"]
    present = set(data["class"])
    classes = [c for c in LABELS if c in present] + sorted(present - set(LABELS))
    if group is None:
        style = dict(hue="class", hue_order=classes)
    else:
        if group not in data.columns:
            raise ValueError(f"the t-SNE frame has no {group!r} column: pass factor={group!r} "
                             "to tsne_frame")
        order = sorted(set(data[group]), key=lambda g: (
            g == "n/a", SEVERITIES.index(g) if g in SEVERITIES else len(SEVERITIES), g))
        palette = sns.color_palette("tab10" if len(order) <= 10 else "tab20", len(order))
        style = dict(hue=group, hue_order=order, palette=palette,
                     style="class", style_order=classes,
                     markers=dict(zip(classes, _MARKERS * len(classes))))
    grid = sns.relplot(data=data, x="tsne_1", y="tsne_2", col="model run", row="split",
                       kind="scatter", s=16, alpha=0.8, linewidth=0, height=3.0, aspect=1.0,
                       facet_kws=dict(sharex=False, sharey=False), **style)
    grid.set_titles("{col_name} · {row_name}")
    grid.set(xticks=[], yticks=[], xlabel="t-SNE 1", ylabel="t-SNE 2")
    if title:
        grid.figure.suptitle(title, y=1.02)
    return grid.figure
