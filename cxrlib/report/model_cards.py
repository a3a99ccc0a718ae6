"""A model card per trained model family, written from a run's tables at the end of a run.

A *family* is one model architecture trained with one recipe (``model``, ``method`` of the
predictions table, :data:`cxrlib.train.predictions.MODEL_KEY` without the experiment); its rows are
the experiments (preprocessing views) it was trained on. For each cohort of a run folder,
:func:`write_model_cards` writes::

    <cohort>/model_cards/metrics_ci.csv          accuracy and balanced accuracy with 95%
                                                 patient-bootstrap CIs per trained model
    <cohort>/model_cards/<model>_<method>.md     one card per family

Every number of a card comes from the run's tables (``tables/*.csv``, ``artifacts/*.csv``) and
its out-of-fold predictions; a section whose table the run did not write says so. Links in a
card are relative to the card.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlib.analysis.metrics import patient_bootstrap_weights

CARDS_DIR = "model_cards"
CI_FILE = "metrics_ci.csv"
RESEARCH_ONLY = ("**Research use only.** Trained and evaluated to reproduce published studies; "
                 "not a medical device, not validated for clinical use, and not to be used for "
                 "the diagnosis or care of patients.")

#: What each preprocessing view of :mod:`cxrlib.preprocess.views` shows the network.
VIEW_TEXT = {
    "exp1": "the whole radiograph, histogram-equalised (seed 001, experiment 1)",
    "exp2": "a square region around the lungs cut from the unmasked image, equalised "
            "(seed 001, experiment 2)",
    "exp3": "the same square with everything outside the dilated lung mask set to 0, "
            "equalised inside the lungs (seed 001, experiment 3)",
    "sdnet": "the rectangle around both lungs plus a 2.5% margin, not equalised (seed 000)",
}


#: The notebook reports a card links when the run made them.
REPORTS = ("03_classifier_cv.html", "04_bias_analysis.html", "06_gradcam.html")


def read_csv(cohort_dir: Path, rel: str) -> pd.DataFrame | None:
    """``cohort_dir/rel`` as a DataFrame, or None when the run did not write it."""
    path = Path(cohort_dir) / rel
    return pd.read_csv(path) if path.is_file() else None


def _predictions(cohort_dir: Path) -> pd.DataFrame | None:
    path = Path(cohort_dir) / "artifacts" / "predictions.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def patient_groups(cohort_dir: Path) -> pd.Series | None:
    """image_id -> patient group of the split plan (``artifacts/split_plan.csv``), or None."""
    plan = read_csv(cohort_dir, "artifacts/split_plan.csv")
    if plan is None:
        return None
    return plan.drop_duplicates("image_id").set_index("image_id")["group"].astype(str)


def _rates(hits: np.ndarray, support: np.ndarray) -> tuple[float, float]:
    """(accuracy, balanced accuracy) from per-class hit and support counts (C,)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        recalls = np.where(support > 0, hits / np.where(support > 0, support, 1), np.nan)
    return float(hits.sum() / support.sum()), float(np.nanmean(recalls))


def bootstrap_accuracy(labels, predicted, patients, n_boot: int = 500, seed: int = 0) -> dict:
    """Accuracy and balanced accuracy with 95% percentile CIs from a patient bootstrap
    (:func:`cxrlib.analysis.metrics.patient_bootstrap_weights`: all rows of a drawn patient come
    along).

    Inputs: equal-length sequences of true labels, predicted labels and patient ids (one row per
    prediction). Returns ``accuracy``, ``accuracy_ci_low``, ``accuracy_ci_high``,
    ``balanced_accuracy`` and its CI, ``n`` (rows) and ``n_patients``.
    """
    y = np.asarray(labels).astype(str)
    hit = (y == np.asarray(predicted).astype(str)).astype(float)
    classes, cls = np.unique(y, return_inverse=True)
    onehot = np.eye(len(classes))[cls]  # (N, C)
    acc, bacc = _rates(hit @ onehot, onehot.sum(0))
    boot = [_rates(w @ (onehot * hit[:, None]), w @ onehot)
            for w in patient_bootstrap_weights(patients, n_boot, seed)]
    lo, hi = (np.nanpercentile(np.asarray(boot), [2.5, 97.5], axis=0) if boot
              else ([np.nan] * 2, [np.nan] * 2))
    return {"accuracy": acc, "accuracy_ci_low": lo[0], "accuracy_ci_high": hi[0],
            "balanced_accuracy": bacc, "balanced_accuracy_ci_low": lo[1],
            "balanced_accuracy_ci_high": hi[1], "n": len(y),
            "n_patients": int(pd.Series(np.asarray(patients)).nunique())}


def metrics_with_ci(cohort_dir: Path, n_boot: int = 500, seed: int = 0) -> pd.DataFrame:
    """Pooled out-of-fold accuracy and balanced accuracy with patient-bootstrap 95% CIs.

    Input: a cohort's run folder (its ``artifacts/predictions.parquet`` and split plan; images
    without a patient group count as their own patient). Output: one row per ``experiment``,
    ``model``, ``method`` (all repetitions pooled) with the columns of
    :func:`bootstrap_accuracy`; empty when the run has no predictions.
    """
    pred = _predictions(cohort_dir)
    if pred is None or pred.empty:
        return pd.DataFrame()
    groups = patient_groups(cohort_dir)
    patients = pred["image_id"].map(groups) if groups is not None else pred["image_id"]
    pred = pred.assign(_patient=patients.fillna(pred["image_id"]))
    rows = []
    for (exp, model, method), part in pred.groupby(["experiment", "model", "method"], sort=True):
        rows.append({"experiment": exp, "model": model, "method": method,
                     **bootstrap_accuracy(part["label"], part["predicted"], part["_patient"],
                                          n_boot, seed)})
    return pd.DataFrame(rows)


def fmt_ci(value, low, high, scale: float = 100.0) -> str:
    """'61.2 (48.0-72.5)' in percent; '' for a missing value."""
    if pd.isna(value):
        return ""
    return f"{value * scale:.1f} ({low * scale:.1f}-{high * scale:.1f})"


def md_table(df: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (no index), NaN as blank."""
    if df is None or df.empty:
        return "_(no rows)_"
    return df.astype(object).where(df.notna(), "").to_markdown(index=False)


def paper_values(cohort_dir: Path, experiment: str, model: str, method: str) -> dict:
    """The paper's accuracy-type numbers beside ours for one trained model, as strings.

    Reads ``cv_global_vs_paper.csv`` (seed 001: ``Acc (paper)``, ``BAcc (paper)``, ``AUC
    (paper)``) or the seed-000 tables ``cv_table5_vs_paper.csv`` / ``cv_table7_vs_paper.csv``
    (row ``accuracy``, the column after ``<experiment>/<model>``). Returns e.g.
    ``{"paper accuracy": "91.67 ± 2.56", "paper source": "tables/cv_global_vs_paper.csv"}``;
    empty when no table has the model.
    """
    glob = read_csv(cohort_dir, "tables/cv_global_vs_paper.csv")
    if glob is not None:
        row = glob[(glob["experiment"] == experiment) & (glob["model"] == model)
                   & (glob["method"] == method)]
        if len(row):
            r = row.iloc[0]
            return {"paper accuracy": str(r.get("Acc (paper)", "")),
                    "paper balanced accuracy": str(r.get("BAcc (paper)", "")),
                    "paper AUC": str(r.get("AUC (paper)", "")),
                    "paper source": "tables/cv_global_vs_paper.csv"}
    for name in ("cv_table5_vs_paper", "cv_table7_vs_paper"):
        table = read_csv(cohort_dir, f"tables/{name}.csv")
        col = f"{experiment}/{model}"
        if table is None or col not in table.columns:
            continue
        paper_col = table.columns[list(table.columns).index(col) + 1]
        acc = table.loc[table["metric"] == "accuracy", paper_col]
        if len(acc) and "(paper)" in paper_col:
            return {"paper accuracy": f"{acc.iloc[0]} ({paper_col})",
                    "paper source": f"tables/{name}.csv"}
    return {}


def _of(df: pd.DataFrame | None, model: str, method: str) -> pd.DataFrame | None:
    """Rows of ``df`` for one family (None when the table is absent or has no such rows)."""
    if df is None or not {"model", "method"} <= set(df.columns):
        return None
    part = df[(df["model"] == model) & (df["method"] == method)]
    return part if len(part) else None


def families(cohort_dir: Path) -> pd.DataFrame:
    """The trained model families of a cohort: ``model``, ``method`` and the ``experiments``
    (list) in its predictions table; empty when there are none."""
    pred = _predictions(cohort_dir)
    if pred is None or pred.empty:
        return pd.DataFrame(columns=["model", "method", "experiments"])
    return (pred.groupby(["model", "method"], sort=True)["experiment"]
            .apply(lambda s: sorted(set(s))).rename("experiments").reset_index())


def recipe_text(method: str) -> str:
    """The training recipe called ``method``: its source sentence and main settings."""
    from cxrlib.train.training import get_recipe

    try:
        recipe = get_recipe(method)
    except ValueError:
        return f"`{method}`"
    return (f"`{recipe.name}`: {recipe.source}. Optimiser {recipe.optimizer}, learning rate "
            f"{recipe.lr:g}, schedule {recipe.schedule}, batch {recipe.batch_size}, class weights "
            f"{recipe.class_weight or 'none'}, pretrained weights {recipe.weights or 'none'}.")


def _cit_lines(cohort_dir: Path, model: str) -> list[str]:
    """Notebook 02's training of a CIT family (``fucitnet``, ``covid-sdnet``) from
    ``artifacts/cit_runs.csv``."""
    runs = read_csv(cohort_dir, "artifacts/cit_runs.csv")
    if runs is None:
        return ["- Trained by notebook 02; the run has no `artifacts/cit_runs.csv`."]
    runs = runs[runs["lam"] > 0] if (runs["lam"] > 0).any() else runs
    r = runs.iloc[0]
    line = (f"- {len(runs)} fold trainings by notebook 02 ([cit_runs](../artifacts/cit_runs.csv)):"
            f" view `{r['view']}` ({VIEW_TEXT.get(str(r['view']), r['view'])}), image size "
            f"{int(r['image_size'])}, CiT transformer recipe `{r['recipe']}` with lambda "
            f"{r['lam']:g} and classifier `{r['cit_classifier']}`, epochs run "
            f"{int(runs['epochs_run'].min())}-{int(runs['epochs_run'].max())}")
    if model == "covid-sdnet" and "sdnet_recipe" in runs:
        line += ("; the COVID-SDNet classifier is trained with "
                 + recipe_text(str(r["sdnet_recipe"])))
    return [line + f" Initialisation: {r['cit_init']}."]


def _data_section(cohort_dir: Path) -> list[str]:
    counts = read_csv(cohort_dir, "tables/cohort_by_class_source.csv")
    if counts is None:
        return ["The run wrote no cohort table."]
    total = counts[counts["source"] == "total"].iloc[0]
    classes = [c for c in counts.columns if c not in ("source", "total", "patients")]
    return [f"{int(total['total'])} images of {int(total.get('patients', 0))} patients from "
            f"{len(counts) - 1} sources; per class: "
            + ", ".join(f"{c} {int(total[c])}" for c in classes)
            + " ([cohort_by_class_source](../tables/cohort_by_class_source.csv), "
              "[flow](../tables/flow.csv))."]


def _training_section(cohort_dir: Path, model: str, method: str) -> list[str]:
    runs = _of(read_csv(cohort_dir, "artifacts/crossval_runs.csv"), model, method)
    if runs is None:
        return _cit_lines(cohort_dir, model)
    lines = [f"- Recipe: {recipe_text(method)}"]
    for view in sorted(runs["view"].astype(str).unique()):
        lines.append(f"- View `{view}`: {VIEW_TEXT.get(view.split('@')[0], view)}.")
    r = runs.iloc[0]
    lines.append(f"- {len(runs)} fold trainings ([crossval_runs](../artifacts/crossval_runs.csv)): "
                 f"image size {int(r['image_size'])}, width {r['width']:g}, epochs run "
                 f"{int(runs['epochs_run'].min())}-{int(runs['epochs_run'].max())}, "
                 f"training images per fold {int(runs['n_train'].min())}-"
                 f"{int(runs['n_train'].max())}, initialisation: {r['init']}.")
    return lines


def _metrics_section(cohort_dir: Path, model: str, method: str, ci: pd.DataFrame) -> list[str]:
    part = _of(ci, model, method)
    if part is None:
        return ["No out-of-fold predictions for this family."]
    tables = [t for t in (read_csv(cohort_dir, f"tables/{name}.csv")
                          for name in ("cv_global", "cv_transfer_global")) if t is not None]
    glob = _of(pd.concat(tables) if tables else None, model, method)
    rows = []
    for _, r in part.iterrows():
        row = {"experiment": r["experiment"], "n images": int(r["n"]),
               "patients": int(r["n_patients"]),
               "accuracy % (95% CI)": fmt_ci(r["accuracy"], r["accuracy_ci_low"],
                                             r["accuracy_ci_high"]),
               "balanced accuracy % (95% CI)": fmt_ci(r["balanced_accuracy"],
                                                      r["balanced_accuracy_ci_low"],
                                                      r["balanced_accuracy_ci_high"])}
        g = None if glob is None else glob[glob["experiment"] == r["experiment"]]
        if g is not None and len(g):
            mean, sd = g["auc_macro_mean"].iloc[0], g["auc_macro_sd"].iloc[0]
            row["macro AUC (mean ± sd over folds)"] = (f"{mean:.3f} ± {sd:.3f}" if pd.notna(sd)
                                                      else f"{mean:.3f} (one fold)")
        paper = paper_values(cohort_dir, r["experiment"], model, method)
        row.update({k: v for k, v in paper.items() if k != "paper source"})
        rows.append(row)
    return [md_table(pd.DataFrame(rows)), "",
            f"Ours: pooled out-of-fold predictions, 95% CIs from resampling patients "
            f"([{CI_FILE}]({CI_FILE}), [cv_global](../tables/cv_global.csv)); the paper's numbers "
            "are mean ± sd over its folds, on its own (much larger) corpus."]


def _subgroup_section(cohort_dir: Path, model: str, method: str) -> list[str]:
    sub = _of(read_csv(cohort_dir, "tables/bias_subgroups.csv"), model, method)
    if sub is None:
        return ["Notebook 04 did not analyse this family's subgroups."]
    gaps = sub[(sub["level"] == "largest gap") & (sub["metric"] == "auc")]
    table = gaps[["experiment", "factor", "levels", "value", "ci_low", "ci_high"]].rename(
        columns={"value": "AUC gap", "levels": "between"}).round(3)
    return [md_table(table), "", "Largest AUC difference between the levels of each factor, "
            "95% patient-bootstrap CI ([bias_subgroups](../tables/bias_subgroups.csv))."]


def _shortcut_section(cohort_dir: Path, model: str, method: str) -> list[str]:
    lines = []
    verdicts = read_csv(cohort_dir, "tables/shortcut_verdicts.csv")
    if verdicts is not None:
        for _, v in verdicts.iterrows():
            lines.append(f"- {v['question']} ({v.get('cohort', '')}): **{v['answer']}** "
                         f"(gain {v['gain']:.3f}, lower CI bound {v['gain_ci_low']:.3f})")
        lines.append("  ([shortcut_verdicts](../tables/shortcut_verdicts.csv))")
    planted = _of(read_csv(cohort_dir, "tables/cv_planted_vs_clean.csv"), model, method)
    if planted is not None:
        for _, p in planted.iterrows():
            lines.append(f"- {p['experiment']}: balanced accuracy with the planted shortcut "
                         f"{p['balanced_accuracy_mean_planted']:.3f}, without "
                         f"{p['balanced_accuracy_mean_clean']:.3f} "
                         "([cv_planted_vs_clean](../tables/cv_planted_vs_clean.csv))")
    return lines or ["This cohort has no shortcut probes (notebook 04 runs on `arias`)."]


def _gradcam_section(cohort_dir: Path, model: str, method: str) -> list[str]:
    cam = _of(read_csv(cohort_dir, "tables/cam_localisation.csv"), model, method)
    if cam is None:
        return ["Notebook 06 did not explain this family."]
    table = cam[["experiment", "label", "n_images", "lung_energy_mean", "lung_area_mean",
                 "pointing_hit_rate"]].round(3)
    return [md_table(table), "", "Share of the Grad-CAM energy inside the lungs beside the "
            "lungs' share of the image (energy above area means the map favours the lungs) "
            "([cam_localisation](../tables/cam_localisation.csv), "
            "[figure](../figures/gradcam_by_class.png))."]


def _limitations(cohort_dir: Path, ci: pd.DataFrame, model: str, method: str) -> list[str]:
    lines = []
    meta = cohort_dir / "artifacts" / "study.json"
    info = json.loads(meta.read_text()) if meta.is_file() else {}
    if "preset" in info:
        lines.append(f"- Trained and tested on a synthetic cohort (`{info['preset']}` preset, "
                     f"shortcut {info.get('shortcut')}): no finding transfers to patients.")
    if info.get("profile") and info["profile"] != "paper":
        lines.append(f"- `{info['profile']}` profile: fewer images, epochs and folds than the "
                     "papers; the numbers test the pipeline, not the method.")
    part = _of(ci, model, method)
    if part is not None and (part["n_patients"] < 200).any():
        lines.append(f"- At most {int(part['n_patients'].max())} patients per evaluation: wide "
                     "confidence intervals.")
    lines += ["- Labels are the sources' own; no reader study or clinical reference standard.",
              "- Internal cross-validation within one corpus; performance on other hospitals, "
              "devices and populations is not established."]
    return lines


def card_markdown(cohort_dir: Path, model: str, method: str, experiments: list[str],
                  ci: pd.DataFrame) -> str:
    """The Markdown model card of one family of one cohort's run folder (sections: data,
    preprocessing and training, metrics beside the paper, subgroups, shortcuts, Grad-CAM,
    limitations, research use only)."""
    cohort = Path(cohort_dir).name
    parts = [f"# Model card: `{model}` trained with `{method}` (cohort `{cohort}`)", "",
             RESEARCH_ONLY, "",
             f"Experiments (views): {', '.join(f'`{e}`' for e in experiments)}. Made from the "
             "run's tables by `cxrlib.report.model_cards`; see the notebook reports "
             + ", ".join(f"[{r[:2]}](../{r})" for r in REPORTS if (Path(cohort_dir) / r).is_file())
             + ".", "",
             "## Data", "", *_data_section(cohort_dir), "",
             "## Preprocessing and training", "", *_training_section(cohort_dir, model, method), "",
             "## Metrics beside the paper's", "", *_metrics_section(cohort_dir, model, method, ci),
             "", "## Subgroup gaps", "", *_subgroup_section(cohort_dir, model, method), "",
             "## Shortcut verdicts", "", *_shortcut_section(cohort_dir, model, method), "",
             "## Grad-CAM localisation", "", *_gradcam_section(cohort_dir, model, method), "",
             "## Known limitations", "", *_limitations(cohort_dir, ci, model, method), "",
             "## Intended use", "", RESEARCH_ONLY, ""]
    return without_dead_links("\n".join(parts), Path(cohort_dir) / CARDS_DIR)


def without_dead_links(markdown: str, folder: Path) -> str:
    """``markdown`` with every link ``[label](target)`` whose target (relative to ``folder``)
    does not exist replaced by its label, so a card never links what the run did not write."""
    def keep(match):
        label, target = match.group(1), match.group(2)
        return match.group(0) if (folder / target).is_file() else label
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", keep, markdown)


def card_name(model: str, method: str) -> str:
    """File name of a family's card: ``<model>_<method>.md`` with unsafe characters as ``-``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in f"{model}_{method}")
    return safe + ".md"


def write_model_cards(cohort_dir: str | Path, n_boot: int = 500, seed: int = 0) -> list[Path]:
    """Write ``model_cards/metrics_ci.csv`` and one card per family for one cohort.

    Input: a cohort's run folder. Output: the paths written (none when the cohort has no
    predictions, e.g. a run of notebooks 00-01 only). Cards of an earlier run are removed first
    (they are derived from the tables and rewritten at the end of every run), so no card
    outlives the predictions it describes.
    """
    cohort_dir = Path(cohort_dir)
    out = cohort_dir / CARDS_DIR
    for old in [*out.glob("*.md"), out / CI_FILE]:
        old.unlink(missing_ok=True)
    fams = families(cohort_dir)
    if fams.empty:
        return []
    out.mkdir(exist_ok=True)
    ci = metrics_with_ci(cohort_dir, n_boot, seed)
    ci.to_csv(out / CI_FILE, index=False)
    written = [out / CI_FILE]
    for _, f in fams.iterrows():
        path = out / card_name(f["model"], f["method"])
        path.write_text(card_markdown(cohort_dir, f["model"], f["method"], f["experiments"], ci),
                        encoding="utf-8")
        written.append(path)
    return written
