"""The split plan: repeated stratified folds grouped by patient, made once per cohort.

Notebook 00 writes it to ``artifacts/split_plan.csv``; every later notebook reads it, so that all
models of a run are compared on the same folds. No patient (or duplicate group) ever appears in two
folds of a repetition.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

from cxrlib.data.manifest import SEVERITIES

PLAN_COLUMNS = ("image_id", "group", "repetition", "fold")


def split_groups(manifest: pd.DataFrame) -> pd.Series:
    """The grouping unit of each row: ``qc_patient_group`` when the QC step made one (it joins
    duplicates across patients), else ``patient_id``."""
    if "qc_patient_group" in manifest.columns and manifest["qc_patient_group"].notna().all():
        return manifest["qc_patient_group"].astype(str)
    return manifest["patient_id"].astype(str)


def make_split_plan(
    manifest: pd.DataFrame,
    folds: int = 5,
    repetitions: int = 1,
    seed: int = 0,
    stratify: str = "label",
) -> pd.DataFrame:
    """Assign every image a test fold in each repetition.

    Parameters
    ----------
    manifest : validated manifest (one row per image).
    folds : number of folds (>= 2).
    repetitions : number of differently shuffled repetitions (>= 1).
    seed : repetition r uses ``seed + r``.
    stratify : manifest column to stratify on (folds keep its class mix as far as groups allow).

    Returns
    -------
    DataFrame with one row per image and repetition: ``image_id``, ``group``, ``repetition``
    (0..repetitions-1), ``fold`` (0..folds-1, the fold in which the image is a test image).
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if repetitions < 1:
        raise ValueError(f"repetitions must be at least 1, got {repetitions}")
    if stratify not in manifest.columns:
        raise ValueError(f"cannot stratify on {stratify!r}: not a manifest column")
    groups = split_groups(manifest).to_numpy()
    n_groups = len(np.unique(groups))
    if n_groups < folds:
        raise ValueError(f"{n_groups} patient groups cannot fill {folds} folds")
    y = manifest[stratify].astype(str).to_numpy()
    rows = []
    for rep in range(repetitions):
        fold_of = np.empty(len(manifest), dtype=int)
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + rep)
        for k, (_, test) in enumerate(cv.split(np.zeros(len(y)), y, groups)):
            fold_of[test] = k
        rows.append(pd.DataFrame({
            "image_id": manifest["image_id"].to_numpy(),
            "group": groups,
            "repetition": rep,
            "fold": fold_of,
        }))
    return pd.concat(rows, ignore_index=True)


def check_split_plan(plan: pd.DataFrame) -> None:
    """Raise ``ValueError`` if a group appears in two folds of one repetition, or an image is
    missing from a repetition or listed twice."""
    missing = [c for c in PLAN_COLUMNS if c not in plan.columns]
    if missing:
        raise ValueError(f"split plan lacks column(s) {missing}")
    per_group = plan.groupby(["repetition", "group"])["fold"].nunique()
    leaking = per_group[per_group > 1]
    if len(leaking):
        rep, group = leaking.index[0]
        raise ValueError(f"group {group!r} appears in {leaking.iloc[0]} folds of repetition {rep}")
    dup = plan.duplicated(["repetition", "image_id"])
    if dup.any():
        row = plan[dup].iloc[0]
        raise ValueError(f"image {row.image_id!r} listed twice in repetition {row.repetition}")
    counts = plan.groupby("repetition")["image_id"].nunique()
    if counts.nunique() > 1:
        raise ValueError(f"repetitions cover different numbers of images: {counts.to_dict()}")


def fold_split(
    plan: pd.DataFrame,
    repetition: int,
    fold: int,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Training, validation and test image ids for one fold.

    The validation set (for early stopping and learning-rate schedules) is drawn, by group, from
    the training folds only; the test fold is never used for model selection.

    Returns ``{"train": ids, "valid": ids, "test": ids}`` (arrays of image_id).
    """
    rep = plan[plan["repetition"] == repetition]
    if rep.empty:
        raise ValueError(f"repetition {repetition} not in the split plan")
    if fold not in set(rep["fold"]):
        raise ValueError(f"fold {fold} not in repetition {repetition} of the split plan")
    test = rep[rep["fold"] == fold]
    rest = rep[rep["fold"] != fold]
    if val_fraction <= 0:
        return {"train": rest["image_id"].to_numpy(), "valid": np.array([], dtype=object),
                "test": test["image_id"].to_numpy()}
    if rest["group"].nunique() < 2:
        raise ValueError(f"fold {fold} of repetition {repetition} leaves "
                         f"{rest['group'].nunique()} patient group(s) to train on: too few to "
                         "draw validation patients from (val_fraction > 0)")
    gss = GroupShuffleSplit(n_splits=1, test_size=val_fraction,
                            random_state=seed + 1000 * repetition + fold)
    tr, va = next(gss.split(rest, groups=rest["group"]))
    return {
        "train": rest["image_id"].to_numpy()[tr],
        "valid": rest["image_id"].to_numpy()[va],
        "test": test["image_id"].to_numpy(),
    }


def without_severity(manifest: pd.DataFrame, plan: pd.DataFrame,
                     severity: str = "normal_pcr_pos") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manifest and split plan without the images of one severity grade (seed 000, Tables 7-8:
    COVIDGR without Normal-PCR+). The folds are kept as they are."""
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}; choose one of {list(SEVERITIES)}")
    keep = manifest["severity"].astype(str) != severity
    kept = manifest[keep].reset_index(drop=True)
    kept.attrs = dict(manifest.attrs)
    return kept, plan[plan["image_id"].isin(kept["image_id"])].reset_index(drop=True)
