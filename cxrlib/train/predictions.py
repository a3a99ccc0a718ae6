"""The predictions table: the hinge between training and every analysis of a trained model.

One row per test image per repetition per (experiment, model, method), stored as
``artifacts/predictions.parquet``:

============== =========================================================================
column         meaning
============== =========================================================================
image_id       manifest image id
repetition     cross-validation repetition (int)
fold           the fold in which the image was a test image (int; 0 for a hold-out plan)
experiment     preprocessing view or experiment label (``exp1``, ``exp3``, ``exp1@train50``...)
model          network name (``covidnet``, ``resnet50``...)
method         training recipe or method (``arias2020``, ...)
label          true class
p_<class>      out-of-fold probability of each class present (``p_control``, ``p_pneumonia``,
               ``p_covid19``); each row sums to 1
predicted      the class of highest probability
============== =========================================================================

Rows written by a fold training (:mod:`cxrlib.train.units`) also carry ``settings_hash``, the hash
of the settings of the unit that made them; the other columns keep their contract.

The key is (experiment, model, method, repetition, image_id): :func:`append_predictions` replaces
rows with the same key and never duplicates them. A trained fold leaves three more artifacts,
whose paths come from :func:`artifact_stem`: ``embeddings/<stem>.npz`` (penultimate-layer
embeddings of the fold's train, valid and test images), ``checkpoints/<stem>.pth`` and
``logs/<stem>.csv`` (the fastai CSV log).

:func:`average_by_patient` gives the patient-level table of seed 003 (scores of a patient's
same-day images averaged), which the metric functions accept like the image-level one.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cxrlib.data.manifest import join_manifest

__all__ = [
    "KEY", "RUN_KEY", "MODEL_KEY", "BASE_COLUMNS", "probability_columns", "classes_of",
    "make_predictions", "validate_predictions", "merge_predictions", "append_predictions",
    "read_predictions", "completed_runs", "average_by_patient", "artifact_stem",
    "save_embeddings", "load_embeddings", "CROSSVAL_RUNS_FILE", "with_checkpoints",
]

#: Unique key of a row.
KEY = ("experiment", "model", "method", "repetition", "image_id")
#: One trained model: the rows of one test fold.
RUN_KEY = ("experiment", "model", "method", "repetition", "fold")
#: One line of a results table: all folds and repetitions of a model in an experiment.
MODEL_KEY = ("experiment", "model", "method")
BASE_COLUMNS = ("image_id", "repetition", "fold", "experiment", "model", "method", "label",
                "predicted")
#: The log of the folds cross-validation trained (:mod:`cxrlib.train.crossval`), one line per fold.
CROSSVAL_RUNS_FILE = "crossval_runs.csv"
_PREFIX = "p_"
_NAME_OK = re.compile(r"^[A-Za-z0-9_.@+-]+$")


def probability_columns(classes: Sequence[str]) -> list[str]:
    """``["p_control", ...]`` for the given classes."""
    return [_PREFIX + c for c in classes]


def classes_of(predictions: pd.DataFrame) -> list[str]:
    """The classes of a predictions table, from its ``p_*`` columns, in column order."""
    classes = [c[len(_PREFIX):] for c in predictions.columns if str(c).startswith(_PREFIX)]
    if len(classes) < 2:
        raise ValueError(f"a predictions table needs at least two p_<class> columns, found "
                         f"{[_PREFIX + c for c in classes]}")
    return classes


def make_predictions(
    image_ids: Sequence[str],
    labels: Sequence[str],
    probabilities: np.ndarray,
    classes: Sequence[str],
    *,
    experiment: str,
    model: str,
    method: str,
    repetition: int,
    fold: int,
) -> pd.DataFrame:
    """Rows of the predictions table for the test images of one trained model.

    Parameters
    ----------
    image_ids : (N,) manifest image ids.
    labels : (N,) true class names.
    probabilities : float (N, C), columns in the order of ``classes``.
    classes : the C class names.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    classes = list(classes)
    if probabilities.shape != (len(image_ids), len(classes)):
        raise ValueError(f"probabilities must have shape ({len(image_ids)}, {len(classes)}), "
                         f"got {probabilities.shape}")
    if len(labels) != len(image_ids):
        raise ValueError(f"{len(labels)} labels for {len(image_ids)} images")
    df = pd.DataFrame({
        "image_id": pd.Series(image_ids, dtype=str).to_numpy(),
        "repetition": int(repetition),
        "fold": int(fold),
        "experiment": experiment,
        "model": model,
        "method": method,
        "label": pd.Series(labels, dtype=str).to_numpy(),
    })
    for j, column in enumerate(probability_columns(classes)):
        df[column] = probabilities[:, j]
    df["predicted"] = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)] \
        if len(df) else pd.Series([], dtype=object)
    return validate_predictions(df, origin=f"{experiment}/{model}/{method} r{repetition} f{fold}")


def validate_predictions(df: pd.DataFrame, origin: str = "predictions") -> pd.DataFrame:
    """Check a predictions table and return it with normalised dtypes and column order.

    Raises ``ValueError`` naming ``origin`` and the first bad row or column: missing columns,
    probabilities outside [0, 1] or rows not summing to 1 (tolerance 1e-3), a label or
    prediction that is not a class, a prediction that is not the most probable class, or a
    duplicated key.
    """
    missing = [c for c in BASE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{origin}: missing column(s) {missing}")
    classes = classes_of(df)
    p_cols = probability_columns(classes)
    out = df.copy()
    for col in ("image_id", "experiment", "model", "method", "label", "predicted"):
        out[col] = out[col].astype(str).astype(object)
    for col in ("repetition", "fold"):
        out[col] = out[col].astype(np.int64)
    probs = out[p_cols].to_numpy(dtype=float)
    bad = ~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1) | (probs > 1).any(axis=1) \
        | (np.abs(probs.sum(axis=1) - 1) > 1e-3)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{origin}, row {row}: class probabilities {probs[row].tolist()} are not "
                         "in [0, 1] or do not sum to 1")
    for col in ("label", "predicted"):
        wrong = ~out[col].isin(classes)
        if wrong.any():
            row = int(np.flatnonzero(wrong.to_numpy())[0])
            raise ValueError(f"{origin}, row {row}, column '{col}': {out[col].iloc[row]!r} is not "
                             f"one of the classes {classes}")
    if len(out):
        top = probs.max(axis=1)
        chosen = probs[np.arange(len(out)), [classes.index(c) for c in out["predicted"]]]
        wrong = chosen < top - 1e-9
        if wrong.any():
            row = int(np.flatnonzero(wrong)[0])
            raise ValueError(f"{origin}, row {row}: predicted {out['predicted'].iloc[row]!r} is "
                             "not the most probable class")
    dup = out.duplicated(list(KEY))
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise ValueError(f"{origin}, row {row}: duplicate key "
                         f"{tuple(out.iloc[row][list(KEY)])} {KEY}")
    extra = [c for c in out.columns if c not in BASE_COLUMNS and c not in p_cols]
    return out[list(BASE_COLUMNS[:-1]) + p_cols + ["predicted"] + extra].reset_index(drop=True)


def merge_predictions(existing: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """``existing`` with the rows of ``new`` added; rows with the same :data:`KEY` are replaced
    by ``new``'s. Both must have the same class columns."""
    new = validate_predictions(new, origin="new predictions")
    if existing is None or existing.empty:
        return new
    existing = validate_predictions(existing, origin="existing predictions")
    if classes_of(existing) != classes_of(new):
        raise ValueError("class columns differ: existing "
                         f"{probability_columns(classes_of(existing))}, "
                         f"new {probability_columns(classes_of(new))}")
    keys_new = pd.MultiIndex.from_frame(new[list(KEY)])
    keep = ~pd.MultiIndex.from_frame(existing[list(KEY)]).isin(keys_new)
    merged = pd.concat([existing[keep], new], ignore_index=True)
    return merged.sort_values(list(RUN_KEY) + ["image_id"], kind="stable").reset_index(drop=True)


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read and validate ``predictions.parquet``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the cross-validation first "
                                "(cxrlib.train.crossval.run_crossval)")
    return validate_predictions(pd.read_parquet(path), origin=str(path))


def append_predictions(path: str | Path, new: pd.DataFrame) -> pd.DataFrame:
    """Merge ``new`` into the parquet file at ``path`` (created if absent) and return the table.

    The file is replaced atomically (written to a temporary file of its own, then renamed), so
    an interrupted run leaves the previous table intact. Read, merge and replace are not one
    step: processes that train concurrently write shards instead, merged by one writer
    (:mod:`cxrlib.train.units`).
    """
    import tempfile

    path = Path(path)
    existing = read_predictions(path) if path.is_file() else None
    merged = merge_predictions(existing, new)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        merged.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return merged


def completed_runs(predictions: pd.DataFrame | None) -> set[tuple]:
    """The (experiment, model, method, repetition, fold) tuples that have rows."""
    if predictions is None or predictions.empty:
        return set()
    runs = predictions[list(RUN_KEY)].drop_duplicates()
    return {tuple(r) for r in runs.itertuples(index=False, name=None)}


def average_by_patient(
    predictions: pd.DataFrame,
    manifest: pd.DataFrame,
    same_day: bool = True,
) -> pd.DataFrame:
    """Patient-level scores (seed 003): average the probabilities of a patient's images.

    Parameters
    ----------
    predictions : image-level predictions table.
    manifest : gives ``patient_id`` (and ``study_date``) of each ``image_id``.
    same_day : average only images taken the same day (seed 003); images without a date (or a
        manifest without ``study_date``) are averaged together per patient. False averages all
        of a patient's images.

    Returns
    -------
    One row per (experiment, model, method, repetition, patient[, date], true label):
    ``unit_id`` (``patient_id`` or ``patient_id|study_date``), ``patient_id``, ``n_images``,
    ``fold``, ``label``, the averaged ``p_*`` columns and ``predicted`` (their argmax). Images
    of one patient with different labels stay in separate rows.
    """
    classes = classes_of(predictions)
    p_cols = probability_columns(classes)
    same_day = same_day and "study_date" in manifest.columns
    need = ["patient_id"] + (["study_date"] if same_day else [])
    df = join_manifest(predictions, manifest, need, what="the predictions (averaged by patient)")
    df["patient_id"] = df["patient_id"].astype(str)
    if same_day:
        date = df["study_date"].astype(object).where(df["study_date"].notna(), "")
        df["unit_id"] = df["patient_id"] + "|" + date.astype(str)
    else:
        df["unit_id"] = df["patient_id"]
    keys = list(MODEL_KEY) + ["repetition", "unit_id", "label"]
    grouped = df.groupby(keys, sort=True, dropna=False)
    out = grouped[p_cols].mean()
    out["patient_id"] = grouped["patient_id"].first()
    out["n_images"] = grouped.size()
    out["fold"] = grouped["fold"].min()
    out = out.reset_index()
    out["predicted"] = np.asarray(classes, dtype=object)[out[p_cols].to_numpy().argmax(axis=1)]
    return out[list(MODEL_KEY) + ["repetition", "fold", "unit_id", "patient_id", "n_images",
                                  "label"] + p_cols + ["predicted"]]


# --------------------------------------------------------------------------------------------
# Per-fold artifacts


def artifact_stem(experiment: str, model: str, method: str, repetition: int, fold: int) -> str:
    """``<experiment>_<model>_<method>_r<repetition>_f<fold>``: the file name (without suffix) of
    a trained fold's embeddings, checkpoint and log. Names may use letters, digits and ``_.@+-``."""
    for what, name in (("experiment", experiment), ("model", model), ("method", method)):
        if not _NAME_OK.match(str(name)):
            raise ValueError(f"{what} name {name!r} may only contain letters, digits and _.@+-")
    return f"{experiment}_{model}_{method}_r{int(repetition)}_f{int(fold)}"


def save_embeddings(path: str | Path, image_ids: Sequence[str], split: Sequence[str],
                    embeddings: np.ndarray, labels: Sequence[str]) -> Path:
    """Write a fold's embeddings as ``.npz``: ``image_id`` (N,) str, ``split`` (N,) str
    (train | valid | test), ``label`` (N,) str, ``embedding`` float32 (N, D)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    n = len(image_ids)
    if embeddings.ndim != 2 or len(embeddings) != n or len(split) != n or len(labels) != n:
        raise ValueError(f"embeddings {embeddings.shape}, {len(split)} split names and "
                         f"{len(labels)} labels for {n} images")
    bad = set(split) - {"train", "valid", "test"}
    if bad:
        raise ValueError(f"split names must be train, valid or test, got {sorted(bad)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, image_id=np.asarray(image_ids, dtype=str),
                        split=np.asarray(split, dtype=str), label=np.asarray(labels, dtype=str),
                        embedding=embeddings)
    os.replace(tmp, path)
    return path


def load_embeddings(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Read a fold's embeddings: (DataFrame ``image_id``, ``split``, ``label``; float32 (N, D))."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        table = pd.DataFrame({"image_id": data["image_id"].astype(object),
                              "split": data["split"].astype(object),
                              "label": data["label"].astype(object)})
        return table, data["embedding"]



def with_checkpoints(predictions: pd.DataFrame, artifacts_dir: str | Path) -> pd.DataFrame:
    """The rows of ``predictions`` made by classifiers that cross-validation trained.

    Those folds (listed in ``artifacts/crossval_runs.csv``) left a checkpoint and embeddings of
    the images as the classifier saw them. Rows of other methods in the table, such as notebook
    02's FuCiTNet and COVID-SDNet (which read generator-transformed images), are left out.
    """
    path = Path(artifacts_dir) / CROSSVAL_RUNS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run notebook 03 (03_classifier_cv) first")
    runs = pd.read_csv(path, usecols=list(RUN_KEY)).astype(str).drop_duplicates()
    keys = predictions[list(RUN_KEY)].astype(str)
    keep = pd.MultiIndex.from_frame(keys).isin(pd.MultiIndex.from_frame(runs))
    return predictions[keep]
