"""Grad-CAM maps of a classifier on its ``cam_layer`` (the ``grad-cam`` package) and the ROAD
faithfulness of such maps."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import (ClassifierOutputSoftmaxTarget,
                                                  ClassifierOutputTarget)

from cxrlib.models.classifiers import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["to_input_tensor", "grad_cam", "road_scores"]


def to_input_tensor(images: np.ndarray) -> torch.Tensor:
    """Prepared gray images (N, S, S) in [0, 1] -> the network input (N, 3, S, S): repeated on
    three channels and ImageNet-normalised, as :class:`cxrlib.train.training.ClassifierDataset`
    does."""
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
