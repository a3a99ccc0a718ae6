"""Shortcut probes (notebook 04): does a classifier need the lungs, or does it see the source?

The critical literature on COVID-19 radiographs (lungs-removed controls; models that recognise
the hospital instead of the disease) asks four questions, each answered here by a probe:

- **source recognition**: how well the source dataset can be predicted from the full image, from
  the image with the lungs blacked out and from the lungs alone (:func:`run_probes`). The
  sources carry the labels (a source gives one or two classes), so the disease alone makes the
  source partly predictable; the probe is therefore given the true label as well, and its
  balanced accuracy is compared with that of a probe given the label only: the *gain* is what
  the image tells about the source beyond the label;
- **lungs-removed control**: the diagnosis trained and tested with the lungs blacked out (the
  predicted lung mask, dilated); balanced accuracy well above chance (1 / number of classes)
  means the labels are predictable without the lungs (:func:`run_probes`, and the study's
  COVID-Net in :func:`cnn_probes`);
- **external validation** (seed 003): leave one source out (hard transfer), then add a small and
  a larger share of its patients to training (soft transfer), AUC internal vs external
  (:func:`external_validation`);
- **per-projection retraining** (seed 001, Table V): the COVID-Net trained and tested on PA or AP
  images alone (:func:`retrain_by_projection`).

Masked images are written as views (:func:`masked_views`: ``image_id``, ``view``, ``path``) that
:func:`cxrlib.train.crossval.run_crossval` reads like notebook 01's. The verdicts
(:func:`verdicts`) follow rules whose thresholds are fixed here, before any result was seen:
:data:`VERDICT_MARGIN`.

Cheap by design (the default profile's CPU budget): the verdict probes and the external
validation are multinomial logistic regressions (scikit-learn) on fixed image features
(:func:`image_features`: an 8 x 8 grid of mean intensities, the intensity histogram and
quantiles of the pixels not blacked out, the share blacked out, the edge energy), with
out-of-fold predictions from 5-fold cross-validation grouped by patient; the COVID-Net runs only
the lungs-removed control and the per-projection retraining, at the profile's ``probe_size`` px,
on one fold, for ``probe_epochs`` (:func:`probe_settings`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage as ndi
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from tqdm.auto import tqdm

from cxrlib.train.crossval import ClassifierSetup, cohort_classes, run_crossval
from cxrlib.data.images import read_image, read_mask
from cxrlib.data.manifest import data_root_of, image_info
from cxrlib.analysis.metrics import class_metrics, patient_bootstrap_weights
from cxrlib.profiles import Profile
from cxrlib.train.training import load_images, prepare_images
from cxrlib.preprocess.views import dilate_mask, mask_file_name

__all__ = [
    "MASKED_VIEWS", "VERDICT_MARGIN", "MIN_EXTERNAL_PATIENTS", "ProbeSettings",
    "probe_settings", "mask_paths", "masked_views", "image_features",
    "probe_predictions", "balanced_accuracy_ci", "run_probes", "QUESTIONS", "verdicts",
    "cnn_probes", "external_validation", "projection_retrain_problem",
    "projections_not_retrained", "retrain_by_projection",
]

#: The three masked views: the image, the image with the lungs blacked out, the lungs alone.
MASKED_VIEWS = ("full", "no_lungs", "lungs_only")
#: Verdict rule, fixed before any result was seen: "yes" when the lower 95% CI bound of the
#: probe's balanced accuracy exceeds its baseline (chance, or the label-only probe) by more than
#: this margin (10 percentage points).
VERDICT_MARGIN = 0.10
#: A source is held out in the external validation when each of at least two of its classes has
#: this many patients.
MIN_EXTERNAL_PATIENTS = 5


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class ProbeSettings:
    """How the probes run at one profile.

    Attributes
    ----------
    image_size : side of the probes' images, px (``min(profile.probe_size,
        profile.image_size)``).
    epochs : COVID-Net epochs (``profile.probe_epochs``).
    dilation : lung-mask dilation radius, as a fraction of the image side (0.04: 2.5 px at 64).
    n_boot : bootstrap resamples (``profile.bootstrap``).
    n_splits : folds of the logistic probes' cross-validation.
    soft_shares : shares of the held-out source's patients added to training (seed 003's 100
        and 500 of PadChest's patients, scaled: 10% and 40%).
    """

    image_size: int
    epochs: int
    dilation: float = 0.04
    n_boot: int = 500
    n_splits: int = 5
    soft_shares: tuple[float, ...] = (0.1, 0.4)


def probe_settings(profile: Profile) -> ProbeSettings:
    """The :class:`ProbeSettings` of a profile (its ``probe_size``, at most its ``image_size``,
    ``probe_epochs`` and ``bootstrap``)."""
    return ProbeSettings(image_size=min(profile.probe_size, profile.image_size),
                         epochs=profile.probe_epochs, n_boot=profile.bootstrap)


# --------------------------------------------------------------------------------------------
# Masked views


def mask_paths(manifest: pd.DataFrame, masks_dir: str | Path | None = None) -> pd.Series:
    """The lung mask of each image, indexed by ``image_id``: ``masks_dir/<mask_file_name>`` (the
    predicted masks of notebook 01) or, with ``masks_dir`` None, the manifest's
    ``lung_mask_path`` (ground truth, relative to ``manifest.attrs['data_root']``)."""
    ids = manifest["image_id"].astype(str)
    if masks_dir is not None:
        paths = [Path(masks_dir) / mask_file_name(i) for i in ids]
    else:
        if "lung_mask_path" not in manifest.columns or manifest["lung_mask_path"].isna().any():
            raise ValueError("the manifest has no lung_mask_path for every image: pass masks_dir "
                             "(notebook 01's artifacts/lung_masks)")
        root = data_root_of(manifest)
        paths = [root / p for p in manifest["lung_mask_path"]]
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} lung mask(s) missing, e.g. {missing[0]}: run "
                                "notebook 01 (lung segmentation) first")
    return pd.Series(paths, index=pd.Index(ids, name="image_id"), name="mask_path")


def masked_views(manifest: pd.DataFrame, masks: pd.Series, out_dir: str | Path, size: int,
                 dilation: float = 0.04, progress: bool = False) -> pd.DataFrame:
    """Write each image three times at ``size`` px: ``full``, ``no_lungs`` (the dilated lung mask
    set to black) and ``lungs_only`` (everything outside the dilated mask black).

    Parameters
    ----------
    manifest : validated manifest (``path`` relative to ``attrs['data_root']``).
    masks : lung mask path per ``image_id`` (:func:`mask_paths`).
    out_dir : folder of the PNGs, ``<out_dir>/<view>/<image id>.png`` (8-bit).
    size : output side; image and mask are resized as the classifiers' input is (shorter side to
        ``size``, centre square: :func:`cxrlib.train.training.prepare_images`).
    dilation : dilation radius as a fraction of ``size``.

    Returns
    -------
    The views table: ``image_id``, ``view``, ``path`` (absolute), one row per image and view.
    """
    root = data_root_of(manifest)
    out_dir = Path(out_dir)
    for view in MASKED_VIEWS:
        (out_dir / view).mkdir(parents=True, exist_ok=True)
    rows = []
    for image_id, rel in tqdm(zip(manifest["image_id"].astype(str), manifest["path"]),
                              total=len(manifest), desc="masked views", disable=not progress):
        if image_id not in masks.index:
            raise ValueError(f"no lung mask for image {image_id!r}")
        image = prepare_images([read_image(root / rel)], size)[0]
        lungs = prepare_images([read_mask(masks[image_id]).astype(np.float32)], size)[0] > 0.5
        lungs = dilate_mask(lungs, dilation * size, footprint="disk")
        for view, kept in zip(MASKED_VIEWS, (np.ones_like(lungs), ~lungs, lungs)):
            path = out_dir / view / mask_file_name(image_id)
            Image.fromarray(np.round(image * kept * 255).astype(np.uint8)).save(path)
            rows.append({"image_id": image_id, "view": view, "path": str(path.resolve())})
    return pd.DataFrame(rows, columns=["image_id", "view", "path"])


# --------------------------------------------------------------------------------------------
# Features and logistic probes


def image_features(images: np.ndarray, grid: int = 8, bins: int = 32) -> np.ndarray:
    """Fixed features of (N, S, S) images in [0, 1] for the logistic probes.

    Per image: the mean intensity of each cell of a ``grid`` x ``grid`` partition (layout,
    framing, burned-in marks), then over the pixels that are not black (0: blacked out), the
    ``bins``-bin intensity histogram (shares), the 5/25/50/75/95% quantiles, mean and standard
    deviation (tone curve), the share of black pixels and the mean absolute Laplacian (edge
    enhancement, noise). Returns float32 (N, grid**2 + bins + 9).
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or images.shape[1] < grid or images.shape[2] < grid:
        raise ValueError(f"images must be (N, S, S) with S >= {grid}, got {images.shape}")
    n, h, w = images.shape
    hh, ww = h // grid * grid, w // grid * grid
    cells = images[:, :hh, :ww].reshape(n, grid, hh // grid, grid, ww // grid).mean(axis=(2, 4))
    out = np.empty((n, grid * grid + bins + 9), dtype=np.float32)
    out[:, :grid * grid] = cells.reshape(n, -1)
    for i, image in enumerate(images):
        kept = image[image > 0]
        if kept.size == 0:
            kept = np.zeros(1, dtype=np.float32)
        hist = np.histogram(kept, bins=bins, range=(0.0, 1.0))[0] / kept.size
        lap = np.abs(ndi.laplace(image))[image > 0].mean() if (image > 0).any() else 0.0
        out[i, grid * grid:] = np.concatenate([
            hist, np.quantile(kept, [0.05, 0.25, 0.5, 0.75, 0.95]),
            [kept.mean(), kept.std(), 1.0 - (image > 0).mean(), lap]])
    return out


def _logistic():
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced",
                                                              max_iter=2000))


def probe_predictions(features: np.ndarray, target: Sequence[str], groups: Sequence[str],
                      n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of a logistic probe (standardised features, L2 C=0.1, balanced
    class weights) from ``n_splits``-fold cross-validation stratified by ``target`` and grouped
    by ``groups`` (patients).

    Parameters
    ----------
    features : (N, F).
    target : (N,) class names.
    groups : (N,) patient ids: a patient's images are never split between train and test.

    Returns
    -------
    object (N,): the predicted class of each row.
    """
    features = np.asarray(features, dtype=float)
    target = np.asarray(target).astype(str)
    if len(features) != len(target) or len(groups) != len(target):
        raise ValueError(f"{len(features)} feature rows, {len(target)} targets and {len(groups)} "
                         "groups must match")
    n_groups = len(set(groups))
    if n_groups < 2:
        raise ValueError("a probe needs at least two patients")
    cv = StratifiedGroupKFold(n_splits=min(n_splits, n_groups), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # a source with fewer patients than folds is simply absent from some test folds
        warnings.filterwarnings("ignore", message="The least populated class in y")
        return cross_val_predict(_logistic(), features, target, groups=np.asarray(groups), cv=cv)


def balanced_accuracy_ci(target: Sequence[str], predicted: np.ndarray, patients: Sequence[str],
                         n_boot: int = 500, ci: float = 0.95, seed: int = 0,
                         baseline: np.ndarray | None = None) -> dict[str, float]:
    """Balanced accuracy (mean recall over the classes present) with a patient-bootstrap CI.

    Resamples draw patients with replacement
    (:func:`cxrlib.analysis.metrics.patient_bootstrap_weights`). With ``baseline`` (another set of
    predictions of the same rows) the gain over it, and its CI from the same resamples (paired), is
    returned too.

    Returns ``value``, ``ci_low``, ``ci_high`` (and ``baseline``, ``gain``, ``gain_ci_low``,
    ``gain_ci_high``).
    """
    y = np.asarray(target).astype(str)
    weights = np.vstack([np.ones(len(y)), patient_bootstrap_weights(patients, n_boot, seed)])

    def score(pred):
        pred = np.asarray(pred).astype(str)
        recalls = []
        for c in np.unique(y):
            support = weights[:, y == c].sum(axis=1)
            hits = weights[:, (y == c) & (pred == c)].sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                recalls.append(np.where(support > 0, hits / support, np.nan))
        return np.nanmean(np.vstack(recalls), axis=0)  # (1 + n_boot,)

    q = [100 * (1 - ci) / 2, 100 * (1 + ci) / 2]
    ba = score(predicted)
    out = {"value": float(ba[0]), **dict(zip(("ci_low", "ci_high"), np.percentile(ba[1:], q)))}
    if baseline is not None:
        base = score(baseline)
        gain = ba - base
        out.update(baseline=float(base[0]), gain=float(gain[0]),
                   **dict(zip(("gain_ci_low", "gain_ci_high"), np.percentile(gain[1:], q))))
    return {k: float(v) for k, v in out.items()}


def run_probes(views: pd.DataFrame, manifest: pd.DataFrame, settings: ProbeSettings,
               seed: int = 0) -> pd.DataFrame:
    """The logistic probes on the masked views: diagnosis and source from each input.

    Parameters
    ----------
    views : :func:`masked_views` output.
    manifest : gives ``label``, ``source`` and ``patient_id`` of each image.
    settings : image size, folds, bootstrap resamples.

    Returns
    -------
    One row per (target, input): ``target`` (``label`` or ``source``), ``input`` (a
    :data:`MASKED_VIEWS` name), ``model``, ``n``, ``n_classes``, ``balanced_accuracy``,
    ``ci_low``, ``ci_high``, ``baseline`` (chance = 1 / classes for the diagnosis; for the source
    the balanced accuracy of the same probe given the label only), ``baseline_kind``, ``gain``,
    ``gain_ci_low``, ``gain_ci_high``. Source probes are given the label as well (module doc);
    they are skipped when the cohort has one source.
    """
    info = image_info(manifest)
    label_onehot = OneHotEncoder(sparse_output=False)
    rows = []
    for view in MASKED_VIEWS:
        part = views[views["view"] == view]
        if part.empty:
            raise ValueError(f"the views table has no {view!r} images (expected masked_views' "
                             "output)")
        ids = part["image_id"].astype(str).to_numpy()
        x = image_features(load_images(list(part["path"]), settings.image_size))
        label = info.loc[ids, "label"].astype(str).to_numpy()
        source = info.loc[ids, "source"].astype(str).to_numpy()
        patients = info.loc[ids, "patient_id"].astype(str).to_numpy()
        n_labels = len(set(label))
        pred = probe_predictions(x, label, patients, settings.n_splits, seed)
        res = balanced_accuracy_ci(label, pred, patients, settings.n_boot, seed=seed)
        chance = 1.0 / n_labels
        res.update(baseline=chance, gain=res["value"] - chance,
                   gain_ci_low=res["ci_low"] - chance, gain_ci_high=res["ci_high"] - chance)
        rows.append(_probe_row("label", view, len(ids), n_labels, res, "chance (1 / classes)"))
        if len(set(source)) < 2:
            continue
        onehot = label_onehot.fit_transform(label[:, None])
        pred = probe_predictions(np.hstack([x, onehot]), source, patients, settings.n_splits,
                                 seed)
        base = probe_predictions(onehot, source, patients, settings.n_splits, seed)
        res = balanced_accuracy_ci(source, pred, patients, settings.n_boot, seed=seed,
                                   baseline=base)
        rows.append(_probe_row("source", view, len(ids), len(set(source)), res,
                               "label-only probe"))
    return pd.DataFrame(rows)


def _probe_row(target, view, n, n_classes, res, baseline_kind, model="logistic"):
    return {"target": target, "input": view, "model": model, "n": n, "n_classes": n_classes,
            "balanced_accuracy": res["value"], "ci_low": res["ci_low"],
            "ci_high": res["ci_high"], "baseline": res["baseline"],
            "baseline_kind": baseline_kind, "gain": res["gain"],
            "gain_ci_low": res["gain_ci_low"], "gain_ci_high": res["gain_ci_high"]}


#: question -> (target, input) of the probe that answers it.
QUESTIONS = {
    "labels predictable without the lungs": ("label", "no_lungs"),
    "source recognisable from the lungs alone": ("source", "lungs_only"),
    "source recognisable with the lungs removed": ("source", "no_lungs"),
}


def verdicts(probes: pd.DataFrame, margin: float = VERDICT_MARGIN,
             model: str = "logistic") -> pd.DataFrame:
    """Yes / no answers from the probes, by the fixed rule: "yes" when ``gain_ci_low`` (lower CI
    bound of the balanced accuracy minus its baseline) exceeds ``margin``.

    Returns ``question``, ``target``, ``input``, ``model``, ``gain``, ``gain_ci_low``,
    ``margin`` and ``answer`` ("yes" / "no"); questions whose probe is missing are left out.
    """
    rows = []
    for question, (target, view) in QUESTIONS.items():
        hit = probes[(probes["target"] == target) & (probes["input"] == view)
                     & (probes["model"] == model)]
        if hit.empty:
            continue
        r = hit.iloc[0]
        rows.append({"question": question, "target": target, "input": view, "model": model,
                     "gain": r["gain"], "gain_ci_low": r["gain_ci_low"], "margin": margin,
                     "answer": "yes" if r["gain_ci_low"] > margin else "no"})
    return pd.DataFrame(rows, columns=["question", "target", "input", "model", "gain",
                                       "gain_ci_low", "margin", "answer"])


def verdicts_against_truth(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Do a synthetic cohort's verdicts match what was planted?

    ``verdicts``: :func:`verdicts` tables of one or more cohorts, with the columns ``cohort`` and
    ``synth_shortcut`` (the knob). The planted truth is "yes" to every question when the knob is
    at least 0.5 (the shortcut planted) and "no" when below; a cohort without a knob (a real
    corpus) has no truth.

    Returns one row per cohort: ``cohort``, ``synth_shortcut``, ``truth`` ("yes" / "no"; missing
    without a knob), ``n_questions`` and ``all_match`` (every answer equals the truth; missing
    without a truth).
    """
    rows = []
    for cohort, part in verdicts.groupby("cohort", sort=False):
        knob = part["synth_shortcut"].iloc[0]
        truth = None if pd.isna(knob) else ("yes" if knob >= 0.5 else "no")
        rows.append({"cohort": cohort, "synth_shortcut": knob, "truth": truth,
                     "n_questions": len(part),
                     "all_match": None if truth is None else bool((part["answer"] == truth).all())})
    return pd.DataFrame(rows, columns=["cohort", "synth_shortcut", "truth", "n_questions",
                                       "all_match"])


# --------------------------------------------------------------------------------------------
# COVID-Net probes (run_crossval)


def cnn_probes(views: pd.DataFrame, manifest: pd.DataFrame, plan: pd.DataFrame,
               artifacts_dir: str | Path, setup: ClassifierSetup, settings: ProbeSettings,
               inputs: Sequence[str] = ("no_lungs",), fold: int = 0, seed: int = 0,
               progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The study's COVID-Net trained and tested on masked views, on one fold of ``plan``.

    Uses :func:`cxrlib.train.crossval.run_crossval` (experiments named after the inputs) with the
    profile's model and recipe (``setup``), at ``settings.image_size`` px for
    ``settings.epochs`` epochs; its artifacts go to ``artifacts_dir``.

    Returns (predictions, probe rows as :func:`run_probes`, ``model`` = the model name, baseline
    chance).
    """
    classes = cohort_classes(manifest)
    preds = run_crossval(views, manifest, plan, artifacts_dir, experiments=list(inputs),
                         models=[setup.covidnet], repetitions=[0], folds=[fold],
                         image_size=settings.image_size, width=setup.width,
                         epochs=settings.epochs, batch_size=setup.overrides.get("batch_size"),
                         seed=seed, progress=progress, gpu=setup.gpu)
    patients = image_info(manifest, ["patient_id"])["patient_id"]
    rows = []
    for view in inputs:
        part = preds[preds["experiment"] == view]
        res = balanced_accuracy_ci(part["label"], part["predicted"],
                                   part["image_id"].map(patients).astype(str), settings.n_boot,
                                   seed=seed)
        chance = 1.0 / len(classes)
        res.update(baseline=chance, gain=res["value"] - chance, gain_ci_low=res["ci_low"] - chance,
                   gain_ci_high=res["ci_high"] - chance)
        rows.append(_probe_row("label", view, len(part), len(classes), res,
                               "chance (1 / classes)", model=setup.covidnet[0]))
    return preds, pd.DataFrame(rows)


def projection_retrain_problem(subset: pd.DataFrame, plan: pd.DataFrame, fold: int = 0,
                               seed: int = 0) -> str | None:
    """Why one projection's images cannot be retrained alone on ``fold`` of ``plan`` (None when
    they can): fewer than two classes, no image in the test fold, or a class without an image in
    the fold's training part (the same draw as :func:`cxrlib.train.crossval.run_crossval` with
    ``seed``: its validation part is taken out first). Real corpora often record the projection
    for a few images only."""
    from cxrlib.data.splits import fold_split

    if subset["label"].nunique() < 2:
        return f"{subset['label'].nunique()} class(es) only"
    in_plan = plan[plan["image_id"].isin(subset["image_id"])]
    repetition = in_plan["repetition"].min() if len(in_plan) else 0
    in_plan = in_plan[in_plan["repetition"] == repetition]
    if not (in_plan["fold"] == fold).any():
        return f"no image in test fold {fold}"
    if in_plan["fold"].nunique() < 2:
        return f"no image outside fold {fold} to train on"
    outside = in_plan.loc[in_plan["fold"] != fold, "group"].nunique()
    if outside < 2:
        return (f"{outside} patient outside fold {fold}: too few to train on and to draw a "
                "validation patient from")
    split = fold_split(in_plan, repetition, fold, seed=seed)
    label = subset.set_index("image_id")["label"]
    missing = sorted(set(subset["label"]) - set(label[split["train"]]))
    if missing:
        return f"no training image of {', '.join(missing)} in fold {fold}'s training part"
    return None


def projections_not_retrained(manifest: pd.DataFrame, plan: pd.DataFrame, fold: int = 0,
                              seed: int = 0) -> dict[str, str]:
    """Projection -> why :func:`retrain_by_projection` skips it (only the skipped ones), plus
    ``"unknown"`` -> how many images have no projection when some have none."""
    skipped = {}
    for projection in sorted(manifest["projection"].dropna().astype(str).unique()):
        subset = manifest[manifest["projection"].astype(str) == projection]
        problem = projection_retrain_problem(subset, plan, fold, seed=seed)
        if problem:
            skipped[projection] = problem
    unknown = int(manifest["projection"].isna().sum())
    if unknown:
        skipped["unknown"] = f"{unknown} image(s) of unknown projection"
    return skipped


def retrain_by_projection(views: pd.DataFrame, manifest: pd.DataFrame, plan: pd.DataFrame,
                          artifacts_dir: str | Path, setup: ClassifierSetup,
                          settings: ProbeSettings, view: str = "exp1", fold: int = 0,
                          seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """Seed 001's Table V as the paper made it: COVID-Net trained and tested on each projection
    alone (experiment ``<view>@<projection>``), on one fold of ``plan``.

    Each projection's artifacts go to ``artifacts_dir/<projection>`` (its classes may differ).
    Projections that cannot be retrained alone are skipped (:func:`projection_retrain_problem` says
    why). Returns per-class metrics (:func:`cxrlib.analysis.metrics.class_metrics` over the fold):
    ``experiment``, ``model``, ``method``, ``projection``, ``class``, ``support``, ``ppv``,
    ``recall``, ``f1``.
    """
    tables = []
    for projection in sorted(manifest["projection"].dropna().astype(str).unique()):
        subset = manifest[manifest["projection"].astype(str) == projection].reset_index(drop=True)
        subset.attrs = dict(manifest.attrs)
        sub_plan = plan[plan["image_id"].isin(subset["image_id"])]
        if projection_retrain_problem(subset, sub_plan, fold, seed=seed):
            continue
        preds = run_crossval(views, subset, sub_plan, Path(artifacts_dir) / projection,
                             experiments={f"{view}@{projection}": view},
                             models=[setup.covidnet], repetitions=[0], folds=[fold],
                             image_size=settings.image_size, width=setup.width,
                             epochs=settings.epochs,
                             batch_size=setup.overrides.get("batch_size"), seed=seed,
                             progress=progress, gpu=setup.gpu)
        table = class_metrics(preds, by=["experiment", "model", "method"])
        table.insert(3, "projection", projection)
        tables.append(table)
    if not tables:
        return pd.DataFrame(columns=["experiment", "model", "method", "projection", "class",
                                     "support", "ppv", "recall", "f1"])
    out = pd.concat(tables, ignore_index=True)
    return out[["experiment", "model", "method", "projection", "class", "support", "ppv",
                "recall", "f1"]]


# --------------------------------------------------------------------------------------------
# External validation


def _macro_auc(target: np.ndarray, proba: np.ndarray, classes: Sequence[str],
               which: Sequence[str]) -> float:
    from sklearn.metrics import roc_auc_score

    aucs = []
    for c in which:
        y = target == c
        if y.all() or not y.any() or c not in set(classes):  # a class the model never saw
            continue
        aucs.append(roc_auc_score(y, proba[:, list(classes).index(c)]))
    return float(np.mean(aucs)) if aucs else np.nan


def external_validation(features: np.ndarray, manifest: pd.DataFrame,
                        soft_shares: Sequence[float] = (0.1, 0.4), internal_test: float = 0.2,
                        min_patients: int = MIN_EXTERNAL_PATIENTS, seed: int = 0) -> pd.DataFrame:
    """Seed 003's transfer to an unseen source, for every source that can be held out.

    For each source with at least two classes of ``min_patients`` patients each: the other
    sources' patients are split into training and an internal test set (``internal_test`` of
    them); the logistic probe (:func:`probe_predictions`' model) is trained on the training set
    plus a share of the held-out source's patients (0: hard transfer; each of ``soft_shares``:
    soft transfer) and tested on the internal test set and on the held-out source's remaining
    patients (external). AUC: mean one-vs-rest AUC over the held-out source's classes.

    Parameters
    ----------
    features : (N, F) in manifest row order (:func:`image_features` of the full images).
    manifest : ``label``, ``source``, ``patient_id`` per row.

    Returns
    -------
    ``held_out``, ``scenario`` (``hard`` or ``soft <pct>%``), ``share``, ``classes``,
    ``n_train``, ``n_internal``, ``n_external``, ``auc_internal``, ``auc_external``,
    ``auc_drop`` (internal minus external).
    """
    features = np.asarray(features, dtype=float)
    if len(features) != len(manifest):
        raise ValueError(f"{len(features)} feature rows for {len(manifest)} manifest rows")
    label = manifest["label"].astype(str).to_numpy()
    source = manifest["source"].astype(str).to_numpy()
    patient = manifest["patient_id"].astype(str).to_numpy()
    rows = []
    for held in sorted(set(source)):
        inside = source == held
        per_class = pd.Series(patient[inside]).groupby(label[inside]).nunique()
        which = sorted(per_class[per_class >= min_patients].index)
        if len(which) < 2 or len(set(label[~inside])) < 2:
            continue
        rest = np.flatnonzero(~inside)
        tr, te = next(GroupShuffleSplit(1, test_size=internal_test, random_state=seed)
                      .split(rest, groups=patient[rest]))
        train, internal = rest[tr], rest[te]
        held_rows = np.flatnonzero(inside)
        for share in (0.0, *soft_shares):
            if share > 0:
                add, keep = next(GroupShuffleSplit(1, train_size=share, random_state=seed)
                                 .split(held_rows, groups=patient[held_rows]))
                fit_rows, external = np.concatenate([train, held_rows[add]]), held_rows[keep]
            else:
                fit_rows, external = train, held_rows
            model = _logistic().fit(features[fit_rows], label[fit_rows])
            classes = list(model.classes_)
            auc_int = _macro_auc(label[internal], model.predict_proba(features[internal]),
                                 classes, which)
            auc_ext = _macro_auc(label[external], model.predict_proba(features[external]),
                                 classes, which)
            rows.append({"held_out": held,
                         "scenario": "hard" if share == 0 else f"soft {share:.0%}",
                         "share": share, "classes": "+".join(which), "n_train": len(fit_rows),
                         "n_internal": len(internal), "n_external": len(external),
                         "auc_internal": auc_int, "auc_external": auc_ext,
                         "auc_drop": auc_int - auc_ext})
    return pd.DataFrame(rows, columns=["held_out", "scenario", "share", "classes", "n_train",
                                       "n_internal", "n_external", "auc_internal",
                                       "auc_external", "auc_drop"])
