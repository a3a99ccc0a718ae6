"""Bias analysis of the out-of-fold predictions (notebook 04): no training here.

Every function reads the predictions table (:mod:`cxrlib.train.predictions`) and the manifest, and
returns a DataFrame:

- seed 001, Table V: per-class PPV, recall and F1 per projection (PA / AP) and experiment
  (:func:`projection_metrics`, the per-class rates of
  :func:`cxrlib.analysis.metrics.class_metrics`), beside the paper's numbers
  (:func:`projection_beside_paper`);
- seed 001, Table VI, generalised: for each factor (projection, sensor, sex, source, age band) and
  each true class, the share of each level among the test images, the correct predictions and
  the errors, with a chi-square test of "errors follow the test mix" (:func:`error_distribution`);
- subgroup AUC, sensitivity and specificity of one class against the rest, with 95% CIs from a
  bootstrap that resamples patients (:func:`cxrlib.analysis.metrics.patient_bootstrap_weights`, the
  one of seed 003's cut-off metrics) and the largest gap between the levels of a factor, with its
  own CI from the same resamples (:func:`subgroup_metrics`);
- seed 003: errors against age (Welch t-test) and sex (chi-square test) (:func:`error_vs_age_sex`);
- a forest plot of a metric per subgroup (:func:`plot_subgroups`).

Rates are fractions in [0, 1]; shares too (``*_share`` columns). The factor of a row comes from
the manifest (``age_band`` from ``age`` by :func:`age_bands`); manifest values that are missing
become the level ``"unknown"`` and are kept, so shares add up to 1.
"""
from __future__ import annotations

import re
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from cxrlib import paper_tables
from cxrlib.data.manifest import join_manifest
from cxrlib.analysis.metrics import class_metrics, patient_bootstrap_weights
from cxrlib.train.predictions import MODEL_KEY, classes_of

__all__ = [
    "FACTORS", "AGE_EDGES", "age_bands", "with_factors", "weighted_auc",
    "projection_metrics", "projection_beside_paper", "error_distribution", "subgroup_metrics",
    "error_vs_age_sex", "plot_subgroups",
]

#: The factors of the generalised Table VI, as manifest columns (``age_band`` is derived).
FACTORS = ("projection", "sensor", "sex", "source", "age_band")
#: Age band edges in years: [0, 40), [40, 60), [60, 80), [80, inf).
AGE_EDGES = (0, 40, 60, 80, np.inf)
_UNKNOWN = "unknown"


def age_bands(age: Sequence[float], edges: Sequence[float] = AGE_EDGES) -> pd.Series:
    """Age bands as strings ``"<40"``, ``"40-59"``, ``"60-79"``, ``"80+"`` (for the default edges).

    Parameters
    ----------
    age : (N,) ages in years; NaN gives ``"unknown"``.
    edges : increasing band edges; band k is ``[edges[k], edges[k+1])``.
    """
    edges = list(edges)
    if len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"age band edges must increase, got {edges}")
    names = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo <= 0:
            names.append(f"<{hi:g}")
        elif np.isinf(hi):
            names.append(f"{lo:g}+")
        else:
            names.append(f"{lo:g}-{hi - 1:g}")
    age = pd.to_numeric(pd.Series(age), errors="coerce")
    bands = pd.cut(age, bins=edges, right=False, labels=names)
    return bands.astype(object).where(age.notna(), _UNKNOWN).reset_index(drop=True)


def with_factors(predictions: pd.DataFrame, manifest: pd.DataFrame,
                 factors: Sequence[str] = FACTORS) -> pd.DataFrame:
    """The predictions with ``patient_id``, ``correct`` (bool) and the factor columns joined.

    Raises ``ValueError`` when an image is not in the manifest or a factor is neither a manifest
    column nor ``age_band`` (which needs ``age``).
    """
    wanted = ["patient_id"] + [f for f in factors if f != "age_band"]
    if "age_band" in factors:
        wanted.append("age")
    out = join_manifest(predictions.drop(columns=[c for c in wanted if c in predictions.columns]),
                        manifest, wanted, what=f"the predictions (factors {list(factors)})")
    if "age_band" in factors:
        out["age_band"] = age_bands(out["age"]).to_numpy()
    for f in factors:
        out[f] = out[f].astype(object).where(out[f].notna(), _UNKNOWN).astype(str)
    out["patient_id"] = out["patient_id"].astype(str)
    out["correct"] = (out["label"] == out["predicted"]).to_numpy()
    return out


# --------------------------------------------------------------------------------------------
# Table V


def projection_metrics(predictions: pd.DataFrame, manifest: pd.DataFrame,
                       by: Sequence[str] = MODEL_KEY) -> pd.DataFrame:
    """Seed 001's Table V from out-of-fold predictions: per-class rates per projection.

    The folds of a repetition are pooled (each image is a test image once per repetition); the
    rates are then averaged over repetitions, so ``support`` counts images, not image x
    repetition. Returns the ``by`` columns, ``projection``, ``class``, ``support``, ``ppv``,
    ``recall``, ``f1`` (fractions).
    """
    table = with_factors(predictions, manifest, factors=("projection",))
    keys = list(by) + ["projection"]
    per_rep = class_metrics(table, by=keys + ["repetition"])
    cols = ["support", "ppv", "recall", "f1"]
    out = per_rep.groupby(keys + ["class"], sort=False, dropna=False)[cols].mean().reset_index()
    return out[keys + ["class"] + cols]


def projection_beside_paper(ours: pd.DataFrame) -> pd.DataFrame:
    """Our Table V (percent) beside seed 001's: ``experiment``, ``projection``, ``class`` and
    ``<metric>`` / ``<metric>_paper`` for ppv, recall and f1 (the paper's means), plus every other
    column of ``ours``. Experiments without a paper counterpart get empty paper columns."""
    paper = paper_tables.load("arias2020_table5_projection")
    paper = paper.rename(columns={f"{m}_mean": f"{m}_paper" for m in ("ppv", "recall", "f1")})
    paper = paper[["experiment", "projection", "class", "ppv_paper", "recall_paper", "f1_paper"]]
    out = ours.copy()
    for m in ("ppv", "recall", "f1"):
        out[m] = (out[m] * 100).round(2)
    out["paper_experiment"] = out["experiment"].map(lambda e: paper_tables.ARIAS_EXPERIMENT.get(
        str(e).split("@")[0], ""))
    out = out.merge(paper.rename(columns={"experiment": "paper_experiment"}),
                    on=["paper_experiment", "projection", "class"], how="left")
    return out.drop(columns="paper_experiment")


# --------------------------------------------------------------------------------------------
# Table VI, generalised


def error_distribution(predictions: pd.DataFrame, manifest: pd.DataFrame,
                       factors: Sequence[str] = FACTORS,
                       by: Sequence[str] = (*MODEL_KEY, "repetition")) -> pd.DataFrame:
    """Seed 001's Table VI for every factor and true class: test mix vs hits vs errors.

    Within each group of ``by`` (default: one repetition of one model, in which every test image
    appears once), each ``factor`` and each true ``class``, the rows are the factor's levels:
    ``n_test``, ``n_correct``, ``n_error`` and the shares ``test_share``, ``correct_share``,
    ``error_share`` (each column sums to 1 over the levels; NaN when there is no error).

    ``chi2``, ``dof`` and ``p_value`` (the same on every level row of a block) test "errors follow
    the test mix": scipy's ``chi2_contingency`` on the 2 x L table (correct, error) x level,
    without continuity correction; NaN when there are no errors, no hits or a single level.
    """
    table = with_factors(predictions, manifest, factors)
    rows = []
    for key, part in table.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        for factor in factors:
            for cls, block in part.groupby("label", sort=True):
                counts = pd.crosstab(block[factor], block["correct"]).reindex(
                    columns=[True, False], fill_value=0)
                n_correct, n_error = counts[True].to_numpy(), counts[False].to_numpy()
                chi2 = dof = p = np.nan
                if n_error.sum() > 0 and n_correct.sum() > 0 and len(counts) > 1:
                    res = stats.chi2_contingency(np.vstack([n_correct, n_error]),
                                                 correction=False)
                    chi2, p, dof = float(res.statistic), float(res.pvalue), int(res.dof)
                n_test = n_correct + n_error
                for level, nt, nc, ne in zip(counts.index, n_test, n_correct, n_error):
                    row = dict(zip(by, key))
                    row.update(factor=factor, **{"class": cls}, level=level, n_test=int(nt),
                               n_correct=int(nc), n_error=int(ne),
                               test_share=nt / n_test.sum(),
                               correct_share=nc / n_correct.sum() if n_correct.sum() else np.nan,
                               error_share=ne / n_error.sum() if n_error.sum() else np.nan,
                               chi2=chi2, dof=dof, p_value=p)
                    rows.append(row)
    return pd.DataFrame(rows, columns=list(by) + [
        "factor", "class", "level", "n_test", "n_correct", "n_error", "test_share",
        "correct_share", "error_share", "chi2", "dof", "p_value"])


# --------------------------------------------------------------------------------------------
# Subgroups with patient-bootstrap CIs


def weighted_auc(is_positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (Mann-Whitney, ties counted half) under each row of a weight matrix.

    Parameters
    ----------
    is_positive : bool (N,).
    scores : float (N,).
    weights : (B, N) non-negative weights (e.g. bootstrap multiplicities), or (N,).

    Returns
    -------
    float (B,) (a float for 1-D weights); NaN where a row has no positive or no negative weight.
    Equals scikit-learn's ``roc_auc_score(is_positive, scores, sample_weight=w)``.
    """
    y = np.asarray(is_positive, dtype=bool)
    w = np.asarray(weights, dtype=float)
    one = w.ndim == 1
    w = np.atleast_2d(w)
    scores = np.asarray(scores, dtype=float)
    if len(scores) == 0:
        return np.nan if one else np.full(len(w), np.nan)
    order = np.argsort(scores, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(scores[order]) != 0])  # runs of tied scores
    pos = np.add.reduceat((w * y)[:, order], starts, axis=1)  # (B, U) per distinct score
    neg = np.add.reduceat((w * ~y)[:, order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return float(auc[0]) if one else auc


def _rates(y: np.ndarray, score: np.ndarray, called: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B, 3) weighted AUC, sensitivity and specificity of one subgroup under each weight row
    of ``w`` (B, n); NaN where undefined."""
    w = np.atleast_2d(np.asarray(w, dtype=float))
    pos, neg = w[:, y].sum(axis=1), w[:, ~y].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = np.where(pos > 0, w[:, y & called].sum(axis=1) / pos, np.nan)
        spec = np.where(neg > 0, w[:, ~y & ~called].sum(axis=1) / neg, np.nan)
    return np.column_stack([weighted_auc(y, score, w), sens, spec])


def subgroup_metrics(
    predictions: pd.DataFrame,
    manifest: pd.DataFrame,
    positive: str,
    factors: Sequence[str] = FACTORS,
    by: Sequence[str] = (*MODEL_KEY, "repetition"),
    n_boot: int = 500,
    ci: float = 0.95,
    min_level: int = 10,
    seed: int = 0,
) -> pd.DataFrame:
    """AUC, sensitivity and specificity of ``positive`` against the rest per subgroup, with
    patient-bootstrap CIs, and the largest gap between the levels of each factor.

    Parameters
    ----------
    predictions, manifest : the predictions table and the manifest (patients, factors).
    positive : the class of interest; sensitivity and specificity are those of the predicted
        class (``predicted == positive``), the AUC that of ``p_<positive>``.
    factors : manifest columns (``age_band`` derived from ``age``).
    by : groups in which every test image appears once (default one repetition of one model).
    n_boot : bootstrap resamples; each draws the group's patients with replacement
        (:func:`cxrlib.analysis.metrics.patient_bootstrap_weights`), all of a patient's images
        together.
    ci : confidence level of the percentile intervals.
    min_level : levels with fewer images are reported but left out of the gap.
    seed : seed of the resamples.

    Returns
    -------
    Long table: the ``by`` columns, ``factor``, ``level`` (a level, or ``"largest gap"``: the
    largest minus the smallest value among the levels with at least ``min_level`` images, the
    CI from the gap in every resample), ``metric`` (auc, sensitivity, specificity), ``value``,
    ``ci_low``, ``ci_high``, ``n`` (images) and ``n_patients``; for gap rows ``levels`` names the
    best and worst levels.
    """
    if "p_" + positive not in predictions.columns:
        raise ValueError(f"positive class {positive!r} has no probability column "
                         f"(classes: {classes_of(predictions)})")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be between 0 and 1, got {ci}")
    rng = np.random.default_rng(seed)
    q = [100 * (1 - ci) / 2, 100 * (1 + ci) / 2]
    metrics = ("auc", "sensitivity", "specificity")
    table = with_factors(predictions, manifest, factors)
    rows = []
    for key, part in table.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        y = (part["label"] == positive).to_numpy()
        score = part["p_" + positive].to_numpy(dtype=float)
        called = (part["predicted"] == positive).to_numpy()
        patients = part["patient_id"].to_numpy()
        weights = patient_bootstrap_weights(patients, n_boot, rng)
        for factor in factors:
            levels = part[factor].to_numpy()
            names = sorted(set(levels), key=_level_key)
            masks = {lv: levels == lv for lv in names}
            point = {lv: _rates(y[m], score[m], called[m], np.ones(m.sum()))[0]
                     for lv, m in masks.items()}
            boot = np.stack([_rates(y[m], score[m], called[m], weights[:, m])
                             for m in masks.values()], axis=1)  # (n_boot, levels, metrics)
            gap_levels = [j for j, lv in enumerate(names) if masks[lv].sum() >= min_level]
            for j, lv in enumerate(names):
                for k, metric in enumerate(metrics):
                    low, high = _percentiles(boot[:, j, k], q)
                    rows.append({**dict(zip(by, key)), "factor": factor, "level": lv,
                                 "metric": metric, "value": point[lv][k], "ci_low": low,
                                 "ci_high": high, "n": int(masks[lv].sum()),
                                 "n_patients": len(set(patients[masks[lv]])), "levels": ""})
            for k, metric in enumerate(metrics):
                values = np.array([point[names[j]][k] for j in gap_levels], dtype=float)
                ok = [j for j, v in zip(gap_levels, values) if not np.isnan(v)]
                if len(ok) < 2:
                    continue
                best = max(ok, key=lambda j: point[names[j]][k])
                worst = min((j for j in ok if j != best), key=lambda j: point[names[j]][k])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
                    # the gap between the two levels of the point estimate, in its direction, per
                    # resample (a max - min per resample would never reach 0 and is biased upward)
                    gaps = boot[:, best, k] - boot[:, worst, k]  # NaN where a level is undrawn
                low, high = _percentiles(gaps, q)
                in_gap = np.isin(levels, [names[j] for j in ok])
                rows.append({**dict(zip(by, key)), "factor": factor, "level": "largest gap",
                             "metric": metric,
                             "value": point[names[best]][k] - point[names[worst]][k],
                             "ci_low": low, "ci_high": high,
                             "n": int(in_gap.sum()), "n_patients": len(set(patients[in_gap])),
                             "levels": f"{names[best]} - {names[worst]}"})
    return pd.DataFrame(rows, columns=list(by) + ["factor", "level", "metric", "value", "ci_low",
                                                  "ci_high", "n", "n_patients", "levels"])


def _level_key(level: str) -> tuple:
    """Sort key of factor levels: age bands by their lower edge (``"<40"`` first), then the
    other levels alphabetically."""
    match = re.match(r"^(<)?(\d+)", level)
    if match:
        return (0, -1.0 if match.group(1) else float(match.group(2)), level)
    return (1, 0.0, level)


def _percentiles(values: np.ndarray, q: Sequence[float]) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if not len(values):
        return np.nan, np.nan
    low, high = np.percentile(values, q)
    return float(low), float(high)


# --------------------------------------------------------------------------------------------
# Seed 003: errors against age and sex


def error_vs_age_sex(predictions: pd.DataFrame, manifest: pd.DataFrame,
                     by: Sequence[str] = (*MODEL_KEY, "repetition")) -> pd.DataFrame:
    """Are the errors related to the patient's age or sex? (seed 003's t-tests)

    Per group of ``by``: ``test`` ``"age"`` compares the ages of the misclassified and the
    correctly classified images (Welch's t-test; ``effect`` = mean age of errors minus that of
    hits, years); ``test`` ``"sex"`` compares the error rates of the sexes (chi-square test of
    independence of sex x correct, no continuity correction; ``effect`` = error rate of F minus
    that of M). Returns the ``by`` columns, ``test``, ``statistic``, ``p_value``, ``effect``,
    ``n`` and ``detail`` (the group means or rates). Images are treated as independent (the
    paper's test); a patient's several images make the p-values optimistic.
    """
    table = with_factors(predictions, manifest, factors=("sex", "age_band"))
    rows = []
    for key, part in table.groupby(list(by), sort=True):
        base = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        age = pd.to_numeric(part["age"], errors="coerce")
        err, hit = age[~part["correct"]].dropna(), age[part["correct"]].dropna()
        if len(err) >= 2 and len(hit) >= 2:
            res = stats.ttest_ind(err, hit, equal_var=False)
            rows.append({**base, "test": "age", "statistic": float(res.statistic),
                         "p_value": float(res.pvalue), "effect": err.mean() - hit.mean(),
                         "n": len(err) + len(hit),
                         "detail": f"mean age errors {err.mean():.1f}, hits {hit.mean():.1f}"})
        known = part[part["sex"].isin(["F", "M"])]
        counts = pd.crosstab(known["sex"], known["correct"]).reindex(
            index=["F", "M"], columns=[True, False], fill_value=0)
        if (counts.sum(axis=1) > 0).all() and (counts.sum(axis=0) > 0).all():
            res = stats.chi2_contingency(counts.to_numpy(), correction=False)
            rate = counts[False] / counts.sum(axis=1)
            rows.append({**base, "test": "sex", "statistic": float(res.statistic),
                         "p_value": float(res.pvalue), "effect": rate["F"] - rate["M"],
                         "n": int(counts.to_numpy().sum()),
                         "detail": f"error rate F {rate['F']:.3f}, M {rate['M']:.3f}"})
    return pd.DataFrame(rows, columns=list(by) + ["test", "statistic", "p_value", "effect", "n",
                                                  "detail"])


# --------------------------------------------------------------------------------------------
# Figure


def plot_subgroups(subgroups: pd.DataFrame, metric: str = "auc", experiment: str | None = None):
    """Forest plot of one metric per subgroup with its bootstrap CI (:func:`subgroup_metrics`).

    One panel per factor, one point per level (``largest gap`` rows left out), for one
    ``experiment`` (default: the first) and its first repetition. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    table = subgroups[(subgroups["metric"] == metric) & (subgroups["level"] != "largest gap")]
    if table.empty:
        raise ValueError(f"no subgroup rows for metric {metric!r}")
    experiment = table["experiment"].iloc[0] if experiment is None else experiment
    table = table[(table["experiment"] == experiment)
                  & (table["repetition"] == table["repetition"].min())]
    factors = list(dict.fromkeys(table["factor"]))
    fig, axes = plt.subplots(1, len(factors), figsize=(3.2 * len(factors), 3.2), sharex=True,
                             squeeze=False)
    for ax, factor in zip(axes[0], factors):
        part = table[table["factor"] == factor].reset_index(drop=True)
        y = np.arange(len(part))
        err = np.vstack([part["value"] - part["ci_low"], part["ci_high"] - part["value"]])
        ax.errorbar(part["value"], y, xerr=np.clip(np.nan_to_num(err), 0, None), fmt="o",
                    capsize=3)
        ax.set_yticks(y, [f"{lv} (n={n})" for lv, n in zip(part["level"], part["n"])])
        ax.set(title=factor, xlabel=metric, xlim=(-0.02, 1.02))
        ax.invert_yaxis()
    fig.suptitle(f"{experiment}: {metric} per subgroup, 95% patient-bootstrap CI")
    fig.tight_layout()
    return fig
