"""Notebooks 02 and 03's tables beside the papers' and their figures.

- :func:`table4_beside_paper`, :func:`global_beside_paper`, :func:`binary_beside_paper` (with
  :func:`cit_rows` for notebook 02's FuCiTNet and COVID-SDNet rows), :func:`severity_beside_paper`,
  :func:`cutoff_beside_paper`: our mean +- sd (percent) next to the published numbers
  (:mod:`cxrlib.paper_tables`);
- :func:`init_sentence`, :func:`compare_experiments`: what the runs started from, and the paired
  difference of two experiments;
- :func:`plot_mean_roc`, :func:`plot_auc_by_train_fraction`, :func:`plot_confusion_matrices`,
  :func:`plot_training_curves`: figures.

Inputs are the tables of :mod:`cxrlib.analysis.metrics` (``class_metrics`` / ``global_metrics``
passed through ``summarize``): rates are fractions in [0, 1]; the comparison tables show percent.
What notebook 03 trains with is :func:`cxrlib.train.crossval.classifier_setup`; the views it reads,
:func:`cxrlib.artifacts.read_views`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from cxrlib import paper_tables
from cxrlib.analysis.metrics import CUTOFF_METRICS, cutoff_metrics
from cxrlib.train.predictions import MODEL_KEY, RUN_KEY, average_by_patient, classes_of

__all__ = [
    "table4_beside_paper", "cutoff_beside_paper", "format_cutoff",
    "global_beside_paper", "binary_metrics", "binary_beside_paper", "cit_rows", "CIT_PAPER_METHODS",
    "severity_beside_paper", "init_sentence", "compare_experiments", "plot_mean_roc",
    "plot_auc_by_train_fraction", "plot_confusion_matrices", "plot_training_curves",
]

#: Notebook 02's models (``cxrlib.train.cit``) and their names in seed 000's Tables 5 and 7.
CIT_PAPER_METHODS = {"fucitnet": "FuCiTNet", "covid-sdnet": "COVID-SDNet"}
_PAPER_SEVERITY = {"normal_pcr_pos": "Normal-PCR+", "mild": "Mild", "moderate": "Moderate",
                   "severe": "Severe"}


def _pm(mean, sd, scale: float = 100.0, decimals: int = 2) -> str:
    if mean is None or pd.isna(mean):
        return ""
    text = f"{mean * scale:.{decimals}f}"
    return text if sd is None or pd.isna(sd) else f"{text} ± {sd * scale:.{decimals}f}"


def table4_beside_paper(class_summary: pd.DataFrame) -> pd.DataFrame:
    """Seed 001, Table IV per class: ours beside the paper's.

    Parameters
    ----------
    class_summary : ``summarize(class_metrics(...))`` rows of experiments ``exp1``/``exp2``/
        ``exp3`` (others are ignored).

    Returns one row per (experiment, model, method, class): ``PPV``, ``Recall``, ``F1`` as
    ``"mean ± sd"`` percent, ours and ``paper`` columns side by side.
    """
    paper = paper_tables.load("arias2020_table4_performance").set_index(["experiment", "class"])
    rows = []
    ours = class_summary[class_summary["experiment"].isin(paper_tables.ARIAS_EXPERIMENT)]
    for rec in ours.to_dict("records"):
        ref = paper.loc[(paper_tables.ARIAS_EXPERIMENT[rec["experiment"]], rec["class"])]
        row = {key: rec[key] for key in (*MODEL_KEY, "class")}
        for metric, name in (("ppv", "PPV"), ("recall", "Recall"), ("f1", "F1")):
            row[name] = _pm(rec[f"{metric}_mean"], rec[f"{metric}_sd"])
            row[f"{name} (paper)"] = _pm(ref[f"{metric}_mean"], ref[f"{metric}_std"], scale=1)
        rows.append(row)
    return pd.DataFrame(rows)


def global_beside_paper(global_summary: pd.DataFrame) -> pd.DataFrame:
    """Seed 001, Table IV global metrics and the average AUC of its Fig. 4, beside the paper's.

    Returns one row per (experiment, model, method) of ``exp1``-``exp3``: ``Acc``, ``BAcc``,
    ``GMR`` (percent) and ``AUC`` (fraction), each with its ``(paper)`` column.
    """
    paper = paper_tables.load("arias2020_table4_global").set_index("experiment")
    auc = paper_tables.load("arias2020_global_auc").set_index("experiment")["average_auc"]
    rows = []
    ours = global_summary[global_summary["experiment"].isin(paper_tables.ARIAS_EXPERIMENT)]
    for rec in ours.itertuples():
        key = paper_tables.ARIAS_EXPERIMENT[rec.experiment]
        row = {"experiment": rec.experiment, "model": rec.model, "method": rec.method}
        for metric, name, ref in (("accuracy", "Acc", "acc"), ("balanced_accuracy", "BAcc", "bacc"),
                                  ("gmr", "GMR", "gmr")):
            row[name] = _pm(getattr(rec, f"{metric}_mean"), getattr(rec, f"{metric}_sd"))
            row[f"{name} (paper)"] = _pm(paper.loc[key, f"{ref}_mean"],
                                         paper.loc[key, f"{ref}_std"], scale=1)
        row["AUC"] = _pm(rec.auc_macro_mean, rec.auc_macro_sd, scale=1, decimals=3)
        row["AUC (paper)"] = f"{auc[key]:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def binary_metrics(class_summary: pd.DataFrame, global_summary: pd.DataFrame,
                   negative: str = "control", positive: str = "covid19") -> pd.DataFrame:
    """Seed 000's columns (Tables 5 and 7) from our summaries, fractions in [0, 1].

    Returns one row per (experiment, model, method): ``neg_specificity`` (recall of the
    negatives), ``neg_precision``, ``neg_f1``, ``pos_sensitivity``, ``pos_precision``,
    ``pos_f1`` and ``accuracy``, each as ``<name>_mean`` and ``<name>_sd``.
    """
    key = list(MODEL_KEY)
    parts = []
    for cls, prefix, first in ((negative, "neg", "specificity"), (positive, "pos", "sensitivity")):
        part = class_summary[class_summary["class"] == cls].set_index(key)
        if part.empty:
            raise ValueError(f"class {cls!r} is not in the class summary")
        for ours, theirs in (("recall", first), ("ppv", "precision"), ("f1", "f1")):
            for stat in ("mean", "sd"):
                parts.append(part[f"{ours}_{stat}"].rename(f"{prefix}_{theirs}_{stat}"))
    glob = global_summary.set_index(key)
    parts += [glob["accuracy_mean"], glob["accuracy_sd"]]
    return pd.concat(parts, axis=1).reset_index()


def binary_beside_paper(binary: pd.DataFrame, rows: Mapping[str | tuple[str, str], str],
                        paper_table: str = "tabik2020_table5_methods") -> pd.DataFrame:
    """Our :func:`binary_metrics` rows beside rows of seed 000's Table 5 (or 7).

    Parameters
    ----------
    binary : :func:`binary_metrics` output.
    rows : ``{ours: paper method}``; ``ours`` is an experiment (its first row) or an
        ``(experiment, model)`` pair, e.g. ``{("sdnet", "covid-sdnet"): "COVID-SDNet"}``.
    paper_table : ``tabik2020_table5_methods`` or ``tabik2020_table7_no_normal_pcr``.

    Returns one row per metric (percent, ``"mean ± sd"``), one column per compared pair:
    ``<experiment>`` or ``<experiment>/<model>`` (ours) and ``<paper method> (paper)``.
    """
    paper = paper_tables.load(paper_table).set_index("method")
    metrics = ["neg_specificity", "neg_precision", "neg_f1", "pos_sensitivity",
               "pos_precision", "pos_f1", "accuracy"]
    out = pd.DataFrame(index=pd.Index(metrics, name="metric"))
    for key, method in rows.items():
        experiment, model = (key, None) if isinstance(key, str) else key
        ours = binary[binary["experiment"] == experiment]
        if model is not None:
            ours = ours[ours["model"] == model]
        if ours.empty:
            raise ValueError(f"experiment {experiment!r}" + (f" model {model!r}" if model else "")
                             + " has no rows in the binary table")
        if method not in paper.index:
            raise ValueError(f"{paper_table} has no method {method!r}")
        ours = ours.iloc[0]
        column = experiment if model is None else f"{experiment}/{model}"
        out[column] = [_pm(ours[f"{m}_mean"], ours[f"{m}_sd"]) for m in metrics]
        out[f"{method} (paper)"] = [_pm(paper.loc[method, f"{m}_mean"],
                                        paper.loc[method, f"{m}_std"], scale=1) for m in metrics]
    return out.reset_index()


def cit_rows(binary: pd.DataFrame, experiment: str) -> dict[tuple[str, str], str]:
    """``{(experiment, model): paper method}`` for the FuCiTNet / COVID-SDNet rows of notebook
    02 (models ``fucitnet``, ``covid-sdnet``) that ``binary`` holds for ``experiment``; pass it
    to :func:`binary_beside_paper`."""
    present = set(binary.loc[binary["experiment"] == experiment, "model"])
    return {(experiment, model): method for model, method in CIT_PAPER_METHODS.items()
            if model in present}


def severity_beside_paper(severity_summary: pd.DataFrame,
                          settings: Mapping[str, str]) -> pd.DataFrame:
    """Accuracy per severity (``summarize(severity_accuracy(...), by=MODEL_KEY + ("severity",))``)
    beside seed 000's Table 6.

    ``settings`` maps our experiment to the paper's setting (``all_severities`` or
    ``without_normal_pcr``). Returns ``experiment``, ``setting``, ``severity`` (paper's name),
    ``accuracy`` and ``accuracy (paper)`` as ``"mean ± sd"`` percent.
    """
    paper = paper_tables.load("tabik2020_table6_severity").set_index(["setting", "severity"])
    rows = []
    for rec in severity_summary[severity_summary["experiment"].isin(settings)].itertuples():
        setting, name = settings[rec.experiment], _PAPER_SEVERITY[rec.severity]
        ref = paper.loc[(setting, name)] if (setting, name) in paper.index else None
        rows.append({"experiment": rec.experiment, "model": rec.model, "setting": setting,
                     "severity": name, "accuracy": _pm(rec.accuracy_mean, rec.accuracy_sd),
                     "accuracy (paper)": "" if ref is None else
                     _pm(ref["accuracy_mean"], ref["accuracy_std"], scale=1)})
    return pd.DataFrame(rows)


def init_sentence(runs: pd.DataFrame) -> str:
    """How each model's weights were initialised, from ``read_runs(...)['init']``, in words."""
    if runs.empty:
        return "No fold has been trained."
    parts = [f"{model}: {'; '.join(sorted(set(group['init'].astype(str))))}"
             for model, group in runs.groupby("model", sort=True)]
    return "Weights - " + " · ".join(parts) + "."


def compare_experiments(global_summary: pd.DataFrame, first: str, second: str,
                        metric: str = "balanced_accuracy") -> str:
    """One sentence comparing two experiments' mean ``metric`` (percent), and whether the gap
    exceeds the larger of their fold-to-fold standard deviations.

    Parameters
    ----------
    global_summary : ``summarize(global_metrics(...))`` with one row per experiment (the first
        row of each is used).
    first, second : experiment names.
    metric : a global metric (``accuracy``, ``balanced_accuracy``, ``gmr``, ``auc_macro``).
    """
    rows = {}
    for name in (first, second):
        found = global_summary[global_summary["experiment"] == name]
        if found.empty:
            raise ValueError(f"experiment {name!r} is not in the summary "
                             f"(it has {sorted(set(global_summary['experiment']))})")
        rows[name] = found.iloc[0]
    a, b = (100 * rows[n][f"{metric}_mean"] for n in (first, second))
    spread = 100 * np.nanmax([rows[n][f"{metric}_sd"] for n in (first, second)] + [0.0])
    label = metric.replace("_", " ")
    if abs(a - b) <= spread:
        verdict = f"a gap within the fold-to-fold spread (sd up to {spread:.1f} points)"
    else:
        verdict = (f"`{first}` {'higher' if a > b else 'lower'} by more than the fold-to-fold "
                   f"spread (sd up to {spread:.1f} points)")
    return f"{label} {a:.1f}% for `{first}` against {b:.1f}% for `{second}`: {verdict}"


# --------------------------------------------------------------------------------------------
# Figures


def plot_mean_roc(mean_curves: pd.DataFrame, title: str = ""):
    """One panel per (experiment, model, method) of :func:`cxrlib.analysis.metrics.mean_roc`: the
    mean one-vs-rest ROC curve of each class (and the macro average, dashed) with a +-1 sd band
    over folds. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    groups = list(mean_curves.groupby(list(MODEL_KEY), sort=False))
    if not groups:
        raise ValueError("no ROC curves to plot")
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 3.6), squeeze=False)
    for ax, (key, part) in zip(axes[0], groups):
        for name, curve in part.groupby("class", sort=False):
            if name == "micro":
                continue
            style = "--" if name == "macro" else "-"
            line, = ax.plot(curve["fpr"], curve["tpr_mean"], style, label=name)
            sd = curve["tpr_sd"].fillna(0).to_numpy()
            ax.fill_between(curve["fpr"], curve["tpr_mean"] - sd,
                            np.minimum(curve["tpr_mean"] + sd, 1), color=line.get_color(),
                            alpha=0.15, linewidth=0)
        ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
        ax.set(title=" / ".join(map(str, key[:2])), xlabel="false positive rate",
               ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_auc_by_train_fraction(table: pd.DataFrame, positive: str = "covid19"):
    """Seed 003's Fig. 4a: the held-out AUC of ``positive`` against the rest per share of
    patients trained on, one line per (view, model, method) of
    :func:`cxrlib.analysis.metrics.auc_by_train_fraction`'s table. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    if table.empty:
        raise ValueError("no train fraction to plot")
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for (view, model, method), part in table.groupby(["view", "model", "method"], sort=False):
        part = part.sort_values("train_fraction")
        ax.plot(100 * part["train_fraction"], part["auc"], marker="o",
                label=f"{view} / {model} ({method})")
    ax.set(xlabel="patients trained on (%)", ylabel=f"AUC, {positive} vs rest (held-out)",
           xlim=(0, 100), ylim=(min(0.5, table["auc"].min() - 0.02), 1.0))
    ax.set_title("Held-out AUC by training share (seed 003, Fig. 4a)", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_confusion_matrices(matrices: pd.DataFrame, title: str = ""):
    """One heat map per (experiment, model, method) of
    :func:`cxrlib.analysis.metrics.confusion_matrices` (rows: true class, columns: predicted; the
    cell shows ``value``, normalised per true class). Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    groups = list(matrices.groupby(list(MODEL_KEY), sort=False))
    if not groups:
        raise ValueError("no confusion matrices to plot")
    fig, axes = plt.subplots(1, len(groups), figsize=(3.4 * len(groups), 3.2), squeeze=False)
    for ax, (key, part) in zip(axes[0], groups):
        classes = list(dict.fromkeys(part["true"]))
        grid = part.pivot(index="true", columns="predicted", values="value").loc[classes, classes]
        ax.imshow(grid.to_numpy(), vmin=0, vmax=1, cmap="Blues")
        for i in range(len(classes)):
            for j in range(len(classes)):
                value = grid.iloc[i, j]
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if value > 0.6 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=30, fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set(title=" / ".join(map(str, key[:2])), xlabel="predicted", ylabel="true")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_training_curves(curves: pd.DataFrame, title: str = ""):
    """Training and validation loss per epoch of :func:`cxrlib.analysis.metrics.training_curves`,
    one line per trained fold, one panel per (experiment, model, method). Returns the figure."""
    import matplotlib.pyplot as plt

    groups = list(curves.groupby(list(MODEL_KEY), sort=False))
    if not groups:
        raise ValueError("no training curves to plot")
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.2), squeeze=False)
    for ax, (key, part) in zip(axes[0], groups):
        for (rep, fold), run in part.groupby(["repetition", "fold"]):
            ax.plot(run["epoch"], run["train_loss"], "-", color="C0", alpha=0.7,
                    label="train" if (rep, fold) == (0, 0) else None)
            ax.plot(run["epoch"], run["valid_loss"], "-", color="C1", alpha=0.7,
                    label="validation" if (rep, fold) == (0, 0) else None)
        ax.set(title=" / ".join(map(str, key[:2])), xlabel="epoch", ylabel="loss")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


#: Seed 003's names of the classes of its Table 3 (``bacterial`` is its bacterial pneumonia).
_SEED003_CLASS = {"covid19": "covid19", "pneumonia": "bacterial"}


def cutoff_beside_paper(
    predictions: pd.DataFrame,
    manifest: pd.DataFrame,
    positives: Sequence[str] = ("covid19", "pneumonia"),
    by_patient: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Seed 003's Table 3: each class against the rest at its optimal-accuracy cut-off, with
    patient-bootstrap confidence intervals, beside the paper's numbers.

    Parameters
    ----------
    predictions : image-level predictions table (every fold of a repetition together).
    manifest : gives each image's patient (and study date).
    positives : the classes of interest (those not in the predictions are skipped).
    by_patient : score patients, not images: average the probabilities of a patient's images
        of one day first (:func:`cxrlib.train.predictions.average_by_patient`), as seed 003 does.
    n_boot, seed : bootstrap resamples (of patients) and their seed
        (:func:`cxrlib.analysis.metrics.cutoff_metrics`).

    Returns
    -------
    One row per (experiment, model, method, repetition, positive, metric) with ``value``,
    ``ci_low``, ``ci_high`` (rates as fractions, likelihood ratios as ratios), ``n`` (patients
    or images scored), ``level`` and ``paper`` (seed 003's value on the same scale; NaN where
    it published none, e.g. for the threshold).
    """
    rows = average_by_patient(predictions, manifest) if by_patient else predictions
    published = paper_tables.load("inception2020_results").set_index("quantity")["value"]
    frames = []
    for positive in [p for p in positives if p in classes_of(predictions)]:
        table = cutoff_metrics(rows, positive, manifest=manifest, n_boot=n_boot, seed=seed)
        name = _SEED003_CLASS.get(positive, positive)

        def paper(metric):
            value = published.get(f"{name}_{metric}", np.nan)
            return value if metric.startswith("lr_") else value / 100
        table["paper"] = table["metric"].map(paper)
        frames.append(table)
    if not frames:
        raise ValueError(f"none of the classes {list(positives)} is in the predictions")
    out = pd.concat(frames, ignore_index=True)
    out.insert(out.columns.get_loc("positive") + 1, "level",
               "patient" if by_patient else "image")
    order = {m: i for i, m in enumerate(CUTOFF_METRICS)}
    return out.sort_values([*RUN_KEY[:-1], "positive", "metric"], key=lambda c: c.map(order)
                           if c.name == "metric" else c, ignore_index=True)


def format_cutoff(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`cutoff_beside_paper`'s table for reading: one row per model and class, a column per
    metric with ours and the 95% interval, then the paper's (rates in percent, LR+ and LR- as
    ratios, the cut-off as a probability)."""
    def cell(value, low=np.nan, high=np.nan, percent=True):
        if pd.isna(value):
            return ""
        scale, fmt = (100, "{:.1f}") if percent else (1, "{:.2f}")
        text = fmt.format(scale * value)
        return text + (f" [{fmt.format(scale * low)}, {fmt.format(scale * high)}]"
                       if pd.notna(low) else "")
    rows = []
    keys = [*RUN_KEY[:-1], "positive", "level", "n"]
    for key, part in table.groupby(keys, sort=False):
        row = dict(zip(keys, key))
        for rec in part.itertuples(index=False):
            percent = rec.metric not in ("lr_plus", "lr_minus", "threshold")
            row[rec.metric] = cell(rec.value, rec.ci_low, rec.ci_high, percent)
            if rec.metric != "threshold":
                row[f"{rec.metric} (paper)"] = cell(rec.paper, percent=percent)
        rows.append(row)
    return pd.DataFrame(rows)
