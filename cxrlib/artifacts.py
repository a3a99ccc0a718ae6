"""The files one notebook hands to the next, read and written in one place.

Every hand-off of the run folder's ``artifacts/`` goes through a function here, which checks the
columns on write and on read and, when the file is missing, says which notebook writes it:

======================== ======== ============== =============================================
file                     writer   readers        functions
======================== ======== ============== =============================================
``split_plan.csv``       00       02, 03, 04     :func:`write_split_plan`, :func:`read_split_plan`
``segmentation_qc.csv``  01       02, 03, 04     :func:`write_segmentation_qc`,
                                                 :func:`read_segmentation_qc`
``views.csv``            01       02, 03, 04, 06 :func:`write_views`, :func:`read_views` (the QC
                                                 filter is applied here, once)
``predictions.parquet``  02, 03   04, 05, 06     :func:`cxrlib.train.predictions.read_predictions`
                                                 (written by units.merge_shards)
``cit/<stem>_split.csv`` 02       02             :func:`read_cit_split`
``cam_scores.csv``       06       06 (twin)      :func:`write_cam_scores`, :func:`read_cam_scores`
======================== ======== ============== =============================================

Tables are CSV with ``image_id`` read as text. Paths in ``views.csv`` are stored relative to the
folder holding it when they lie under it, and returned absolute.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cxrlib.data.manifest import image_info
from cxrlib.data.splits import PLAN_COLUMNS, check_split_plan
from cxrlib.preprocess.views import BOX_COLUMNS

__all__ = [
    "SPLIT_PLAN_FILE", "SEGMENTATION_QC_FILE", "VIEWS_FILE", "CAM_SCORES_FILE", "VIEW_COLUMNS",
    "BOX_COLUMNS", "QC_COLUMNS", "ViewSet", "write_split_plan", "read_split_plan",
    "write_segmentation_qc", "read_segmentation_qc", "write_views", "read_views",
    "read_cit_split", "write_cam_scores", "read_cam_scores",
]

SPLIT_PLAN_FILE = "split_plan.csv"
SEGMENTATION_QC_FILE = "segmentation_qc.csv"
VIEWS_FILE = "views.csv"
CAM_SCORES_FILE = "cam_scores.csv"
#: the columns every views table has; ``views.csv`` adds the crop boxes
#: (:data:`cxrlib.preprocess.views.BOX_COLUMNS`)
VIEW_COLUMNS = ("image_id", "view", "path")
#: the columns of ``segmentation_qc.csv`` every reader relies on (the rules' own columns follow)
QC_COLUMNS = ("image_id", "qc_pass")
_CAM_SCORE_COLUMNS = ("image_id", "experiment")


def _missing(path: Path, writer: str) -> FileNotFoundError:
    return FileNotFoundError(f"{path} does not exist: run {writer} first")


def _read_csv(path: Path, columns, writer: str) -> pd.DataFrame:
    if not path.is_file():
        raise _missing(path, writer)
    table = pd.read_csv(path, dtype={"image_id": str})
    lacking = [c for c in columns if c not in table.columns]
    if lacking:
        raise ValueError(f"{path} lacks column(s) {lacking} (written by {writer})")
    return table


def _write_csv(table: pd.DataFrame, path: Path, columns, what: str) -> Path:
    lacking = [c for c in columns if c not in table.columns]
    if lacking:
        raise ValueError(f"{what} lacks column(s) {lacking}")
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


def write_split_plan(artifacts_dir: str | Path, plan: pd.DataFrame) -> Path:
    """Check the plan (:func:`cxrlib.data.splits.check_split_plan`) and write
    ``split_plan.csv``; returns its path."""
    check_split_plan(plan)
    return _write_csv(plan, Path(artifacts_dir) / SPLIT_PLAN_FILE, PLAN_COLUMNS, "split plan")


def read_split_plan(artifacts_dir: str | Path, image_ids=None) -> pd.DataFrame:
    """Notebook 00's split plan (``image_id``, ``group``, ``repetition``, ``fold``), checked for
    leaks; with ``image_ids``, only those images' rows."""
    plan = _read_csv(Path(artifacts_dir) / SPLIT_PLAN_FILE, PLAN_COLUMNS,
                     "notebook 00 (data audit)")
    check_split_plan(plan)
    if image_ids is not None:
        plan = plan[plan["image_id"].isin(pd.Index(image_ids).astype(str))]
    return plan.reset_index(drop=True)


def write_segmentation_qc(artifacts_dir: str | Path, qc: pd.DataFrame) -> Path:
    """Write notebook 01's per-image QC (``image_id``, ``qc_pass`` bool, then any rule columns)."""
    return _write_csv(qc, Path(artifacts_dir) / SEGMENTATION_QC_FILE, QC_COLUMNS,
                      "segmentation QC table")


def read_segmentation_qc(artifacts_dir: str | Path) -> pd.DataFrame:
    """Notebook 01's per-image QC, ``qc_pass`` as bool."""
    qc = _read_csv(Path(artifacts_dir) / SEGMENTATION_QC_FILE, QC_COLUMNS,
                   "notebook 01 (lung segmentation)")
    passed = qc["qc_pass"]
    if passed.dtype != bool:
        text = passed.astype(str).str.lower()
        unknown = sorted(set(text) - {"true", "false", "1", "0"})
        if unknown:
            raise ValueError(f"{Path(artifacts_dir) / SEGMENTATION_QC_FILE}: qc_pass holds "
                             f"{unknown[:3]}, not true/false")
        qc = qc.assign(qc_pass=text.isin(("true", "1")))
    return qc


def write_views(folder: str | Path, views: pd.DataFrame) -> Path:
    """Write a views table to ``<folder>/views.csv``: ``image_id``, ``view``, ``path`` (stored
    relative to ``folder`` when under it) and the crop boxes where the table has them."""
    folder = Path(folder).resolve()
    columns = list(VIEW_COLUMNS) + [c for c in BOX_COLUMNS if c in views.columns]

    def shown(path):
        path = Path(path)
        return str(path.relative_to(folder)) if path.is_absolute() and \
            path.is_relative_to(folder) else str(path)

    table = views.assign(path=[shown(p) for p in views["path"]]) if len(views) else views
    return _write_csv(table[columns] if len(views) else views.reindex(columns=columns),
                      folder / VIEWS_FILE, VIEW_COLUMNS, "views table")


@dataclass
class ViewSet:
    """The views a notebook trains or explains with (:func:`read_views`).

    Attributes
    ----------
    views : ``image_id``, ``view``, ``path`` (absolute) and the crop boxes
        (:data:`BOX_COLUMNS`) where notebook 01 wrote them.
    excluded : sorted ids of the images left out for failing the segmentation QC.
    qc_exclusion_skipped : the exclusion was asked for but not applied, since it would have left
        a class with too few images.
    """

    views: pd.DataFrame
    excluded: list[str] = field(default_factory=list)
    qc_exclusion_skipped: bool = False


def read_views(
    artifacts_dir: str | Path,
    manifest: pd.DataFrame,
    exclude_qc_failed: bool = True,
    min_per_class: int = 0,
) -> ViewSet:
    """The views of notebook 01, restricted to the manifest's images, with the segmentation QC
    applied.

    Parameters
    ----------
    artifacts_dir : the run folder's ``artifacts/``, holding ``views.csv`` and
        ``segmentation_qc.csv``.
    manifest : the validated manifest.
    exclude_qc_failed : drop every view of the images whose predicted lung mask failed QC.
    min_per_class : if the exclusion would leave a class with fewer images than this, nothing
        is excluded, a ``UserWarning`` says so and ``qc_exclusion_skipped`` is True (a
        segmentation that fails on most images, as a 1-epoch U-Net may, must not leave the
        classifiers without data).
    """
    artifacts_dir = Path(artifacts_dir)
    views = _read_csv(artifacts_dir / VIEWS_FILE, VIEW_COLUMNS, "notebook 01 (lung segmentation "
                      "and views)")
    views = views[views["image_id"].isin(manifest["image_id"].astype(str))]
    views = views.assign(path=[str(p if Path(p).is_absolute() else artifacts_dir / p)
                               for p in views["path"]])
    columns = list(VIEW_COLUMNS) + [c for c in BOX_COLUMNS if c in views.columns]
    excluded: list[str] = []
    skipped = False
    if exclude_qc_failed:
        qc = read_segmentation_qc(artifacts_dir)
        failed = set(qc.loc[~qc["qc_pass"], "image_id"])
        excluded = sorted(failed & set(views["image_id"]))
        label = image_info(manifest, ["label"])["label"]
        kept = label[label.index.isin(set(views["image_id"]) - failed)].value_counts()
        kept = kept.reindex(label.unique(), fill_value=0)
        if (kept < min_per_class).any():
            warnings.warn(f"QC exclusion not applied: leaving out the {len(excluded)} images that "
                          f"failed it would leave {kept.min()} image(s) of class "
                          f"{kept.idxmin()!r} (< {min_per_class})", UserWarning, stacklevel=2)
            excluded, failed, skipped = [], set(), True
        views = views[~views["image_id"].isin(failed)]
    return ViewSet(views[columns].reset_index(drop=True), excluded, skipped)


def read_cit_split(artifacts_dir: str | Path, split: str | Path) -> pd.DataFrame:
    """The images of one CiT fold and their role (``image_id``, ``role``: train / valid /
    test); ``split`` is the ``split`` column of :func:`cxrlib.train.cit.read_cit_runs`."""
    return _read_csv(Path(artifacts_dir) / split, ("image_id", "role"),
                     "notebook 02 (CiT training)")


def write_cam_scores(artifacts_dir: str | Path, scores: pd.DataFrame) -> Path:
    """Write notebook 06's per-image Grad-CAM scores (``cam_scores.csv``)."""
    return _write_csv(scores, Path(artifacts_dir) / CAM_SCORES_FILE, _CAM_SCORE_COLUMNS,
                      "Grad-CAM scores")


def read_cam_scores(artifacts_dir: str | Path) -> pd.DataFrame:
    """Notebook 06's per-image Grad-CAM scores."""
    return _read_csv(Path(artifacts_dir) / CAM_SCORES_FILE, _CAM_SCORE_COLUMNS,
                     "notebook 06 (Grad-CAM)")
