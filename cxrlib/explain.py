"""Grad-CAM explanations of the trained classifiers, and how to score them against the truth.

Seed 001 (Fig. 1) and seed 000 (Figs. 5-7, "why positive / why negative") *showed* Grad-CAM maps;
seed 004 did the same for its transfer models. This module computes the maps with the ``grad-cam``
package on each model's named target layer (``model.cam_layer``, see
:mod:`cxrlib.models.classifiers`) and *scores* them:

======================= ==========================================================================
score                   meaning
======================= ==========================================================================
:func:`energy_share`    share of the CAM's total (non-negative) mass inside a mask, in [0, 1]
:func:`pointing_game`   1 when the CAM's maximum lies inside the mask, else 0 (Zhang et al. 2018)
:func:`road_scores`     ROAD faithfulness (Rong et al. 2022, ``pytorch_grad_cam.metrics.road``):
                        the drop in the target's probability when the *most* relevant pixels are
                        imputed away, minus the drop when the *least* relevant ones are, halved
======================= ==========================================================================

Frames
------
A CAM lives in the frame of the network input: the view (``exp1``, ``exp2``, ``exp3``, ``sdnet``,
see :mod:`cxrlib.views`), S x S pixels. The lung and lesion masks live in the frame of the original
image, H x W. :func:`cxrlib.views.view_box` gives the box of the original image that a view shows;
notebook 01 writes it beside each view in ``views.csv`` and :func:`oof_cams` carries it to each
map's row;
:func:`cam_to_box` resizes a CAM onto that box, at the original resolution, and
:func:`cam_to_image_frame` pastes it into the full image (zero where the view does not reach).
Scores are computed on the box, with the masks cut by :func:`cxrlib.views.crop_to_box` (pixels of
the box outside the image count as outside every mask): the pixels of the image that the view
does not show carry no CAM mass, so a share over the box is the share over the image.

The out-of-fold rule: :func:`oof_cams` applies to each image only the checkpoint of the fold in
which it was a *test* image (``predictions.parquet``'s ``fold``; checkpoint
``checkpoints/<artifact_stem>.pth``), on the view that checkpoint was trained on (the checkpoint's
``extra['view']``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import (ClassifierOutputSoftmaxTarget,
                                                  ClassifierOutputTarget)
from tqdm.auto import tqdm

from cxrlib.images import read_image, read_mask
from cxrlib.manifest import image_info, join_manifest
from cxrlib.models.classifiers import IMAGENET_MEAN, IMAGENET_STD, load_classifier
from cxrlib.predictions import RUN_KEY, artifact_stem, classes_of
from cxrlib.training import load_images
from cxrlib.views import BOX_COLUMNS, Box, crop_to_box, dilate_mask, mask_file_name, resize_image

__all__ = [
    "energy_share", "pointing_game", "to_input_tensor", "grad_cam", "road_scores",
    "cam_to_box", "cam_to_image_frame", "load_fold_model", "stratified_image_ids",
    "oof_cams", "score_cams", "summarize_localisation", "summarize_faithfulness",
    "compare_outside_energy", "compare_cohorts", "confident_outcomes", "cam_overlay",
    "plot_cam_grid", "plot_cam_table", "plot_why", "cam_viewer",
]


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
    dilation : grow the mask by this many pixels first (:func:`cxrlib.views.dilate_mask`, square).

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
# Grad-CAM and ROAD


def to_input_tensor(images: np.ndarray) -> torch.Tensor:
    """Prepared gray images (N, S, S) in [0, 1] -> the network input (N, 3, S, S): repeated on
    three channels and ImageNet-normalised, as :class:`cxrlib.training.ClassifierDataset` does."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"images must be a (N, S, S) array, got shape {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images))[:, None].expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def _class_indices(model: torch.nn.Module, targets, n: int) -> np.ndarray:
    """Target class(es) - a name, an index, or one per image - as (n,) indices."""
    classes = list(getattr(model, "classes", []))
    n_out = model.classifier.out_features

    def index(t) -> int:
        if isinstance(t, str):
            if t not in classes:
                raise ValueError(f"target class {t!r} is not one of the model's classes {classes}")
            return classes.index(t)
        if not 0 <= int(t) < n_out:
            raise ValueError(f"target index {t} is out of range for a {n_out}-class model")
        return int(t)

    if isinstance(targets, (str, int, np.integer)):
        return np.full(n, index(targets), dtype=np.int64)
    targets = list(targets)
    if len(targets) != n:
        raise ValueError(f"{len(targets)} targets for {n} images")
    return np.array([index(t) for t in targets], dtype=np.int64)


def grad_cam(model: torch.nn.Module, images: np.ndarray, targets,
             batch_size: int = 32) -> np.ndarray:
    """Grad-CAM maps (``pytorch_grad_cam.GradCAM``) of a classifier on its ``cam_layer``.

    Parameters
    ----------
    model : a :mod:`cxrlib.models.classifiers` model (has ``cam_layer``, ``classifier`` and,
        when loaded by ``load_classifier``, ``classes``).
    images : float (N, S, S) in [0, 1], prepared like the training images.
    targets : the class to explain: a class name, an index, or one per image (N,).
    batch_size : images per backward pass.

    Returns
    -------
    float32 (N, S, S): one map per image, the size of the input, scaled by grad-cam to [0, 1]
    (all zeros where no location has positive evidence for the target).
    """
    layer = getattr(model, "cam_layer", None)
    if layer is None:
        raise ValueError(f"{type(model).__name__} has no 'cam_layer': build it with "
                         "cxrlib.models.classifiers.build_classifier")
    x = to_input_tensor(images)
    idx = _class_indices(model, targets, len(x))
    was_training = model.training
    model.eval()  # batch-norm running statistics, as at prediction time
    out = np.zeros(tuple(x.shape[:1]) + tuple(x.shape[2:]), dtype=np.float32)
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for start in range(0, len(x), batch_size):
            stop = min(start + batch_size, len(x))
            out[start:stop] = cam(input_tensor=x[start:stop],
                                  targets=[ClassifierOutputTarget(int(i)) for i in idx[start:stop]])
    model.train(was_training)
    return out


def road_scores(model: torch.nn.Module, images: np.ndarray, cams: np.ndarray, targets,
                percentiles: Sequence[int] = (20, 40, 60, 80), seed: int = 0) -> np.ndarray:
    """ROAD faithfulness of CAMs (``pytorch_grad_cam.metrics.road.ROADCombined``).

    For each percentile p the pixels above (most relevant first, MoRF) or below (least relevant
    first, LeRF) the p-th percentile of the CAM are replaced by a noisy linear imputation of
    their neighbours, and the target class's softmax probability is read again. The score is
    ``(mean LeRF change - mean MoRF change) / 2``: positive when removing what the map calls
    important hurts more than removing what it calls unimportant.

    Parameters
    ----------
    model, images, targets : as for :func:`grad_cam`.
    cams : float (N, S, S), the maps to evaluate.
    percentiles : thresholds in percent.
    seed : seeds the imputation noise.

    Returns
    -------
    float32 (N,), in probability units (between -0.5 and 0.5).
    """
    cams = np.asarray(cams, dtype=np.float32)
    images = np.asarray(images, dtype=np.float32)
    if cams.shape != images.shape:
        raise ValueError(f"cams {cams.shape} and images {images.shape} have different shapes")
    x = to_input_tensor(images)
    idx = _class_indices(model, targets, len(x))
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    metric = ROADCombined(percentiles=list(percentiles))
    scores = metric(x, cams, [ClassifierOutputSoftmaxTarget(int(i)) for i in idx], model)
    model.train(was_training)
    return np.asarray(scores, dtype=np.float32).reshape(len(x))


# --------------------------------------------------------------------------------------------
# From the view's frame to the image's


def cam_to_box(cam: np.ndarray, box: Box) -> np.ndarray:
    """Resize a CAM (S, S) onto a box of the original image: float32 (row1 - row0, col1 - col0),
    bilinear (:func:`cxrlib.views.resize_image`)."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"cam must be a 2-D array (S, S), got shape {cam.shape}")
    r0, r1, c0, c1 = (int(v) for v in box)
    if r1 <= r0 or c1 <= c0:
        raise ValueError(f"empty box {box}")
    return np.clip(resize_image(cam, (r1 - r0, c1 - c0)), 0.0, None)


def cam_to_image_frame(cam: np.ndarray, box: Box, image_shape: tuple[int, int]) -> np.ndarray:
    """A view's CAM (S, S) in the original image's frame: float32 (H, W), the CAM resized onto
    ``box`` and 0 where the view does not reach (parts of the box outside the image are cut)."""
    h, w = (int(v) for v in image_shape)
    on_box = cam_to_box(cam, box)
    r0, r1, c0, c1 = (int(v) for v in box)
    out = np.zeros((h, w), dtype=np.float32)
    sr0, sr1, sc0, sc1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    if sr1 > sr0 and sc1 > sc0:
        out[sr0:sr1, sc0:sc1] = on_box[sr0 - r0:sr1 - r0, sc0 - c0:sc1 - c0]
    return out


# --------------------------------------------------------------------------------------------
# Out-of-fold maps for a predictions table


def load_fold_model(artifacts_dir: str | Path, experiment: str, model: str, method: str,
                    repetition: int, fold: int) -> torch.nn.Module:
    """The checkpoint ``checkpoints/<artifact_stem>.pth`` of one trained fold (eval mode, CPU)."""
    stem = artifact_stem(experiment, model, method, repetition, fold)
    path = Path(artifacts_dir) / "checkpoints" / f"{stem}.pth"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint for {experiment}/{model}/{method} r{repetition} "
                                f"f{fold}: {path} is missing (run notebook 03 first)")
    return load_classifier(path)


def stratified_image_ids(predictions: pd.DataFrame, max_images: int, seed: int = 0,
                         shared: bool = False) -> list[str]:
    """Up to ``max_images`` image ids of a predictions table, as equal a number per true class as
    the classes allow, drawn at random (sorted).

    Every experiment then explains the chosen images it has predictions for: all of them when
    the experiments share their test images (exp1 / exp2 / exp3), fewer for one trained on a
    subset (``sdnet@no_npcr`` leaves the Normal-PCR+ images out), so pairs across experiments
    are the same images. ``shared=True`` draws only from images every (experiment, model,
    method) has.
    """
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    if predictions.empty:
        raise ValueError("the predictions table is empty")
    ids = set(predictions["image_id"])
    if shared:
        groups = predictions.groupby(["experiment", "model", "method"])["image_id"]
        ids = set.intersection(*(set(g) for _, g in groups))
    labels = (predictions[predictions["image_id"].isin(ids)]
              .drop_duplicates("image_id").set_index("image_id")["label"].sort_index())
    rng = np.random.default_rng(seed)
    by_class = {c: list(rng.permutation(group.index.to_numpy()))
                for c, group in labels.groupby(labels, sort=True)}
    chosen: list[str] = []
    while len(chosen) < min(max_images, len(labels)):  # round robin over the classes
        for pool in by_class.values():
            if pool and len(chosen) < max_images:
                chosen.append(str(pool.pop()))
    return sorted(chosen)


def _iter_runs(predictions: pd.DataFrame, views: pd.DataFrame, artifacts_dir: Path,
               progress: bool) -> Iterator[tuple[np.ndarray, torch.nn.Module, np.ndarray, str]]:
    """(row positions, fold model, view images (n, S, S), view name) per trained fold."""
    paths = {(str(i), str(v)): p
             for i, v, p in views[["image_id", "view", "path"]].itertuples(index=False)}
    runs = list(predictions.groupby(list(RUN_KEY), sort=True).indices.items())
    for key, positions in tqdm(runs, desc="folds", disable=not progress, leave=False):
        experiment, model_name, method, repetition, fold = key
        model = load_fold_model(artifacts_dir, experiment, model_name, method, repetition, fold)
        view = str(getattr(model, "checkpoint_extra", {}).get("view", experiment.split("@")[0]))
        ids = predictions["image_id"].to_numpy()[positions]
        missing = [i for i in ids if (str(i), view) not in paths]
        if missing:
            raise ValueError(f"views table has no {view!r} view of image {missing[0]!r} (needed by "
                             f"{artifact_stem(*key)}): run notebook 01 on this cohort")
        images = load_images([paths[(str(i), view)] for i in ids], model.build_args["image_size"])
        yield positions, model, images, view


def oof_cams(predictions: pd.DataFrame, views: pd.DataFrame, artifacts_dir: str | Path,
             target: str = "label", road_percentiles: Sequence[int] | None = None, seed: int = 0,
             progress: bool = False) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Out-of-fold Grad-CAM maps of the rows of a predictions table.

    Parameters
    ----------
    predictions : rows of ``predictions.parquet`` (one per image and trained model); each row's
        map comes from the checkpoint of its own (experiment, model, method, repetition, fold).
    views : ``views.csv`` (``image_id``, ``view``, ``path`` and the boxes
        :data:`cxrlib.views.BOX_COLUMNS`); each checkpoint reads the view it was trained on.
    artifacts_dir : the run's ``artifacts`` folder (holds ``checkpoints/``).
    target : the class each map explains: ``"label"`` (the true class), ``"predicted"`` or a
        class name.
    road_percentiles : when given, also the ROAD score of each map (:func:`road_scores`).
    seed : seeds ROAD's imputation noise.

    Returns
    -------
    rows : the predictions rows (index reset) with ``view``, ``target`` (class explained),
        ``p_target`` (its out-of-fold probability), the box of the original image the view
        shows (:data:`cxrlib.views.BOX_COLUMNS`, from ``views``) and, with ROAD, ``road``.
    images : float32 (N, S, S), the view images the models saw.
    cams : float32 (N, S, S), the maps, in [0, 1].
    """
    rows = predictions.reset_index(drop=True).copy()
    classes = classes_of(rows)
    if target in ("label", "predicted"):
        rows["target"] = rows[target].astype(str)
    elif target in classes:
        rows["target"] = target
    else:
        raise ValueError(f"target must be 'label', 'predicted' or a class of {classes}, "
                         f"got {target!r}")
    rows["p_target"] = [rows.at[i, f"p_{t}"] for i, t in zip(rows.index, rows["target"])]
    rows["view"] = ""
    if road_percentiles is not None:
        rows["road"] = np.nan
    images = cams = None
    runs = _iter_runs(rows, views, Path(artifacts_dir), progress)
    for positions, model, view_images, view in runs:
        if images is None:
            size = view_images.shape[1:]
            images = np.zeros((len(rows),) + size, dtype=np.float32)
            cams = np.zeros_like(images)
        if view_images.shape[1:] != images.shape[1:]:
            raise ValueError(f"models of different input sizes in one call ({images.shape[1:]} and "
                             f"{view_images.shape[1:]}): explain them separately")
        targets = rows["target"].to_numpy()[positions]
        images[positions] = view_images
        cams[positions] = grad_cam(model, view_images, targets)
        rows.loc[positions, "view"] = view
        if road_percentiles is not None:
            rows.loc[positions, "road"] = road_scores(model, view_images, cams[positions], targets,
                                                      road_percentiles, seed=seed)
    if images is None:
        images = cams = np.zeros((0, 1, 1), dtype=np.float32)
    return _with_boxes(rows, views), images, cams


def _with_boxes(rows: pd.DataFrame, views: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with the box of the original image that each row's view shows, read from the
    views table (:data:`cxrlib.views.BOX_COLUMNS`, written by notebook 01)."""
    missing = [c for c in BOX_COLUMNS if c not in views.columns]
    if missing:
        raise ValueError(f"the views table lacks the crop boxes {missing}: it was written before "
                         "notebook 01 kept them; run notebook 01 again")
    boxes = views.assign(image_id=views["image_id"].astype(str)).drop_duplicates(
        ["image_id", "view"]).set_index(["image_id", "view"])[list(BOX_COLUMNS)]
    keys = pd.MultiIndex.from_arrays([rows["image_id"].astype(str), rows["view"].astype(str)])
    found = boxes.reindex(keys)
    return rows.assign(**{c: found[c].to_numpy() for c in BOX_COLUMNS})


def row_box(rec) -> Box:
    """The box (:data:`cxrlib.views.BOX_COLUMNS`) of a row of :func:`oof_cams`' table."""
    return tuple(int(rec[c]) for c in BOX_COLUMNS)


def score_cams(rows: pd.DataFrame, cams: np.ndarray, manifest: pd.DataFrame, masks_dir: str | Path,
               data_root: str | Path, dilation: float = 0.02) -> pd.DataFrame:
    """Localisation scores of out-of-fold CAMs in the original image's frame.

    Parameters
    ----------
    rows, cams : what :func:`oof_cams` returns (``rows`` needs ``image_id`` and the view's box,
        :data:`cxrlib.views.BOX_COLUMNS`).
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


def _paired_outside(scores: pd.DataFrame, a: str, b: str,
                    beyond_chance: bool = False) -> pd.DataFrame:
    """Per image (index), the CAM mass outside the lungs in experiments ``a`` and ``b`` (columns),
    images without a map in either dropped."""
    keys = [c for c in ("model", "method") if c in scores.columns]
    models = scores[scores["experiment"].isin([a, b])].groupby("experiment")[keys].nunique()
    if keys and (models > 1).any(axis=None):
        raise ValueError(f"more than one model or method per experiment in the scores of {a!r} and "
                         f"{b!r}: select one (experiment, model, method) each before comparing")
    outside = 1 - scores["lung_energy"]
    if beyond_chance:
        outside = outside - (1 - scores["lung_area"])
    outside = scores.assign(outside=outside).pivot_table(
        index="image_id", columns="experiment", values="outside", aggfunc="mean")
    for name in (a, b):
        if name not in outside.columns:
            raise ValueError(f"experiment {name!r} is not in the scores "
                             f"(have {list(outside.columns)})")
    return outside[[a, b]].dropna()


def compare_outside_energy(scores: pd.DataFrame, a: str, b: str,
                           beyond_chance: bool = False) -> dict:
    """Is the CAM mass outside the lungs higher in experiment ``a`` than in ``b``?

    Pairs the images scored in both experiments (same image, its own out-of-fold model in each)
    and tests the paired differences ``outside_a - outside_b`` with the one-sided Wilcoxon
    signed-rank test (``scipy.stats.wilcoxon``, alternative ``greater``); images whose map is zero
    in either experiment are dropped.

    With ``beyond_chance=True`` the outside mass is taken beyond what a uniform map would put
    there (``(1 - lung_energy) - (1 - lung_area)``), so that a view that simply shows more
    background (``exp1``) is not counted as looking at it more.

    Returns
    -------
    dict with ``n_pairs``, ``outside_a`` / ``outside_b`` (means), ``mean_difference``,
    ``share_a_higher`` (fraction of pairs with a > b), ``statistic`` and ``p_value``.
    """
    from scipy.stats import wilcoxon

    pairs = _paired_outside(scores, a, b, beyond_chance)
    if len(pairs) < 2:
        raise ValueError(f"only {len(pairs)} image(s) scored in both {a} and {b}: need at least 2")
    diff = pairs[a] - pairs[b]
    test = wilcoxon(diff, alternative="greater") if (diff != 0).any() else None
    return {"n_pairs": int(len(pairs)), "outside_a": float(pairs[a].mean()),
            "outside_b": float(pairs[b].mean()), "mean_difference": float(diff.mean()),
            "share_a_higher": float((diff > 0).mean()),
            "statistic": float(test.statistic) if test is not None else float("nan"),
            "p_value": float(test.pvalue) if test is not None else 1.0}


def compare_cohorts(scores_x: pd.DataFrame, scores_y: pd.DataFrame, a: str = "exp1",
                    b: str = "exp3", beyond_chance: bool = False) -> dict:
    """Is the gap ``outside_a - outside_b`` (CAM mass outside the lungs, per image) larger in
    cohort x (e.g. shortcut planted) than in cohort y (e.g. its shortcut-free twin)?

    The per-image paired differences of each cohort (:func:`score_cams` tables) are compared with
    the one-sided Mann-Whitney U test (``scipy.stats.mannwhitneyu``, alternative ``greater``):
    the images of two cohorts are different images, so the test is unpaired. ``beyond_chance``
    as in :func:`compare_outside_energy`.

    Returns
    -------
    dict with ``n_x``, ``n_y``, ``gap_x``, ``gap_y`` (mean differences), ``statistic`` and
    ``p_value``.
    """
    from scipy.stats import mannwhitneyu

    dx, dy = (pairs[a] - pairs[b] for pairs in (_paired_outside(scores_x, a, b, beyond_chance),
                                                 _paired_outside(scores_y, a, b, beyond_chance)))
    if len(dx) < 2 or len(dy) < 2:
        raise ValueError(f"need at least 2 images scored in both {a} and {b} in each cohort, "
                         f"got {len(dx)} and {len(dy)}")
    test = mannwhitneyu(dx, dy, alternative="greater")
    return {"n_x": int(len(dx)), "n_y": int(len(dy)), "gap_x": float(dx.mean()),
            "gap_y": float(dy.mean()), "statistic": float(test.statistic),
            "p_value": float(test.pvalue)}


#: Columns of notebook 06's ``cam_scores.csv`` that must agree before two cohorts' maps are
#: compared: how the maps were made and scored. (That the two runs share profile, seed and preset
#: and that the knobs differ is checked on the runs' stamps,
#: :func:`cxrlib.study.shortcut_twin_run`.)
SCORING_SETTINGS = ("cam_target", "lung_dilation")


def twin_mismatch(planted: pd.DataFrame, clean: pd.DataFrame, a: str = "exp1",
                  b: str = "exp3") -> str | None:
    """Why two cohorts' :func:`score_cams` tables (with the :data:`SCORING_SETTINGS` columns that
    notebook 06 adds) cannot be compared by :func:`shortcut_comparison`, or None when they can:
    every setting must be the same in both, and both must have scored experiments ``a`` and ``b``.
    """
    def single(scores, column):
        values = scores[column].dropna().unique() if column in scores.columns else []
        return values[0] if len(values) == 1 else None

    for column in SCORING_SETTINGS:
        here, there = single(planted, column), single(clean, column)
        if here is None or there is None or str(here) != str(there):
            return f"`{column}` differs or is missing ({here} vs {there})"
    for name, scores in (("planted", planted), ("clean", clean)):
        missing = {a, b} - set(scores["experiment"])
        if missing:
            return f"the {name} cohort has no scores of {sorted(missing)}"
    return None


def claim_answer(p_value: float, difference: float, alpha: float = 0.05) -> str:
    """``"yes"`` when a one-sided test of ``difference > 0`` rejects at ``alpha`` and the
    observed difference is positive, else ``"no"``: how notebook 06 answers seed 001's claim."""
    return "yes" if p_value < alpha and difference > 0 else "no"


def shortcut_comparison(planted: pd.DataFrame, clean: pd.DataFrame, a: str = "exp1",
                        b: str = "exp3") -> pd.DataFrame:
    """Seed 001's claim on a cohort with the shortcut planted and on its shortcut-free twin.

    Parameters
    ----------
    planted, clean : :func:`score_cams` tables of the two cohorts (one model per experiment).
    a, b : the experiments compared (``a`` expected to look outside the lungs more).

    Returns
    -------
    DataFrame, one row per measure (``outside_energy``, and ``outside_energy_beyond_chance``:
    beyond what a uniform map would put outside) with, for ``<c>`` in ``planted`` and ``clean``:
    ``n_<c>`` (paired images), ``outside_<a>_<c>``, ``outside_<b>_<c>`` (means), ``gap_<c>``
    (mean of ``a - b``) and ``p_<c>`` (one-sided Wilcoxon, :func:`compare_outside_energy`); then
    ``gap_difference`` (``gap_planted - gap_clean``) and ``p_gap`` (one-sided Mann-Whitney U that
    the planted cohort's per-image gaps are larger, :func:`compare_cohorts`).
    """
    rows = []
    for measure, beyond in (("outside_energy", False), ("outside_energy_beyond_chance", True)):
        row: dict = {"measure": measure}
        for name, scores in (("planted", planted), ("clean", clean)):
            within = compare_outside_energy(scores, a, b, beyond_chance=beyond)
            row.update({f"n_{name}": within["n_pairs"], f"outside_{a}_{name}": within["outside_a"],
                        f"outside_{b}_{name}": within["outside_b"],
                        f"gap_{name}": within["mean_difference"], f"p_{name}": within["p_value"]})
        between = compare_cohorts(planted, clean, a, b, beyond_chance=beyond)
        row.update({"gap_difference": between["gap_x"] - between["gap_y"],
                    "p_gap": between["p_value"]})
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Figures and the viewer


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A CAM as a jet heat map over a gray image
    (``pytorch_grad_cam.utils.image.show_cam_on_image``).

    Parameters
    ----------
    image : float (H, W) in [0, 1].
    cam : float (H, W) in [0, 1].
    alpha : opacity of the heat map in [0, 1].

    Returns
    -------
    uint8 (H, W, 3) RGB.
    """
    image = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    cam = np.clip(np.asarray(cam, dtype=np.float32), 0, 1)
    if image.shape != cam.shape or image.ndim != 2:
        raise ValueError(f"image {image.shape} and cam {cam.shape} must be 2-D arrays of one shape")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = np.repeat(image[..., None], 3, axis=2)
    if alpha == 0:
        return np.round(rgb * 255).astype(np.uint8)
    return show_cam_on_image(rgb, cam, use_rgb=True, image_weight=1.0 - alpha)


def plot_cam_grid(images: np.ndarray, cams: np.ndarray | None, titles=None, row_labels=None,
                  alpha: float = 0.5, title: str = ""):
    """A grid of CAM overlays.

    Parameters
    ----------
    images : float (R, C, S, S) in [0, 1]; a NaN-filled panel is left blank.
    cams : float (R, C, S, S) in [0, 1], or None to show the images alone.
    titles : (R, C) panel titles, optional.
    row_labels : (R,) labels written left of each row, optional.

    Returns a matplotlib figure.
    """
    import matplotlib.pyplot as plt

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (rows, columns, S, S), got shape {images.shape}")
    n_rows, n_cols = images.shape[:2]
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False, figsize=(2.1 * n_cols, 2.2 * n_rows),
                             layout="constrained")
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if np.isnan(images[r, c]).all():
                ax.set_axis_off()
                continue
            if cams is None or np.isnan(cams[r, c]).all():
                ax.imshow(images[r, c], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(cam_overlay(images[r, c], cams[r, c], alpha))
            if titles is not None and titles[r][c]:
                ax.set_title(titles[r][c], fontsize=7)
        if row_labels is not None:
            axes[r, 0].set_ylabel(str(row_labels[r]), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_cam_table(rows: pd.DataFrame, images: np.ndarray, cams: np.ndarray, row: str, column: str,
                   row_order: Sequence | None = None, column_order: Sequence | None = None,
                   image_row: bool = False, alpha: float = 0.5, title: str = ""):
    """CAM overlays of :func:`oof_cams` output laid out by two columns of ``rows``.

    Parameters
    ----------
    rows, images, cams : what :func:`oof_cams` returns (N rows, (N, S, S) arrays).
    row, column : columns of ``rows`` that place a map (e.g. ``experiment`` x ``label``); the
        first map of each cell is shown, a cell without one stays blank.
    row_order, column_order : the values shown, in order (default: sorted values present).
    image_row : add a first row with the images of the first grid row without their maps
        (seed 001 Fig. 1 shows the images above their maps).

    Each panel is titled ``true -> predicted, p(target)``. Returns a matplotlib figure.
    """
    if len(rows) != len(images) or images.shape != cams.shape:
        raise ValueError(f"{len(rows)} rows, images {images.shape} and cams {cams.shape} "
                         "do not match")
    if len(rows) == 0:
        raise ValueError("no maps to show")
    row_order = list(row_order) if row_order is not None else sorted(rows[row].unique())
    column_order = list(column_order) if column_order is not None else sorted(rows[column].unique())
    size = images.shape[1:]
    grid_images = np.full((len(row_order), len(column_order)) + size, np.nan, dtype=np.float32)
    grid_cams = grid_images.copy()
    titles = [["" for _ in column_order] for _ in row_order]
    position = rows.reset_index(drop=True).groupby([row, column], sort=False).head(1)
    for i, rec in position.iterrows():
        if rec[row] not in row_order or rec[column] not in column_order:
            continue
        r, c = row_order.index(rec[row]), column_order.index(rec[column])
        grid_images[r, c], grid_cams[r, c] = images[i], cams[i]
        titles[r][c] = (f"{rec['label']} \u2192 {rec['predicted']}\n"
                        f"p({rec['target']}) = {rec['p_target']:.2f}")
    labels = [str(v) for v in row_order]
    if image_row:
        grid_images = np.concatenate([grid_images[:1], grid_images])
        grid_cams = np.concatenate([np.full_like(grid_cams[:1], np.nan), grid_cams])
        titles = [[str(v) for v in column_order]] + titles
        labels = [f"image ({row_order[0]})"] + labels
    return plot_cam_grid(grid_images, grid_cams, titles, labels, alpha=alpha, title=title)


def confident_outcomes(predictions: pd.DataFrame, positive: str = "covid19") -> pd.DataFrame:
    """The most confident true positive, true negative, false positive and false negative of a
    binary predictions table (those that occur), in that order, with a column ``outcome``."""
    classes = classes_of(predictions)
    if len(classes) != 2 or positive not in classes:
        raise ValueError(f"confident_outcomes needs a binary table with class {positive!r}, "
                         f"got classes {classes}")
    rows = predictions.copy()
    correct = np.where(rows["predicted"] == rows["label"], "true", "false")
    side = np.where(rows["predicted"] == positive, "positive", "negative")
    rows["outcome"] = [f"{c} {s}" for c, s in zip(correct, side)]
    rows["confidence"] = rows[[f"p_{c}" for c in classes]].max(axis=1)
    best = rows.sort_values("confidence", ascending=False, kind="stable").drop_duplicates("outcome")
    order = ["true positive", "true negative", "false positive", "false negative"]
    best["outcome"] = pd.Categorical(best["outcome"], categories=order, ordered=True)
    return best.sort_values("outcome").reset_index(drop=True)


def plot_why(rows: pd.DataFrame, images: np.ndarray, why_positive: np.ndarray,
             why_negative: np.ndarray, positive: str = "covid19", negative: str = "control",
             alpha: float = 0.5, title: str = ""):
    """Seed 000 Figs. 5-7: per image (row) the view, the map of the positive class ("why
    positive") and the map of the negative class (the counterfactual "why negative").

    ``rows`` (with ``outcome``, ``image_id``, ``label``, ``predicted`` and the ``p_*`` columns),
    ``images`` and both maps (N, S, S) in the same order. Returns a matplotlib figure.
    """
    if not len(rows) == len(images) == len(why_positive) == len(why_negative):
        raise ValueError(f"{len(rows)} rows, {len(images)} images and {len(why_positive)} / "
                         f"{len(why_negative)} maps do not match")
    blank = np.full_like(images, np.nan)
    titles = [[f"{r['image_id']}\n{r['label']} \u2192 {r['predicted']}",
               f"why positive\np({positive}) = {r[f'p_{positive}']:.2f}",
               f"why negative\np({negative}) = {r[f'p_{negative}']:.2f}"]
              for _, r in rows.iterrows()]
    return plot_cam_grid(np.stack([images] * 3, axis=1),
                         np.stack([blank, why_positive, why_negative], axis=1), titles,
                         [str(o) for o in rows["outcome"]], alpha=alpha, title=title)


def cam_viewer(predictions: pd.DataFrame, views: pd.DataFrame, manifest: pd.DataFrame,
               artifacts_dir: str | Path, data_root: str | Path, width: int = 260):
    """ipywidgets viewer: choose an image, an experiment, the target class and the overlay opacity.

    Three panels: the original image with its true lung (green) and lesion (red) masks
    (:func:`cxrlib.widgets.overlay_rgb`); the out-of-fold Grad-CAM mapped back onto the original
    image (:func:`cam_to_image_frame`; the box is recomputed from ``artifacts/lung_masks``, where
    the scores are computed); the view the model saw with the map over it.

    Returns an ``ipywidgets.VBox``.
    """
    import ipywidgets as W

    from cxrlib.widgets import _png_bytes, overlay_rgb

    root = Path(data_root)
    info = image_info(manifest)
    image_ids = sorted(set(predictions["image_id"]))
    classes = classes_of(predictions)
    pick = W.Dropdown(options=image_ids, description="image")
    experiment = W.Dropdown(options=sorted(predictions["experiment"].unique()),
                            description="experiment")
    target = W.Dropdown(options=classes, description="target class")
    opacity = W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="opacity")
    panels = [W.Image(format="png", width=width) for _ in range(3)]
    text = W.HTML()
    cache: dict = {}

    def optional_mask(path) -> np.ndarray | None:
        return read_mask(path) if path is not None and Path(path).is_file() else None

    def redraw(*_):
        rows = predictions[(predictions["image_id"] == pick.value)
                           & (predictions["experiment"] == experiment.value)].head(1)
        if rows.empty:
            text.value = "<i>this image has no out-of-fold prediction in this experiment</i>"
            return
        key = (pick.value, experiment.value, target.value)
        if key not in cache:
            cache[key] = oof_cams(rows, views, artifacts_dir, target=target.value)
        scored, view_images, cams = cache[key]
        rec, m = scored.iloc[0], info.loc[pick.value]
        image = read_image(root / m["path"])
        lungs, lesion = (optional_mask(root / m[c]) if isinstance(m.get(c), str) and m.get(c)
                         else None for c in ("lung_mask_path", "lesion_mask_path"))
        panels[0].value = _png_bytes(overlay_rgb(image, lungs, lesion, alpha=0.3))
        framed = cam_to_image_frame(cams[0], row_box(rec), image.shape)
        panels[1].value = _png_bytes(cam_overlay(image, framed, opacity.value))
        panels[2].value = _png_bytes(cam_overlay(view_images[0], cams[0], opacity.value))
        text.value = (f"<b>{rec['image_id']}</b> · true <b>{rec['label']}</b> · predicted "
                      f"<b>{rec['predicted']}</b> · p({target.value}) = {rec['p_target']:.2f} · "
                      f"view {rec['view']}, fold {rec['fold']}")

    for w in (pick, experiment, target, opacity):
        w.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([pick, experiment]), W.HBox([target, opacity]), text,
                   W.HBox(panels)])
