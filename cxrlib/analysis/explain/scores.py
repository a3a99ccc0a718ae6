"""Localisation scores of CAMs against masks: on plain arrays (:func:`energy_share`,
:func:`pointing_game`), on out-of-fold maps in the original image's frame (:func:`score_cams`),
and the tables notebook 06 writes from them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrlib.data.images import read_mask
from cxrlib.data.manifest import join_manifest
from cxrlib.preprocess.views import crop_to_box, dilate_mask, mask_file_name

from .frames import cam_to_box, row_box

__all__ = ["energy_share", "pointing_game", "score_cams", "summarize_localisation",
           "summarize_faithfulness"]


# --------------------------------------------------------------------------------------------
# Scores on plain arrays


def _check_cam_and_mask(cam: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = np.asarray(cam, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if cam.ndim != 2:
        raise ValueError(f"cam must be a 2-D array (H, W), got shape {cam.shape}")
    if cam.shape != mask.shape:
        raise ValueError(f"cam {cam.shape} and mask {mask.shape} have different shapes: map the "
                         "CAM onto the mask's frame first (cam_to_box / cam_to_image_frame)")
    if not np.isfinite(cam).all():
        raise ValueError("cam has NaN or infinite values")
    if (cam < 0).any():
        raise ValueError(f"cam must be non-negative (Grad-CAM maps are), min is {cam.min():g}")
    return cam, mask


def energy_share(cam: np.ndarray, mask: np.ndarray, dilation: int = 0) -> float:
    """Share of a CAM's mass inside a mask: ``cam[mask].sum() / cam.sum()``.

    Parameters
    ----------
    cam : float (H, W), non-negative.
    mask : bool (H, W), same shape.
    dilation : grow the mask by this many pixels first
        (:func:`cxrlib.preprocess.views.dilate_mask`, square).

    Returns
    -------
    float in [0, 1]; NaN when the CAM is zero everywhere (nothing to share).
    """
    cam, mask = _check_cam_and_mask(cam, mask)
    total = cam.sum()
    if total <= 0:
        return float("nan")
    return float(cam[dilate_mask(mask, dilation)].sum() / total)


def pointing_game(cam: np.ndarray, mask: np.ndarray, dilation: int = 0) -> float:
    """Pointing game: does the CAM's maximum fall inside the mask?

    Parameters
    ----------
    cam : float (H, W), non-negative.
    mask : bool (H, W), same shape.
    dilation : grow the mask by this many pixels first (the game's tolerance).

    Returns
    -------
    1.0 for a hit, 0.0 for a miss, NaN when the CAM is zero everywhere. When several pixels share
    the maximum (a plateau), the hit is decided by the fraction of them inside (>= 0.5 is a hit).
    """
    cam, mask = _check_cam_and_mask(cam, mask)
    top = cam.max()
    if top <= 0:
        return float("nan")
    peak = cam == top
    inside = dilate_mask(mask, dilation)[peak].mean()
    return float(inside >= 0.5)


# --------------------------------------------------------------------------------------------
# Scores of out-of-fold maps, in the image's frame


def score_cams(rows: pd.DataFrame, cams: np.ndarray, manifest: pd.DataFrame, masks_dir: str | Path,
               data_root: str | Path, dilation: float = 0.02) -> pd.DataFrame:
    """Localisation scores of out-of-fold CAMs in the original image's frame.

    Parameters
    ----------
    rows, cams : what :func:`oof_cams` returns (``rows`` needs ``image_id`` and the view's box,
        :data:`cxrlib.preprocess.views.BOX_COLUMNS`).
    manifest : gives ``path``, and when present ``lung_mask_path`` (true lungs) and
        ``lesion_mask_path`` (true lesions).
    masks_dir : the predicted lung masks (notebook 01's ``artifacts/lung_masks``), scored
        against where the manifest has no true lung mask.
    data_root : root of the manifest's paths.
    dilation : radius of the lung mask's dilation, as a fraction of the image's shorter side.

    Returns
    -------
    ``rows`` with the columns ``lung_mask`` (``truth`` or ``prediction``: the lungs scored
    against - the manifest's true mask when it has one), ``lung_energy`` (:func:`energy_share`
    in the dilated lungs), ``lung_area`` (the dilated lungs' share of the view's box: the energy
    share of a uniform map, the chance level), ``pointing_hit`` (:func:`pointing_game` on the
    dilated lungs), ``lesion_energy`` / ``lesion_area`` / ``lesion_hit`` (on the true lesion
    mask, NaN when the image has none) and ``dilation_px``.
    """
    cams = np.asarray(cams, dtype=np.float32)
    if len(cams) != len(rows):
        raise ValueError(f"{len(cams)} maps for {len(rows)} rows")
    if not 0 <= dilation < 0.5:
        raise ValueError(f"dilation is a fraction of the image side in [0, 0.5), got {dilation}")
    masks = [c for c in ("lung_mask_path", "lesion_mask_path") if c in manifest.columns]
    info = join_manifest(rows[["image_id"]].reset_index(drop=True), manifest, ["path", *masks],
                         what="the maps' rows")
    root, masks_dir = Path(data_root), Path(masks_dir)

    def truth(rec, column):
        value = rec.get(column) if column in rec.index else None
        return read_mask(root / value) if isinstance(value, str) and value else None

    cache: dict[str, tuple] = {}
    out = []
    for i, rec in enumerate(rows.itertuples(index=False)):
        image_id = str(rec.image_id)
        if image_id not in cache:
            m = info.iloc[i]
            lungs, lesion = truth(m, "lung_mask_path"), truth(m, "lesion_mask_path")
            source = "truth" if lungs is not None else "prediction"
            if lungs is None:
                predicted_path = masks_dir / mask_file_name(image_id)
                if not predicted_path.is_file():
                    raise FileNotFoundError(f"no lung mask for {image_id!r}: neither "
                                            f"lung_mask_path in the manifest nor {predicted_path}")
                lungs = read_mask(predicted_path)
            radius = int(round(dilation * min(lungs.shape)))
            cache[image_id] = (dilate_mask(lungs, radius), lesion, source, radius)
        lungs, lesion, source, radius = cache[image_id]
        box = row_box(rows.iloc[i])
        cam = cam_to_box(cams[i], box)
        lung_box = crop_to_box(lungs, box, fill=False)
        row = {"lung_mask": source, "dilation_px": radius,
               "lung_energy": energy_share(cam, lung_box), "lung_area": float(lung_box.mean()),
               "pointing_hit": pointing_game(cam, lung_box),
               "lesion_energy": np.nan, "lesion_area": np.nan, "lesion_hit": np.nan}
        if lesion is not None and lesion.any():
            lesion_box = crop_to_box(lesion, box, fill=False)
            row.update(lesion_energy=energy_share(cam, lesion_box),
                       lesion_area=float(lesion_box.mean()),
                       lesion_hit=pointing_game(cam, lesion_box))
        out.append(row)
    scores = pd.DataFrame(out, index=range(len(rows)))
    return pd.concat([rows.reset_index(drop=True), scores], axis=1)


# --------------------------------------------------------------------------------------------
# Tables


def summarize_localisation(scores: pd.DataFrame) -> pd.DataFrame:
    """The localisation table: one row per (experiment, model, method, label).

    Columns: ``n_images``, ``n_zero_maps`` (maps zero everywhere: no location has positive
    evidence for the class; left out of the means), ``lung_energy_mean`` / ``_sd`` (share of CAM
    mass in the dilated lungs), ``lung_area_mean`` (the chance level: the lungs' share of the
    view's box), ``outside_energy_mean`` (1 - lung energy), ``pointing_hit_rate``, ``n_lesion``
    (images with a true lesion), ``lesion_energy_mean`` / ``_sd``, ``lesion_area_mean``,
    ``lesion_hit_rate``, ``target`` (the class explained), ``lung_mask`` and
    ``dilation_px_median``.
    """
    keys = ["experiment", "model", "method", "label"]
    g = scores.assign(outside_energy=1 - scores["lung_energy"]).groupby(keys, sort=True)
    table = pd.DataFrame({
        "n_images": g.size(),
        "n_zero_maps": g["lung_energy"].agg(lambda s: int(s.isna().sum())),
        "lung_energy_mean": g["lung_energy"].mean(), "lung_energy_sd": g["lung_energy"].std(),
        "lung_area_mean": g["lung_area"].mean(),
        "outside_energy_mean": g["outside_energy"].mean(),
        "pointing_hit_rate": g["pointing_hit"].mean(),
        "n_lesion": g["lesion_area"].count(),
        "lesion_energy_mean": g["lesion_energy"].mean(),
        "lesion_energy_sd": g["lesion_energy"].std(),
        "lesion_area_mean": g["lesion_area"].mean(), "lesion_hit_rate": g["lesion_hit"].mean(),
        "target": g["target"].agg(lambda s: "/".join(sorted(set(s)))),
        "lung_mask": g["lung_mask"].first(),
        "dilation_px_median": g["dilation_px"].median(),
    })
    return table.reset_index()


def summarize_faithfulness(rows: pd.DataFrame) -> pd.DataFrame:
    """ROAD per (experiment, model, method): ``n_images``, ``road_mean``, ``road_sd``, and
    ``road_positive`` (share of images with a positive score), from :func:`oof_cams` rows with
    ``road``."""
    if "road" not in rows.columns:
        raise ValueError("rows have no 'road' column: call oof_cams with road_percentiles")
    g = rows.groupby(["experiment", "model", "method"], sort=True)["road"]
    return pd.DataFrame({"n_images": g.count(), "road_mean": g.mean(), "road_sd": g.std(),
                         "road_positive": g.apply(lambda s: float((s.dropna() > 0).mean()))}
                        ).reset_index()
