"""Scores of the predicted lung masks against the true ones (Dice, IoU, per group, the worst
cases, the published reference), and notebook 01's tables: the scores beside the paper's, the
counts of the segmentation QC flag and the reasons of each flag."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrlib.data.images import read_mask
from cxrlib.data.manifest import data_root_of
from cxrlib.preprocess.lung_plausibility import (
    MIN_LUNG_FRACTION, RULE_COLUMNS, RULES, rule_phrase,
)
from cxrlib.preprocess.views import mask_file_name

from .data import rows_with_masks

__all__ = ["dice_score", "iou_score", "score_masks", "summarise_scores", "worst_cases",
           "reference_scores", "scores_table", "qc_summary", "qc_flag_reasons"]


def _check_mask_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"masks differ in shape: predicted {pred.shape}, true {truth.shape}")
    return pred.astype(bool, copy=False), truth.astype(bool, copy=False)


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient ``2 |P & T| / (|P| + |T|)`` of two bool masks; 1.0 when both are empty."""
    pred, truth = _check_mask_pair(pred, truth)
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def iou_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union ``|P & T| / |P | T|`` of two bool masks; 1.0 when both are empty."""
    pred, truth = _check_mask_pair(pred, truth)
    union = int((pred | truth).sum())
    return 1.0 if union == 0 else int((pred & truth).sum()) / union


def score_masks(
    manifest: pd.DataFrame,
    masks_dir: str | Path,
    data_root: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Dice and IoU of the predicted masks in ``masks_dir`` against the manifest's lung masks.

    Only rows with a ``lung_mask_path`` are scored, at the true mask's resolution. A missing
    predicted mask is an error (run :func:`segment_manifest` first).

    Returns a DataFrame ``image_id``, ``source``, ``label``, ``dice``, ``iou``.
    """
    root = data_root_of(manifest, data_root)
    masks_dir = Path(masks_dir)
    rows = rows_with_masks(manifest)
    records = []
    for rec in tqdm(rows.itertuples(index=False), total=len(rows), desc="scoring",
                    disable=not progress):
        pred_path = masks_dir / mask_file_name(rec.image_id)
        if not pred_path.is_file():
            raise FileNotFoundError(f"no predicted mask for {rec.image_id!r} at {pred_path}: "
                                    "run segment_manifest first")
        pred, truth = read_mask(pred_path), read_mask(root / rec.lung_mask_path)
        if pred.shape != truth.shape:
            raise ValueError(f"{rec.image_id!r}: predicted mask {pred.shape} ({pred_path}) and "
                             f"true mask {truth.shape} differ in shape")
        records.append({"image_id": rec.image_id, "source": rec.source, "label": rec.label,
                        "dice": dice_score(pred, truth), "iou": iou_score(pred, truth)})
    return pd.DataFrame(records, columns=["image_id", "source", "label", "dice", "iou"])


def summarise_scores(scores: pd.DataFrame, by: str | list[str] | None = "source") -> pd.DataFrame:
    """Mean and standard deviation (ddof=1) of Dice and IoU per group (``by=None``: overall).

    Returns columns ``[*by], n, dice_mean, dice_sd, iou_mean, iou_sd``.
    """
    def agg(frame: pd.DataFrame) -> pd.Series:
        return pd.Series({
            "n": len(frame),
            "dice_mean": frame["dice"].mean(), "dice_sd": frame["dice"].std(),
            "iou_mean": frame["iou"].mean(), "iou_sd": frame["iou"].std(),
        })

    if by is None:
        return agg(scores).to_frame().T.astype({"n": int})
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in by if c not in scores.columns]
    if missing:
        raise ValueError(f"cannot group scores by {missing}: columns are {list(scores.columns)}")
    out = scores.groupby(by, sort=True)[["dice", "iou"]].agg(["count", "mean", "std"])
    return pd.DataFrame({
        "n": out[("dice", "count")].astype(int),
        "dice_mean": out[("dice", "mean")], "dice_sd": out[("dice", "std")],
        "iou_mean": out[("iou", "mean")], "iou_sd": out[("iou", "std")],
    }).reset_index()


def worst_cases(scores: pd.DataFrame, n: int = 5, metric: str = "dice") -> pd.DataFrame:
    """The ``n`` rows with the lowest ``metric`` (``dice`` or ``iou``), worst first."""
    if metric not in ("dice", "iou"):
        raise ValueError(f"metric must be 'dice' or 'iou', got {metric!r}")
    return scores.sort_values([metric, "image_id"], kind="stable").head(n).reset_index(drop=True)


def reference_scores() -> pd.DataFrame:
    """The published scores of seed 001's U-Net (trained and tested on real masks of each set).

    Columns ``dataset``, ``dice``, ``iou``, ``note``.
    """
    note = ("U-Net of seed 001 (imlab-uiip/lung-segmentation-2d); seed 001 quotes the JSRT "
            "figures, the Montgomery ones come from the same implementation")
    return pd.DataFrame({
        "dataset": ["JSRT", "Montgomery"],
        "dice": [0.985, 0.972],
        "iou": [0.971, 0.956],
        "note": [note, note],
    })


# --------------------------------------------------------------------------------------------
# Tables of notebook 01


def scores_table(scores: pd.DataFrame) -> pd.DataFrame:
    """The published scores beside this run's, per source, per class and overall.

    ``scores``: the output of :func:`score_masks` (``image_id``, ``source``, ``label``, ``dice``,
    ``iou``). Returns columns ``what`` (``paper`` / ``reproduced``), ``group`` (``dataset`` for
    the paper's rows, ``source``, ``label`` or ``all``), ``name``, ``n`` (images; empty for the
    paper), ``dice``, ``dice_sd``, ``iou``, ``iou_sd`` (means and sample sds, in [0, 1]).
    """
    paper = reference_scores().drop(columns="note").rename(columns={"dataset": "name"})
    parts = [paper.assign(what="paper", group="dataset")]
    for by in ("source", "label", None):
        part = summarise_scores(scores, by=by).rename(columns={
            by: "name", "dice_mean": "dice", "iou_mean": "iou"})
        parts.append(part.assign(what="reproduced", group=by or "all",
                                 **({} if by else {"name": "all"})))
    out = pd.concat(parts, ignore_index=True)
    out["n"] = out["n"].astype("Int64")
    return out[["what", "group", "name", "n", "dice", "dice_sd", "iou", "iou_sd"]]


#: The shape rules counted by :func:`qc_summary` (seed 003's two have their own columns).
_SHAPE_RULES = [name for name in RULES if name not in ("no_lung_pair", "low_fraction")]


def qc_summary(qc: pd.DataFrame, min_lung_fraction: float = MIN_LUNG_FRACTION,
               by: str = "source") -> pd.DataFrame:
    """Counts of the segmentation QC flag per ``by`` group, plus a ``total`` row.

    ``qc``: one row per image with ``by``, ``qc_lungs_found``, ``qc_lung_fraction``, ``qc_pass``
    and the ``qc_rule_<name>`` flags (the columns of :func:`segment_manifest` joined with the
    manifest's ``by``); ``min_lung_fraction`` is the threshold the flag was computed with.
    Returns columns ``[by], images, passed, flagged, lungs_not_found`` (not exactly two lung
    regions of sufficient size), ``low_lung_fraction`` (lungs cover less than the threshold),
    one count per shape rule of :mod:`cxrlib.preprocess.lung_plausibility` (``size_mismatch``,
    ``not_side_by_side``, ``implausible_height``, ``top_edge``, ``bottom_edge``, ``shoulders``;
    missing (NA) when ``qc`` lacks that rule's column), ``mean_lung_fraction`` (in [0, 1]),
    ``flagged_pct`` (percent). An image may count under several rules.
    """
    need = {by, "qc_lungs_found", "qc_lung_fraction", "qc_pass"}
    missing = sorted(need - set(qc.columns))
    if missing:
        raise ValueError(f"qc table lacks column(s) {missing}; columns are {list(qc.columns)}")
    if qc.empty:
        raise ValueError("qc table is empty: nothing to summarise")

    def agg(g: pd.DataFrame) -> dict:
        passed = int(g["qc_pass"].astype(bool).sum())
        rules = {name: (int(g[f"qc_rule_{name}"].astype(bool).sum())
                        if f"qc_rule_{name}" in g.columns else pd.NA) for name in _SHAPE_RULES}
        return {"images": len(g), "passed": passed, "flagged": len(g) - passed,
                "lungs_not_found": int((~g["qc_lungs_found"].astype(bool)).sum()),
                "low_lung_fraction": int((g["qc_lung_fraction"] < min_lung_fraction).sum()),
                **rules,
                "mean_lung_fraction": float(g["qc_lung_fraction"].mean()),
                "flagged_pct": 100.0 * (len(g) - passed) / len(g)}

    rows = [{by: key, **agg(g)} for key, g in qc.groupby(by, sort=True)]
    rows.append({by: "total", **agg(qc)})
    out = pd.DataFrame(rows).astype({name: "Int64" for name in _SHAPE_RULES})
    return out.round({"mean_lung_fraction": 3, "flagged_pct": 1})


def qc_flag_reasons(qc: pd.DataFrame, min_lung_fraction: float = MIN_LUNG_FRACTION) -> pd.Series:
    """The general reasons of each failed segmentation QC: the phrases of the failed rules of
    :mod:`cxrlib.preprocess.lung_plausibility` (e.g. ``"no lung pair found"``, ``"lungs under 30%
    of the image"``, ``"reaches the top edge or the neck"``) joined by ``"; "``, without the
    per-image details of ``qc_reason``, so that images group by them.

    ``qc``: the columns of :func:`segment_manifest` (a table without the ``qc_rule_<name>``
    columns gives the phrases of seed 003's two rules from ``qc_lungs_found`` and
    ``qc_lung_fraction``). Returns a Series indexed by ``image_id`` of the images that fail, in
    ``qc``'s order.
    """
    failed = qc[~qc["qc_pass"].astype(bool)]
    flags = pd.DataFrame(index=failed.index)
    for name, column in zip(RULES, RULE_COLUMNS):
        if column in failed.columns:
            flags[name] = failed[column].astype(bool)
    if "no_lung_pair" not in flags:
        flags["no_lung_pair"] = ~failed["qc_lungs_found"].astype(bool)
    if "low_fraction" not in flags:
        flags["low_fraction"] = failed["qc_lung_fraction"] < min_lung_fraction
    names = [name for name in RULES if name in flags]
    reasons = ["; ".join(rule_phrase(name, min_lung_fraction) for name in names if row[name])
               or "failed" for row in flags[names].to_dict("records")]
    return pd.Series(reasons, index=failed["image_id"].astype(str).to_numpy(), dtype=object)
