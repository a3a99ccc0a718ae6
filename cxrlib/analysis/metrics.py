"""Metrics of the classifiers: functions of the predictions table (and the manifest).

Every function reads a predictions table (:mod:`cxrlib.train.predictions`; the patient-level table
of :func:`cxrlib.train.predictions.average_by_patient` works too) and returns a DataFrame. Groups
are given by ``by``: :data:`~cxrlib.train.predictions.RUN_KEY` (one trained model = one test fold)
or :data:`~cxrlib.train.predictions.MODEL_KEY` (all folds and repetitions pooled).

- seed 001, Table IV: per class PPV, recall, F1, specificity and one-vs-rest AUC
  (:func:`class_metrics`); accuracy, balanced accuracy (mean recall), GMR (geometric mean of the
  recalls) and macro AUC (:func:`global_metrics`); mean +- sd over folds and repetitions
  (:func:`summarize`, :func:`format_mean_sd`); ROC curves per class and averaged
  (:func:`roc_curves`, :func:`mean_roc`); normalised confusion matrices
  (:func:`confusion_matrices`);
- seed 003: the cut-off of highest accuracy for one class against the rest, with detection rate,
  FPR, PPV, NPV, LR+ and LR- and bootstrap 95% CIs that resample patients (:func:`cutoff_metrics`);
  AUC against the share of patients used to train (:func:`auc_by_train_fraction`);
- seed 000, Table 6: the share of positives called positive per severity grade
  (:func:`severity_accuracy`);
- seed 004: training curves from the fastai CSV logs (:func:`training_curves`).

Rates are fractions in [0, 1] (``format_mean_sd`` scales them to percent). A rate whose
denominator is 0 (PPV of a class never predicted) is NaN, and summaries skip NaNs. scikit-learn
computes the confusion matrices, ROC curves and AUCs.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import gmean
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from cxrlib.data.manifest import SEVERITIES, image_info
from cxrlib.train.predictions import MODEL_KEY, RUN_KEY, classes_of, probability_columns

__all__ = [
    "CLASS_METRICS", "GLOBAL_METRICS", "CUTOFF_METRICS", "per_class_from_confusion",
    "global_from_confusion", "binary_rates", "class_metrics", "global_metrics", "summarize",
    "format_mean_sd", "roc_curves", "mean_roc", "confusion_matrices",
    "optimal_cutoff", "patient_bootstrap_weights", "cutoff_metrics", "training_curves",
    "auc_by_train_fraction", "severity_accuracy",
]

CLASS_METRICS = ("ppv", "recall", "f1", "specificity", "auc")
GLOBAL_METRICS = ("accuracy", "balanced_accuracy", "gmr", "auc_macro")
CUTOFF_METRICS = ("threshold", "accuracy", "detection_rate", "fpr", "ppv", "npv", "lr_plus",
                  "lr_minus")


def _ratio(num, den):
    """num / den elementwise; NaN where den == 0."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _groups(df: pd.DataFrame, by: Sequence[str]):
    by = list(by)
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise ValueError(f"predictions table lacks grouping column(s) {missing}")
    if not by:
        yield (), df
        return
    for key, part in df.groupby(by, sort=True):
        yield (key if isinstance(key, tuple) else (key,)), part


# --------------------------------------------------------------------------------------------
# From a confusion matrix


def per_class_from_confusion(cm: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Per-class rates of a confusion matrix.

    Parameters
    ----------
    cm : (C, C) counts, rows = true class, columns = predicted class.
    classes : the C class names.

    Returns
    -------
    DataFrame indexed by class: ``support`` (true count), ``ppv`` (TP / (TP + FP)), ``recall``
    (TP / (TP + FN)), ``f1`` (harmonic mean of the two), ``specificity`` (TN / (TN + FP)),
    one class against the rest.
    """
    cm = np.asarray(cm, dtype=float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise ValueError(f"confusion matrix must be ({len(classes)}, {len(classes)}), "
                         f"got {cm.shape}")
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    ppv, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return pd.DataFrame({
        "support": cm.sum(axis=1).astype(int),
        "ppv": ppv,
        "recall": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "specificity": _ratio(tn, tn + fp),
    }, index=pd.Index(list(classes), name="class"))


def global_from_confusion(cm: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall) and GMR (geometric mean of recalls).

    The means run over the classes that have true images (as scikit-learn's
    ``balanced_accuracy_score``); a class with recall 0 makes the GMR 0.
    """
    cm = np.asarray(cm, dtype=float)
    support = cm.sum(axis=1)
    present = support > 0
    recalls = np.diag(cm)[present] / support[present]
    total = cm.sum()
    return {
        "accuracy": float(np.trace(cm) / total) if total else np.nan,
        "balanced_accuracy": float(recalls.mean()) if len(recalls) else np.nan,
        "gmr": float(gmean(recalls)) if len(recalls) and recalls.min() > 0 else
        (0.0 if len(recalls) else np.nan),
    }


def binary_rates(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    """Detection rate (sensitivity), FPR, PPV, NPV, LR+ and LR- of a 2x2 table.

    ``LR+ = DR / FPR`` and ``LR- = (1 - DR) / (1 - FPR)``; a ratio with a zero denominator is
    ``inf`` (non-zero numerator) or NaN (0 / 0).
    """
    dr = float(_ratio(tp, tp + fn))
    fpr = float(_ratio(fp, fp + tn))

    def lr(num, den):
        if np.isnan(num) or np.isnan(den):
            return np.nan
        if den == 0:
            return np.inf if num > 0 else np.nan
        return num / den

    return {"detection_rate": dr, "fpr": fpr, "ppv": float(_ratio(tp, tp + fp)),
            "npv": float(_ratio(tn, tn + fn)), "lr_plus": lr(dr, fpr),
            "lr_minus": lr(1 - dr, 1 - fpr)}


# --------------------------------------------------------------------------------------------
# Table IV


def _auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    if is_positive.all() or not is_positive.any():
        return np.nan
    return float(roc_auc_score(is_positive, scores))


def class_metrics(predictions: pd.DataFrame, by: Sequence[str] = RUN_KEY) -> pd.DataFrame:
    """Per-class metrics of each group (default: each trained fold).

    Returns one row per group and class: the ``by`` columns, ``class``, ``support``, ``ppv``,
    ``recall``, ``f1``, ``specificity`` and ``auc`` (class probability, one against the rest;
    NaN when the group lacks positives or negatives).
    """
    classes = classes_of(predictions)
    rows = []
    for key, part in _groups(predictions, by):
        cm = confusion_matrix(part["label"], part["predicted"], labels=classes)
        table = per_class_from_confusion(cm, classes)
        table["auc"] = [_auc((part["label"] == c).to_numpy(), part["p_" + c].to_numpy())
                        for c in classes]
        table = table.reset_index()
        for name, value in zip(by, key):
            table[name] = value
        rows.append(table)
    out = pd.concat(rows, ignore_index=True)
    return out[list(by) + ["class", "support", *CLASS_METRICS]]


def global_metrics(predictions: pd.DataFrame, by: Sequence[str] = RUN_KEY) -> pd.DataFrame:
    """Global metrics of each group: ``n`` (rows), ``accuracy``, ``balanced_accuracy``, ``gmr``
    and ``auc_macro`` (mean of the one-vs-rest AUCs of the classes)."""
    classes = classes_of(predictions)
    rows = []
    for key, part in _groups(predictions, by):
        cm = confusion_matrix(part["label"], part["predicted"], labels=classes)
        aucs = [_auc((part["label"] == c).to_numpy(), part["p_" + c].to_numpy()) for c in classes]
        row = dict(zip(by, key))
        row["n"] = len(part)
        row.update(global_from_confusion(cm))
        row["auc_macro"] = float(np.nanmean(aucs)) if not np.isnan(aucs).all() else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=list(by) + ["n", *GLOBAL_METRICS])


def summarize(table: pd.DataFrame, by: Sequence[str] = MODEL_KEY,
              metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof 1) of metric columns over the rows of each group.

    Parameters
    ----------
    table : output of :func:`class_metrics` or :func:`global_metrics`.
    by : grouping columns (add ``"class"`` for per-class tables; it is added automatically when
        ``table`` has a ``class`` column).
    metrics : columns to summarise (default: those of :data:`CLASS_METRICS` /
        :data:`GLOBAL_METRICS` present).

    Returns ``by`` columns, ``n_runs``, and ``<metric>_mean``, ``<metric>_sd`` per metric.
    """
    by = list(by)
    if "class" in table.columns and "class" not in by:
        by.append("class")
    if metrics is None:
        metrics = [m for m in (*CLASS_METRICS, *GLOBAL_METRICS) if m in table.columns]
    grouped = table.groupby(by, sort=False)
    out = grouped.size().rename("n_runs").to_frame()
    for m in metrics:
        out[f"{m}_mean"] = grouped[m].mean()
        out[f"{m}_sd"] = grouped[m].std(ddof=1)
    return out.reset_index()


def format_mean_sd(summary: pd.DataFrame, metrics: Sequence[str] | None = None,
                   scale: float = 100.0, decimals: int = 2) -> pd.DataFrame:
    """``"92.53 ± 1.13"`` strings (as seed 001's Table IV) from a :func:`summarize` output.

    ``scale`` multiplies means and sds (100: percent; use 1 for AUCs shown as fractions).
    A single run shows its value without ``±``.
    """
    if metrics is None:
        metrics = [c[:-5] for c in summary.columns if c.endswith("_mean")]
    keys = [c for c in summary.columns if not c.endswith(("_mean", "_sd")) and c != "n_runs"]
    out = summary[keys].copy()
    for m in metrics:
        mean, sd = summary[f"{m}_mean"] * scale, summary[f"{m}_sd"] * scale
        out[m] = [f"{a:.{decimals}f}" if np.isnan(b) else f"{a:.{decimals}f} ± {b:.{decimals}f}"
                  for a, b in zip(mean, sd)]
    return out


# --------------------------------------------------------------------------------------------
# ROC curves and confusion matrices


def roc_curves(predictions: pd.DataFrame, by: Sequence[str] = RUN_KEY,
               fpr_grid: np.ndarray | None = None) -> pd.DataFrame:
    """One-vs-rest ROC curves of each group, on a common false-positive-rate grid.

    Returns long data for plotting: the ``by`` columns, ``class`` (a class name, ``"macro"`` -
    the mean of the class curves - or ``"micro"`` - the curve of all class/image pairs pooled),
    ``fpr`` (the grid, default 101 points from 0 to 1) and ``tpr`` (interpolated; 0 at fpr 0).
    """
    classes = classes_of(predictions)
    grid = np.linspace(0.0, 1.0, 101) if fpr_grid is None else np.asarray(fpr_grid, dtype=float)
    frames = []
    for key, part in _groups(predictions, by):
        labels = part["label"].to_numpy()
        probs = part[probability_columns(classes)].to_numpy(dtype=float)
        curves = {}
        for j, c in enumerate(classes):
            positive = labels == c
            if positive.all() or not positive.any():
                continue
            fpr, tpr, _ = roc_curve(positive, probs[:, j])
            curves[c] = np.interp(grid, fpr, tpr)
        if not curves:
            continue
        curves["macro"] = np.mean(list(curves.values()), axis=0)
        onehot = (labels[:, None] == np.asarray(classes)[None, :]).ravel()
        fpr, tpr, _ = roc_curve(onehot, probs.ravel())
        curves["micro"] = np.interp(grid, fpr, tpr)
        for name, tpr in curves.items():
            tpr = tpr.copy()
            tpr[grid == 0] = 0.0
            frame = pd.DataFrame({"class": name, "fpr": grid, "tpr": tpr})
            for col, value in reversed(list(zip(by, key))):
                frame.insert(0, col, value)
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(by) + ["class", "fpr", "tpr"])
    return pd.concat(frames, ignore_index=True)


def mean_roc(curves: pd.DataFrame, by: Sequence[str] = MODEL_KEY) -> pd.DataFrame:
    """Average :func:`roc_curves` over the folds/repetitions of each group: ``by``, ``class``,
    ``fpr``, ``tpr_mean``, ``tpr_sd`` (ddof 1) and ``n_curves``."""
    keys = list(by) + ["class", "fpr"]
    grouped = curves.groupby(keys, sort=False)["tpr"]
    out = grouped.agg(tpr_mean="mean", tpr_sd=lambda s: s.std(ddof=1), n_curves="size")
    return out.reset_index()


def confusion_matrices(predictions: pd.DataFrame, by: Sequence[str] = MODEL_KEY,
                       normalize: str | None = "true") -> pd.DataFrame:
    """Confusion matrices of each group (all its rows pooled), in long form.

    ``normalize``: ``"true"`` (rows sum to 1: the share of each true class given each
    prediction, as seed 001's Fig. 3), ``"pred"``, ``"all"`` or None (counts).

    Returns the ``by`` columns, ``true``, ``predicted``, ``count`` and ``value``.
    """
    if normalize not in ("true", "pred", "all", None):
        raise ValueError(f"normalize must be 'true', 'pred', 'all' or None, got {normalize!r}")
    classes = classes_of(predictions)
    frames = []
    for key, part in _groups(predictions, by):
        counts = confusion_matrix(part["label"], part["predicted"], labels=classes)
        values = counts.astype(float) if normalize is None else \
            np.nan_to_num(confusion_matrix(part["label"], part["predicted"], labels=classes,
                                           normalize=normalize))
        frame = pd.DataFrame({
            "true": np.repeat(classes, len(classes)),
            "predicted": np.tile(classes, len(classes)),
            "count": counts.ravel(),
            "value": values.ravel(),
        })
        for col, value in reversed(list(zip(by, key))):
            frame.insert(0, col, value)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------
# Seed 003: optimal cut-off with patient bootstrap


def optimal_cutoff(is_positive: np.ndarray, scores: np.ndarray,
                   sample_weight: np.ndarray | None = None) -> dict[str, float]:
    """The score threshold of highest accuracy (seed 003) and the rates there.

    Parameters
    ----------
    is_positive : bool (N,), the class of interest.
    scores : float (N,), its probability; ``score >= threshold`` is called positive.
    sample_weight : optional (N,) weights (bootstrap multiplicities).

    Returns ``threshold``, ``accuracy`` and :func:`binary_rates` at that threshold. Thresholds
    are those of scikit-learn's ``roc_curve``; ties go to the highest threshold.
    """
    y = np.asarray(is_positive, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    n_pos, n_neg = w[y].sum(), w[~y].sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the optimal cut-off needs positive and negative cases")
    fpr, tpr, thresholds = roc_curve(y, scores, sample_weight=w, drop_intermediate=False)
    accuracy = (tpr * n_pos + (1 - fpr) * n_neg) / (n_pos + n_neg)
    k = int(np.argmax(accuracy))
    tp, fp = tpr[k] * n_pos, fpr[k] * n_neg
    out = {"threshold": float(thresholds[k]), "accuracy": float(accuracy[k])}
    out.update(binary_rates(tp, fp, n_pos - tp, n_neg - fp))
    return out


def _patient_ids(predictions: pd.DataFrame, manifest: pd.DataFrame | None) -> np.ndarray:
    if "patient_id" in predictions.columns:
        return predictions["patient_id"].astype(str).to_numpy()
    if manifest is None:
        raise ValueError("resampling patients needs their ids: pass the manifest or a table with a "
                         "patient_id column (average_by_patient)")
    ids = image_info(manifest, ["patient_id"])["patient_id"]
    mapped = predictions["image_id"].map(ids)
    if mapped.isna().any():
        raise ValueError(f"image {predictions['image_id'][mapped.isna()].iloc[0]!r} is not in the "
                         "manifest")
    return mapped.astype(str).to_numpy()


def patient_bootstrap_weights(patient_ids: Sequence[str], n_boot: int,
                              rng: np.random.Generator | int = 0) -> np.ndarray:
    """Row weights of ``n_boot`` bootstrap samples that draw patients with replacement.

    Parameters
    ----------
    patient_ids : (N,) the patient of each row (image).
    n_boot : number of resamples.
    rng : a NumPy generator or a seed.

    Returns int (n_boot, N): in resample b, row i counts as many times as its patient was drawn
    (all images of a patient share the weight; the drawn patients number as many as there are).
    """
    rng = np.random.default_rng(rng)
    codes, uniques = pd.factorize(np.asarray(patient_ids))
    draws = rng.multinomial(len(uniques), np.full(len(uniques), 1 / len(uniques)), size=n_boot)
    return draws[:, codes]


def cutoff_metrics(
    predictions: pd.DataFrame,
    positive: str,
    manifest: pd.DataFrame | None = None,
    by: Sequence[str] = ("experiment", "model", "method", "repetition"),
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Seed 003's metrics at the optimal-accuracy cut-off of ``positive`` against the rest.

    Within each group (default: one repetition of one model; its folds together cover every
    image once) the cut-off is found on all rows, then the whole procedure is repeated on
    ``n_boot`` bootstrap samples that draw *patients* with replacement (all images of a drawn
    patient come along), giving percentile confidence intervals (``inverted_cdf`` percentiles, so
    that an infinite LR+ - no false positive - is ordered, not averaged). The ``threshold`` is
    ``inf`` when calling no case positive is the most accurate choice.

    Returns long data: the ``by`` columns, ``positive``, ``metric`` (:data:`CUTOFF_METRICS`),
    ``value``, ``ci_low``, ``ci_high``, ``n`` (rows) and ``n_patients``.
    """
    classes = classes_of(predictions)
    if positive not in classes:
        raise ValueError(f"positive class {positive!r} is not among {classes}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be between 0 and 1, got {ci}")
    rng = np.random.default_rng(seed)
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    rows = []
    for key, part in _groups(predictions, by):
        y = (part["label"] == positive).to_numpy()
        scores = part["p_" + positive].to_numpy(dtype=float)
        patients = _patient_ids(part, manifest)
        point = optimal_cutoff(y, scores)
        boot = []
        for w in patient_bootstrap_weights(patients, n_boot, rng):
            if w[y].sum() == 0 or w[~y].sum() == 0:
                continue
            boot.append([optimal_cutoff(y, scores, w)[m] for m in CUTOFF_METRICS])
        boot = np.asarray(boot, dtype=float).reshape(-1, len(CUTOFF_METRICS))
        for j, m in enumerate(CUTOFF_METRICS):
            values = boot[:, j][~np.isnan(boot[:, j])]  # inf (LR+ at FPR 0) stays in
            low, high = (np.percentile(values, [lo_q, hi_q], method="inverted_cdf")
                         if len(values) else (np.nan, np.nan))
            row = dict(zip(by, key))
            row.update(positive=positive, metric=m, value=point[m], ci_low=float(low),
                       ci_high=float(high), n=len(part), n_patients=len(set(patients)))
            rows.append(row)
    return pd.DataFrame(rows, columns=list(by) + ["positive", "metric", "value", "ci_low",
                                                  "ci_high", "n", "n_patients"])


def auc_by_train_fraction(predictions: pd.DataFrame, positive: str) -> pd.DataFrame:
    """Seed 003's Fig. 4a: AUC of ``positive`` against the rest per train fraction.

    Reads the experiments named ``<view>@train<pct>`` (see
    :func:`cxrlib.train.crossval.run_train_fraction_sweep`). Returns ``view``, ``model``,
    ``method``, ``repetition``, ``train_fraction`` (pct / 100), ``n_test`` and ``auc``, sorted by
    fraction.
    """
    if "p_" + positive not in predictions.columns:
        raise ValueError(f"positive class {positive!r} has no probability column")
    pattern = re.compile(r"^(?P<view>.+)@train(?P<pct>\d+)$")
    rows = []
    for (experiment, model, method, rep), part in predictions.groupby(
            ["experiment", "model", "method", "repetition"], sort=True):
        match = pattern.match(str(experiment))
        if not match:
            continue
        rows.append({"view": match["view"], "model": model, "method": method, "repetition": rep,
                     "train_fraction": int(match["pct"]) / 100, "n_test": len(part),
                     "auc": _auc((part["label"] == positive).to_numpy(),
                                 part["p_" + positive].to_numpy(dtype=float))})
    if not rows:
        raise ValueError("no experiment named <view>@train<pct> in the predictions table")
    return pd.DataFrame(rows).sort_values(["view", "model", "method", "train_fraction"],
                                          ignore_index=True)


# --------------------------------------------------------------------------------------------
# Seed 004: training curves


def training_curves(artifacts_dir: str | Path, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The per-epoch fastai CSV logs of the trained folds, in one long table.

    Parameters
    ----------
    artifacts_dir : the folder ``run_crossval`` wrote into.
    runs : the ``crossval_runs.csv`` table (read from ``artifacts_dir`` by default), which names
        each fold's log.

    Returns the run key columns, ``epoch``, ``train_loss``, ``valid_loss``, ``accuracy``,
    ``balanced_accuracy`` (validation) and ``lr``.
    """
    artifacts_dir = Path(artifacts_dir)
    if runs is None:
        path = artifacts_dir / "crossval_runs.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: no fold has been trained here")
        runs = pd.read_csv(path)
    frames = []
    for run in runs.itertuples(index=False):
        log = artifacts_dir / run.log
        if not log.is_file():
            raise FileNotFoundError(f"training log of {run.experiment}/{run.model} "
                                    f"r{run.repetition} f{run.fold} not found: {log}")
        frame = pd.read_csv(log).rename(columns={"balanced_accuracy_score": "balanced_accuracy"})
        frame = frame.drop(columns=[c for c in ("time",) if c in frame.columns])
        for col in reversed(RUN_KEY):
            frame.insert(0, col, getattr(run, col))
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(RUN_KEY) + ["epoch"])
    return pd.concat(frames, ignore_index=True)


def severity_accuracy(predictions: pd.DataFrame, manifest: pd.DataFrame,
                      positive: str = "covid19", by: Sequence[str] = RUN_KEY) -> pd.DataFrame:
    """Share of the ``positive`` images called ``positive``, per severity grade (seed 000, Table 6).

    Returns one row per group of ``by`` and severity present (in the schema's order):
    the ``by`` columns, ``severity``, ``n`` (images) and ``accuracy`` (fraction in [0, 1]).
    Positive images without a severity are left out.
    """
    severity = image_info(manifest, ["severity"])["severity"]
    rows = predictions[predictions["label"] == positive]
    rows = rows.assign(severity=rows["image_id"].map(severity).astype(object))
    rows = rows[rows["severity"].isin(SEVERITIES)]
    columns = list(by) + ["severity", "n", "accuracy"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows = rows.assign(correct=(rows["predicted"] == positive).astype(float))
    out = (rows.groupby(list(by) + ["severity"], sort=False)["correct"]
           .agg(n="size", accuracy="mean").reset_index())
    out["severity"] = pd.Categorical(out["severity"], categories=list(SEVERITIES), ordered=True)
    out = out.sort_values(list(by) + ["severity"], kind="stable")
    out["severity"] = out["severity"].astype(str)
    return out[columns].reset_index(drop=True)
