"""A reporting checklist (CLAIM 2024 and TRIPOD+AI) filled from a run's own tables.

:data:`ITEMS` lists the items of both guidelines by number, each with what it asks in this
project's own words (not the guidelines' wording; read the guidelines themselves for that) and
the key of the function in :data:`ANSWERS` that answers it from a run folder, or None when no
run can answer it (intended use, clinical context, ethics, annotators, funding...): those are
listed as left to the authors.

:func:`checklist` takes a run folder and returns a DataFrame (``guideline``, ``item``, ``asks``,
``status``, ``answer``, ``links``): each answer is one or two sentences per cohort computed from
the CSVs the notebooks wrote, with links relative to the run folder to the tables, figures and
reports it comes from. :func:`render_markdown` / :func:`render_html` render it;
:func:`write_reviewer_reports` (called by the runner at the end of every run) writes the model
cards of :mod:`cxrlib.report.model_cards` and then ``checklist.md`` and ``checklist.html``.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Callable, NamedTuple

import pandas as pd

from cxrlib.report import model_cards as mc
CLAIM, TRIPOD = "CLAIM 2024", "TRIPOD+AI"
FROM_RUN, AUTHORS, NOT_RUN = "from the run", "left to the authors", "not in this run"

#: (guideline, item number, what the item asks in our words, answer key or None)
ITEMS: tuple[tuple[str, str, str, str | None], ...] = (
    (CLAIM, "1", "Title names the study as AI work and the kind of method", None),
    (CLAIM, "2", "Structured abstract of design, methods, results, conclusions", None),
    (CLAIM, "3", "Scientific and clinical background; what the AI is meant for", None),
    (CLAIM, "4", "Aims and, where there are any, hypotheses", None),
    (CLAIM, "5", "Whether data were collected prospectively or retrospectively", None),
    (CLAIM, "6", "Kind of study (model building, feasibility, comparison...)", None),
    (CLAIM, "7", "Where the data come from", "sources"),
    (CLAIM, "8", "Which cases were included and which excluded, and why", "flow"),
    (CLAIM, "9", "How images were preprocessed", "preprocessing"),
    (CLAIM, "10", "Which subsets of the data each analysis used", "subsets"),
    (CLAIM, "11", "How the data were de-identified", "deidentification"),
    (CLAIM, "12", "How missing values were handled", "missing"),
    (CLAIM, "13", "How the images were acquired (devices, protocol)", None),
    (CLAIM, "14", "How the reference standard (the labels) was obtained", "reference"),
    (CLAIM, "15", "Why that reference standard was chosen", None),
    (CLAIM, "16", "Who produced the labels and with what qualifications", None),
    (CLAIM, "17", "How the test set was annotated", None),
    (CLAIM, "18", "Agreement between and within annotators", None),
    (CLAIM, "19", "How data were assigned to training, validation and test", "partitions"),
    (CLAIM, "20", "At what level (patient, study, image) the partitions are separate",
     "leakage"),
    (CLAIM, "21", "Intended sample size and how it was chosen", "sample_size"),
    (CLAIM, "22", "The model in enough detail to rebuild it", "model"),
    (CLAIM, "23", "Software used, with versions", "software"),
    (CLAIM, "24", "How model parameters were initialised", "initialisation"),
    (CLAIM, "25", "Training details: optimiser, schedule, augmentation, epochs", "training"),
    (CLAIM, "26", "How the final model was chosen", "selection"),
    (CLAIM, "27", "Whether and how models were ensembled", "ensembling"),
    (CLAIM, "28", "Which performance measures were used", "metrics"),
    (CLAIM, "29", "How uncertainty and significance were measured", "uncertainty"),
    (CLAIM, "30", "Robustness and sensitivity analyses", "robustness"),
    (CLAIM, "31", "Explanation methods and how they were checked", "explainability"),
    (CLAIM, "32", "Evaluation on held-out internal data", "internal"),
    (CLAIM, "33", "Evaluation on external data", "external"),
    (CLAIM, "34", "Registration of the study, where it is a trial", None),
    (CLAIM, "35", "Numbers of patients or images included and excluded", "flow"),
    (CLAIM, "36", "Demographic and clinical make-up of each partition and source",
     "demographics"),
    (CLAIM, "37", "Performance with its uncertainty", "uncertainty"),
    (CLAIM, "38", "Diagnostic performance (sensitivity, specificity...) with precision",
     "diagnostic"),
    (CLAIM, "39", "Analysis of the cases the model gets wrong", "failures"),
    (CLAIM, "40", "Limitations of the study", None),
    (CLAIM, "41", "What the results mean for practice; intended use and clinical role", None),
    (CLAIM, "42", "Where the full protocol or further technical detail can be found", None),
    (CLAIM, "43", "Whether code, trained models and data are available", "code"),
    (CLAIM, "44", "Funding and the funders' role", None),
    (TRIPOD, "1", "Title: a prediction model is developed or evaluated, for whom, for what",
     None),
    (TRIPOD, "2", "Structured abstract", None),
    (TRIPOD, "3a", "Health-care context and why a model is needed", None),
    (TRIPOD, "3b", "Target population, place in the care pathway, intended users", None),
    (TRIPOD, "3c", "Known health inequalities between groups", None),
    (TRIPOD, "4", "Objectives: development, evaluation or both", None),
    (TRIPOD, "5a", "Data sources and how representative they are", "sources"),
    (TRIPOD, "5b", "Dates of data collection", None),
    (TRIPOD, "6a", "Setting and number and place of centres", None),
    (TRIPOD, "6b", "Eligibility criteria", "flow"),
    (TRIPOD, "6c", "Treatments received, if relevant", None),
    (TRIPOD, "7", "Data preparation and quality checks", "preprocessing"),
    (TRIPOD, "8a", "The outcome predicted and how it was assessed", "reference"),
    (TRIPOD, "8b", "Qualifications of whoever assessed the outcome", None),
    (TRIPOD, "8c", "Blinding of the outcome assessment", None),
    (TRIPOD, "9a", "Choice of predictors (inputs)", "preprocessing"),
    (TRIPOD, "9b", "Definition and measurement of the predictors", None),
    (TRIPOD, "9c", "Qualifications of whoever assessed the predictors", None),
    (TRIPOD, "10", "Sample size and its justification", "sample_size"),
    (TRIPOD, "11", "Missing data and how they were handled", "missing"),
    (TRIPOD, "12a", "How the data were split and used for development and evaluation",
     "partitions"),
    (TRIPOD, "12b", "How inputs were transformed or rescaled", "preprocessing"),
    (TRIPOD, "12c", "Model type, building steps, tuning and internal validation", "model"),
    (TRIPOD, "12d", "Heterogeneity between clusters (sources, hospitals)", "heterogeneity"),
    (TRIPOD, "12e", "Performance measures and why", "metrics"),
    (TRIPOD, "12f", "Any model updating or recalibration", None),
    (TRIPOD, "12g", "How predictions were computed in evaluation", "output"),
    (TRIPOD, "13", "How class imbalance was handled", "imbalance"),
    (TRIPOD, "14", "How fairness was addressed", "subgroups"),
    (TRIPOD, "15", "What the model outputs and any decision thresholds", "output"),
    (TRIPOD, "16", "Differences between development and evaluation data", "external"),
    (TRIPOD, "17", "Ethics approval and consent", None),
    (TRIPOD, "18a", "Funding", None),
    (TRIPOD, "18b", "Conflicts of interest", None),
    (TRIPOD, "18c", "Where the protocol can be found", None),
    (TRIPOD, "18d", "Study registration", None),
    (TRIPOD, "18e", "Data availability", None),
    (TRIPOD, "18f", "Code availability", "code"),
    (TRIPOD, "19", "Patient and public involvement", None),
    (TRIPOD, "20a", "Flow of participants through the study", "flow"),
    (TRIPOD, "20b", "Characteristics of the participants per source", "demographics"),
    (TRIPOD, "20c", "Evaluation data compared with development data", None),
    (TRIPOD, "21", "Participants and outcome events in each analysis", "counts"),
    (TRIPOD, "22", "Full model specification, or how to obtain it", "specification"),
    (TRIPOD, "23a", "Performance with CIs, including key subgroups", "subgroups"),
    (TRIPOD, "23b", "Heterogeneity of performance between clusters", "heterogeneity"),
    (TRIPOD, "24", "Results of any model updating", None),
    (TRIPOD, "25", "Overall interpretation, including fairness", None),
    (TRIPOD, "26", "Limitations", None),
    (TRIPOD, "27a", "How poor or missing inputs should be handled in use", None),
    (TRIPOD, "27b", "Whether and how users interact with the model; expertise needed", None),
    (TRIPOD, "27c", "Next steps and generalisability", None),
)


class Answer(NamedTuple):
    """An item's answer: text and links (paths relative to the run folder)."""

    text: str
    links: list[str]


# --------------------------------------------------------------------------------------------
# Reading a run folder


def run_cohorts(run: Path) -> list[str]:
    """The cohorts of a run folder: ``study.json``'s order, else sub-folders with ``tables/``."""
    study = Path(run) / "study.json"
    if study.is_file():
        names = list(json.loads(study.read_text()).get("cohorts", {}))
        if names:
            return [n for n in names if (Path(run) / n).is_dir()]
    return sorted(p.name for p in Path(run).iterdir() if (p / "tables").is_dir())


def per_cohort(run: Path, rel: str, say: Callable[[pd.DataFrame, Path], str | None],
               extra_links: tuple[str, ...] = ()) -> Answer | None:
    """Answer from one CSV (``rel`` in each cohort folder): ``say(table, cohort_dir)`` gives a
    sentence per cohort (None to skip it). Links: the CSV, and each of ``extra_links`` (relative
    to the cohort) that exists. None when no cohort has an answer."""
    texts, links = [], []
    for cohort in run_cohorts(run):
        cdir = Path(run) / cohort
        df = mc.read_csv(cdir, rel)
        text = say(df, cdir) if df is not None else None
        if text:
            texts.append(f"`{cohort}`: {text}")
            links += [f"{cohort}/{r}" for r in (rel, *extra_links) if (cdir / r).is_file()]
    return Answer("; ".join(texts) + ".", links) if texts else None


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _join(values, limit: int = 8) -> str:
    values = [str(v) for v in values]
    return ", ".join(values[:limit]) + (f" and {len(values) - limit} more" if len(values) > limit
                                        else "")


# --------------------------------------------------------------------------------------------
# Answers: each takes the run folder and returns an Answer or None


def answer_sources(run: Path) -> Answer | None:
    def say(df, _):
        total = df[df["source"] == "total"].iloc[0]
        names = df.loc[df["source"] != "total", "source"]
        return (f"{int(total['total'])} images of {int(total['patients'])} patients from "
                f"{len(names)} source{'s' if len(names) != 1 else ''} ({_join(names)})")
    return per_cohort(run, "tables/cohort_by_class_source.csv", say, ("00_data_audit.html",))


def answer_flow(run: Path) -> Answer | None:
    def say(df, _):
        n_in = int(df.loc[df["step"] == "manifest", "images"].sum())
        cls = df[(df["step"] == "03_classifier_cv") & (df["outcome"] == "analysed")]
        out = df[df["outcome"].isin(["left out", "flagged"]) & (df["step"] != "06_gradcam")]
        reasons = _join([f"{r['reason']} ({int(r['images'])}, {r['step']})"
                         for _, r in out.iterrows()], 4)
        analysed = (f", {int(cls['images'].sum())} analysed by the classifiers" if len(cls)
                    else "")  # none when notebook 03 did not run
        return f"{n_in} images in{analysed}; flagged or left out: {reasons or 'none'}"
    return per_cohort(run, "tables/flow.csv", say, ("tables/segmentation_qc.csv",))


def answer_subsets(run: Path) -> Answer | None:
    def say(df, _):
        analysed = df[df["outcome"] == "analysed"]
        return "images analysed per step: " + _join(
            [f"{r['step']} {int(r['images'])}" for _, r in analysed.iterrows()], 10)
    return per_cohort(run, "tables/flow.csv", say)


def answer_deidentification(run: Path) -> Answer | None:
    """From each cohort's manifest sidecar (``study.json`` names the manifest)."""
    from cxrlib.data.manifest import sidecar_path

    study = Path(run) / "study.json"
    cohorts = json.loads(study.read_text()).get("cohorts", {}) if study.is_file() else {}
    texts, links = [], []
    for name, entry in cohorts.items():
        side = sidecar_path(entry.get("manifest", "")) if entry.get("manifest") else None
        meta = json.loads(side.read_text()) if side and side.is_file() else {}
        own = Path(run) / name / "artifacts" / "study.json"  # notebook 00's cohort record
        meta.update(json.loads(own.read_text()) if own.is_file() else {})
        blob = json.dumps(meta)
        if "generator" in meta or "preset" in meta:
            text = "synthetic images and patients made by `cxrlib.data.synthetic`: no patient data"
        elif "key_fingerprint" in blob:
            text = ("patient ids replaced by keyed pseudonyms (HMAC-SHA256, "
                    "`cxrlib.data.pseudonym`); DICOM headers are not carried into the manifest")
        else:
            text = "the manifest records no de-identification step; to be stated by the authors"
        texts.append(f"`{name}`: {text}")
        if (Path(run) / name / "00_data_audit.html").is_file():
            links.append(f"{name}/00_data_audit.html")
    return Answer("; ".join(texts) + ".", links) if texts else None


def answer_missing(run: Path) -> Answer | None:
    def say(df, _):
        n = int(df["images"].sum())
        no_age = n - int(df["age_known"].sum())
        no_sex = n - int((df["males"] + df["females"]).sum())
        return (f"age unknown for {no_age} and sex for {no_sex} of {n} images (kept; left out of "
                "the analyses of that factor only)")
    return per_cohort(run, "tables/demographics_by_source.csv", say)


def answer_reference(run: Path) -> Answer | None:
    def say(df, _):
        return ("the manifest's label as each source gives it; classes per source: "
                + _join([f"{r['source']} ({r['classes']})" for _, r in df.iterrows()]))
    return per_cohort(run, "tables/demographics_by_source.csv", say)


def answer_preprocessing(run: Path) -> Answer | None:
    def say(seg, cdir):
        runs = mc.read_csv(cdir, "artifacts/crossval_runs.csv")
        views = sorted(set(runs["view"].astype(str))) if runs is not None else []
        qc = mc.read_csv(cdir, "tables/segmentation_qc.csv")
        flagged = (int(qc.loc[qc["source"] == "total", "flagged"].sum()) if qc is not None
                   else 0)
        s = seg.iloc[0]
        text = (f"lung U-Net ({s['model']}, {int(s['n_train'])} training images at "
                f"{int(s['size'])} px) segments every image, {flagged} fail its QC")
        if runs is None:  # notebook 03 did not run: no classifier input to describe
            return text
        return (f"{text}; views {_join(views)} at {int(runs['image_size'].iloc[0])} px feed the "
                "classifiers")
    return per_cohort(run, "tables/segmentation_model.csv", say,
                      ("tables/segmentation_qc.csv", "artifacts/crossval_runs.csv",
                       "01_lung_segmentation.html"))


def answer_partitions(run: Path) -> Answer | None:
    def say(df, _):
        return (f"{df['fold'].nunique()}-fold cross-validation, {df['repetition'].nunique()} "
                f"repetition(s), folds drawn by patient group ({df['group'].nunique()} groups), "
                "a validation share taken from each training fold")
    return per_cohort(run, "artifacts/split_plan.csv", say, ("tables/corpus_support.csv",))


def answer_leakage(run: Path) -> Answer | None:
    def say(df, _):
        shared = int((df.groupby(["repetition", "group"])["fold"].nunique() > 1).sum())
        return (f"patient level: {shared} of {df['group'].nunique()} patient groups fall in more "
                "than one fold")
    return per_cohort(run, "artifacts/split_plan.csv", say)


def answer_sample_size(run: Path) -> Answer | None:
    def say(df, _):
        per = _join([f"{r['class']} {int(r['images'])} images/{int(r['patient_groups'])} "
                     "patients" for _, r in df.iterrows()])
        ok = "every class has" if df["enough"].all() else "NOT every class has"
        return (f"no sample size was computed; {per}; {ok} enough patients for "
                f"{int(df['folds'].max())} folds")
    return per_cohort(run, "tables/corpus_support.csv", say)


def _families_text(cdir: Path) -> str | None:
    fams = mc.families(cdir)
    return _join([f"{r['model']} ({r['method']}) on {', '.join(r['experiments'])}"
                  for _, r in fams.iterrows()]) if len(fams) else None


def _card_links(run: Path) -> tuple[str, ...]:
    return tuple(str(p.relative_to(run)) for c in run_cohorts(run)
                 for p in sorted((Path(run) / c / mc.CARDS_DIR).glob("*.md")))


def answer_model(run: Path) -> Answer | None:
    def say(df, cdir):
        r = df.iloc[0]
        return (f"{_families_text(cdir)}; width multiplier {r['width']:g}, input "
                f"{int(r['image_size'])} px (model cards give each family)")
    ans = per_cohort(run, "artifacts/crossval_runs.csv", say)
    return ans._replace(links=ans.links + list(_card_links(run))) if ans else None


def answer_software(run: Path) -> Answer | None:
    path = Path(run) / "run.json"
    if not path.is_file():
        return None
    versions = json.loads(path.read_text()).get("versions", {})
    shown = _join([f"{k} {v}" for k, v in versions.items() if k not in ("platform",)], 20)
    return Answer(f"{shown}.", ["run.json"])


def answer_initialisation(run: Path) -> Answer | None:
    return per_cohort(run, "artifacts/crossval_runs.csv",
                      lambda df, _: _join(sorted(set(df["init"].astype(str)))))


def answer_training(run: Path) -> Answer | None:
    def say(df, _):
        recipes = _join([mc.recipe_text(m) for m in sorted(set(df["method"].astype(str)))])
        return (f"{recipes} Epochs run {int(df['epochs_run'].min())}-"
                f"{int(df['epochs_run'].max())} per fold")
    return per_cohort(run, "artifacts/crossval_runs.csv", say)


def answer_selection(run: Path) -> Answer | None:
    def say(df, _):
        return (f"each fold keeps the weights its recipe selects (best validation epoch where "
                f"the recipe says so; best epochs {int(df['best_epoch'].min())}-"
                f"{int(df['best_epoch'].max())}, {int(df['stopped_early'].sum())} of {len(df)} "
                f"stopped early) on {int(df['n_valid'].min())}-{int(df['n_valid'].max())} "
                "validation images; no choice among models on test data")
    return per_cohort(run, "artifacts/crossval_runs.csv", say)


def answer_ensembling(run: Path) -> Answer | None:
    return per_cohort(run, "artifacts/crossval_runs.csv", lambda df, _: (
        f"none: each of {len(df)} fold models predicts only its own test fold"))


def answer_metrics(run: Path) -> Answer | None:
    return per_cohort(run, "tables/cv_global.csv", lambda df, _: (
        f"accuracy, balanced accuracy, GMR and macro AUC for {len(df)} trained models (mean ± sd "
        "over folds), per class PPV, recall, F1, specificity and AUC"),
        ("tables/cv_performance.csv", "figures/cv_roc_curves.png"))


def answer_uncertainty(run: Path) -> Answer | None:
    def say(df, _):
        best = df.sort_values("balanced_accuracy", ascending=False).iloc[0]
        bacc = mc.fmt_ci(best["balanced_accuracy"], best["balanced_accuracy_ci_low"],
                         best["balanced_accuracy_ci_high"])
        return (f"95% patient-bootstrap CIs; best balanced accuracy {best['experiment']}/"
                f"{best['model']} {bacc}% over {int(best['n_patients'])} patients")
    return per_cohort(run, f"{mc.CARDS_DIR}/{mc.CI_FILE}", say, ("tables/cv_global.csv",))


def answer_robustness(run: Path) -> Answer | None:
    def say(df, cdir):
        given = df[df["cohort"] == "given"] if "cohort" in df else df
        verdicts = _join([f"{r['question']}: {r['answer']} (gain {r['gain']:.3f})"
                          for _, r in given.iterrows()])
        ext = mc.read_csv(cdir, "tables/cv_planted_vs_clean.csv")
        extra = (f"; balanced accuracy with vs without the planted shortcut differs by at most "
                 f"{ext['difference'].abs().max():.3f}" if ext is not None else "")
        return f"shortcut probes: {verdicts}{extra}"
    return per_cohort(run, "tables/shortcut_verdicts.csv", say,
                      ("tables/shortcut_probes.csv", "tables/cv_planted_vs_clean.csv"))


def answer_explainability(run: Path) -> Answer | None:
    def say(df, cdir):
        d = df.dropna(subset=["lung_energy_mean"])
        faith = mc.read_csv(cdir, "tables/cam_faithfulness.csv")
        road = ("; the ROAD deletion test favours the map for "
                f"{_pct(faith['road_positive'].mean())} of images" if faith is not None else "")
        return (f"Grad-CAM on {int(df['n_images'].sum())} images: mean energy inside the lungs "
                f"{d['lung_energy_mean'].mean():.3f} against a lung area of "
                f"{d['lung_area_mean'].mean():.3f}{road}")
    return per_cohort(run, "tables/cam_localisation.csv", say,
                      ("tables/cam_faithfulness.csv", "figures/gradcam_by_class.png",
                       "06_gradcam.html"))


def answer_internal(run: Path) -> Answer | None:
    return per_cohort(run, "tables/cv_global.csv", lambda df, _: (
        f"out-of-fold predictions of {int(df['n_runs'].sum())} fold trainings; balanced accuracy "
        f"{df['balanced_accuracy_mean'].min():.3f}-{df['balanced_accuracy_mean'].max():.3f} "
        "(mean over folds)"), ("03_classifier_cv.html",))


def answer_external(run: Path) -> Answer | None:
    def say(df, _):
        d = df[df["cohort"] == "given"] if "cohort" in df else df
        return "a source held out of training: " + _join(
            [f"{r['held_out']} {r['scenario']}: AUC {r['auc_internal']:.3f} internal, "
             f"{r['auc_external']:.3f} external" for _, r in d.iterrows()])
    return per_cohort(run, "tables/external_validation.csv", say,
                      ("tables/cv_transfer_global.csv",))


def answer_demographics(run: Path) -> Answer | None:
    def say(df, _):
        n = df["images"].sum()
        age = (df["age_mean"] * df["age_known"]).sum() / max(df["age_known"].sum(), 1)
        return (f"mean age {age:.1f}, {_pct(df['males'].sum() / n)} male, "
                f"{_pct(df['ap'].sum() / n)} AP projections over {int(n)} images")
    return per_cohort(run, "tables/demographics_by_source.csv", say,
                      ("tables/cohort_by_class_subset.csv",))


def answer_diagnostic(run: Path) -> Answer | None:
    def say(df, _):
        pos = df[df["class"] == "covid19"]
        if pos.empty:
            return None
        best = pos.sort_values("auc_mean", ascending=False).iloc[0]
        return (f"COVID-19 against the rest, {best['experiment']}/{best['model']}: sensitivity "
                f"{best['recall_mean']:.3f}, specificity {best['specificity_mean']:.3f}, AUC "
                f"{best['auc_mean']:.3f} ± {best['auc_sd']:.3f} (mean ± sd over folds)")
    return per_cohort(run, "tables/cv_performance.csv", say)


def answer_failures(run: Path) -> Answer | None:
    def say(df, _):
        return "errors against age and sex: " + _join(
            [f"{r['experiment']} {r['test']} p={r['p_value']:.3g} ({r['detail']})"
             for _, r in df.iterrows()], 6)
    return per_cohort(run, "tables/bias_error_age_sex.csv", say,
                      ("tables/bias_error_distribution.csv",
                       "figures/gradcam_confident_errors.png"))


def _gaps(df: pd.DataFrame, factors) -> str | None:
    """The largest gap between the levels of each factor, by AUC where it is defined, else by
    the first metric that is (one source may hold a single class)."""
    gaps = df[(df["level"] == "largest gap") & df["factor"].isin(factors)].dropna(subset=["value"])
    gaps = (gaps.assign(_auc=gaps["metric"] != "auc").sort_values("_auc", kind="stable")
            .drop_duplicates(["experiment", "model", "method", "factor"]))
    if gaps.empty:
        return None
    return "largest gaps between levels (95% CI): " + _join(
        [f"{r['experiment']} {r['factor']} {r['levels']} {r['metric']} {r['value']:.3f} "
         f"({r['ci_low']:.3f} to {r['ci_high']:.3f})" for _, r in gaps.iterrows()], 6)


def answer_subgroups(run: Path) -> Answer | None:
    return per_cohort(run, "tables/bias_subgroups.csv",
                      lambda df, _: _gaps(df, ("sex", "age_band", "projection", "sensor")),
                      ("figures/bias_subgroup_auc.png",))


def answer_heterogeneity(run: Path) -> Answer | None:
    return per_cohort(run, "tables/bias_subgroups.csv", lambda df, _: _gaps(df, ("source",)))


def answer_imbalance(run: Path) -> Answer | None:
    from cxrlib.train.training import get_recipe

    def weights(method):
        try:
            r = get_recipe(method)
        except ValueError:
            return f"{method}: not known"
        return f"{method}: class weights {r.class_weight or 'none'}"
    return per_cohort(run, "artifacts/crossval_runs.csv", lambda df, _: (
        "folds stratified by class; " + _join([weights(m) for m in sorted(set(df["method"]))])),
        ("tables/corpus_support.csv",))


def answer_output(run: Path) -> Answer | None:
    return per_cohort(run, "artifacts/crossval_runs.csv", lambda df, _: (
        "a probability per class from the fold's model on its test fold; the predicted class is "
        "the most probable one (no threshold tuned)"), ("tables/cv_performance.csv",))


def answer_counts(run: Path) -> Answer | None:
    return per_cohort(run, "artifacts/crossval_runs.csv", lambda df, _: (
        f"per fold {int(df['n_train'].min())}-{int(df['n_train'].max())} training, "
        f"{int(df['n_valid'].min())}-{int(df['n_valid'].max())} validation and "
        f"{int(df['n_test'].min())}-{int(df['n_test'].max())} test images"),
        ("tables/cohort_by_class_source.csv",))


def answer_specification(run: Path) -> Answer | None:
    ans = per_cohort(run, "artifacts/crossval_runs.csv", lambda df, cdir: (
        f"{len(list((cdir / 'artifacts' / 'checkpoints').glob('*.pth')))} fold checkpoints in "
        "the run folder's artifacts/checkpoints; architectures in cxrlib.models"))
    return ans._replace(links=ans.links + list(_card_links(run))) if ans else None


def answer_code(run: Path) -> Answer | None:
    path = Path(run) / "run.json"
    if not path.is_file():
        return None
    commit = json.loads(path.read_text()).get("versions", {}).get("git_commit", "unknown")
    return Answer(f"the run was made by cxr-study at commit {commit}; where the code, weights and "
                  "data are shared is for the authors to state.", ["run.json"])


ANSWERS: dict[str, Callable[[Path], Answer | None]] = {
    name[len("answer_"):]: fn for name, fn in globals().items() if name.startswith("answer_")}


# --------------------------------------------------------------------------------------------
# The checklist and its renderings


def checklist(run: str | Path) -> pd.DataFrame:
    """Every item of :data:`ITEMS` answered from the run folder ``run``.

    Returns columns ``guideline``, ``item``, ``asks``, ``status`` (``from the run``, ``left to
    the authors`` or ``not in this run`` when the tables that answer it are missing),
    ``answer`` and ``links`` (list of paths relative to ``run``).
    """
    run = Path(run)
    cache: dict[str, Answer | None] = {}
    rows = []
    for guideline, item, asks, key in ITEMS:
        if key is not None and key not in cache:
            cache[key] = ANSWERS[key](run)
        ans = cache.get(key) if key else None
        status = AUTHORS if key is None else (FROM_RUN if ans else NOT_RUN)
        text = ans.text if ans else ("" if key is None else "the tables that answer this item "
                                     "are not in this run folder")
        rows.append({"guideline": guideline, "item": item, "asks": asks, "status": status,
                     "answer": text, "links": list(ans.links) if ans else []})
    return pd.DataFrame(rows)


_INTRO = ("Filled from this run's tables by `cxrlib.report.checklist`. Item texts are the "
          "project's summaries of CLAIM 2024 (Tejani et al., Radiology: Artificial Intelligence "
          "2024) and TRIPOD+AI (Collins et al., BMJ 2024); consult the guidelines for their "
          "wording. Items marked *left to the authors* are not something a run can answer.")


def render_markdown(items: pd.DataFrame) -> str:
    """The checklist as Markdown: one table per guideline, then the items left to the authors."""
    parts = ["# Reporting checklist", "", _INTRO, ""]
    for guideline, part in items.groupby("guideline", sort=False):
        answered = part[part["status"] != AUTHORS]
        parts += [f"## {guideline}: answered from the run", "",
                  "| item | asks | answer | evidence |", "|---|---|---|---|"]
        for _, r in answered.iterrows():
            links = ", ".join(f"[{Path(rel).name}]({rel})" for rel in r["links"])
            answer = r["answer"] if r["status"] == FROM_RUN else f"*{r['status']}*"
            parts.append(f"| {r['item']} | {r['asks']} | {answer.replace('|', '/')} | {links} |")
        left = part[part["status"] == AUTHORS]
        parts += ["", f"## {guideline}: left to the authors", ""]
        parts += [f"- {r['item']}. {r['asks']}" for _, r in left.iterrows()]
        parts.append("")
    return "\n".join(parts)


def inline_html(text: str) -> str:
    """One line of the checklist's Markdown as HTML: escaped, with ``*emphasis*`` in italics and
    backticks as code (the only Markdown its texts use)."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"(?<![\w*])\*([^*\s]|[^*\s][^*]*[^*\s])\*(?![\w*])", r"<i>\1</i>", out)


def render_html(items: pd.DataFrame) -> str:
    """The checklist as a stand-alone HTML page (same content as :func:`render_markdown`)."""
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Reporting checklist</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;"
             "line-height:1.4}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f3f3f3}"
             ".missing{color:#b7791f}</style></head><body>",
             "<h1>Reporting checklist</h1>", f"<p>{inline_html(_INTRO)}</p>"]
    for guideline, part in items.groupby("guideline", sort=False):
        parts.append(f"<h2>{esc(guideline)}: answered from the run</h2><table><tr><th>item</th>"
                     "<th>asks</th><th>answer</th><th>evidence</th></tr>")
        for _, r in part[part["status"] != AUTHORS].iterrows():
            links = ", ".join(f"<a href='{esc(rel)}'>{esc(Path(rel).name)}</a>"
                              for rel in r["links"])
            answer = (inline_html(r["answer"]) if r["status"] == FROM_RUN
                      else f"<span class='missing'>{esc(r['status'])}</span>")
            parts.append(f"<tr><td>{esc(r['item'])}</td><td>{esc(r['asks'])}</td>"
                         f"<td>{answer}</td><td>{links}</td></tr>")
        parts.append(f"</table><h2>{esc(guideline)}: left to the authors</h2><ul>")
        parts += [f"<li>{esc(r['item'])}. {esc(r['asks'])}</li>"
                  for _, r in part[part["status"] == AUTHORS].iterrows()]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_checklist(run: str | Path) -> tuple[Path, Path]:
    """Write ``checklist.md`` and ``checklist.html`` into the run folder; return their paths."""
    run = Path(run)
    items = checklist(run)
    md, page = run / "checklist.md", run / "checklist.html"
    md.write_text(render_markdown(items), encoding="utf-8")
    page.write_text(render_html(items), encoding="utf-8")
    return md, page


def write_reviewer_reports(run: str | Path, n_boot: int = 500, seed: int = 0
                           ) -> list[tuple[str, str]]:
    """The end-of-run hook: model cards for every cohort (:func:`cxrlib.report.model_cards.
    write_model_cards`), then the checklist. Input: the run folder (its ``run.json`` should be
    written already). Returns (label, path relative to the run folder) of each report written,
    for the index page."""
    run = Path(run)
    links = []
    for cohort in run_cohorts(run):
        for path in mc.write_model_cards(run / cohort, n_boot, seed):
            if path.suffix == ".md":
                links.append((f"{cohort}: model card {path.stem}", str(path.relative_to(run))))
    md, page = write_checklist(run)
    return [("reporting checklist (CLAIM 2024, TRIPOD+AI)", page.name),
            ("checklist (Markdown)", md.name)] + links


def reviewer_reports_html(run: str | Path, n_boot: int = 500, seed: int = 0) -> str:
    """Run :func:`write_reviewer_reports` and return the index page's HTML section linking its
    reports. A failure is shown in the section (with the error) instead of raised, so that it
    never hides the state of the notebooks on the index."""
    try:
        links = write_reviewer_reports(run, n_boot, seed)
    except Exception as exc:  # noqa: BLE001 - reported on the index page
        return ("<h2>For reviewers</h2><p class='failed'>The checklist and model cards could not "
                f"be written: {html.escape(f'{type(exc).__name__}: {exc}')}</p>")
    items = "".join(f"<li><a href='{html.escape(rel)}'>{html.escape(label)}</a></li>"
                    for label, rel in links)
    return ("<h2>For reviewers</h2><p>A CLAIM 2024 / TRIPOD+AI checklist answered from this "
            "run's tables, and a model card per trained model family (research use only).</p>"
            f"<ul>{items}</ul>")
