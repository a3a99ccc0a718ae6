"""Out-of-fold Grad-CAM maps for a predictions table: each image is explained only by the
checkpoint of the fold in which it was a test image, on the view that checkpoint was trained on;
:func:`stratified_image_ids` chooses the images."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cxrlib.models.classifiers import load_classifier
from cxrlib.preprocess.views import BOX_COLUMNS
from cxrlib.train.predictions import RUN_KEY, artifact_stem, classes_of
from cxrlib.train.training import load_images

from .gradcam import grad_cam, road_scores

__all__ = ["load_fold_model", "stratified_image_ids", "oof_cams"]


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


def _with_boxes(rows: pd.DataFrame, views: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with the box of the original image that each row's view shows, read from the
    views table (:data:`cxrlib.preprocess.views.BOX_COLUMNS`, written by notebook 01)."""
    missing = [c for c in BOX_COLUMNS if c not in views.columns]
    if missing:
        raise ValueError(f"the views table lacks the crop boxes {missing}: it was written before "
                         "notebook 01 kept them; run notebook 01 again")
    boxes = views.assign(image_id=views["image_id"].astype(str)).drop_duplicates(
        ["image_id", "view"]).set_index(["image_id", "view"])[list(BOX_COLUMNS)]
    keys = pd.MultiIndex.from_arrays([rows["image_id"].astype(str), rows["view"].astype(str)])
    found = boxes.reindex(keys)
    return rows.assign(**{c: found[c].to_numpy() for c in BOX_COLUMNS})


def oof_cams(predictions: pd.DataFrame, views: pd.DataFrame, artifacts_dir: str | Path,
             target: str = "label", road_percentiles: Sequence[int] | None = None, seed: int = 0,
             progress: bool = False) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Out-of-fold Grad-CAM maps of the rows of a predictions table.

    Parameters
    ----------
    predictions : rows of ``predictions.parquet`` (one per image and trained model); each row's
        map comes from the checkpoint of its own (experiment, model, method, repetition, fold).
    views : ``views.csv`` (``image_id``, ``view``, ``path`` and the boxes
        :data:`cxrlib.preprocess.views.BOX_COLUMNS`); each checkpoint reads the view it was trained
        on.
    artifacts_dir : the run's ``artifacts`` folder (holds ``checkpoints/``).
    target : the class each map explains: ``"label"`` (the true class), ``"predicted"`` or a
        class name.
    road_percentiles : when given, also the ROAD score of each map (:func:`road_scores`).
    seed : seeds ROAD's imputation noise.

    Returns
    -------
    rows : the predictions rows (index reset) with ``view``, ``target`` (class explained),
        ``p_target`` (its out-of-fold probability), the box of the original image the view
        shows (:data:`cxrlib.preprocess.views.BOX_COLUMNS`, from ``views``) and, with ROAD,
        ``road``.
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
