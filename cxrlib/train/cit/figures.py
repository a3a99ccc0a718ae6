"""Figures of notebook 02: seed 000's Fig. 4 with difference images (:func:`plot_transforms`) and
the loss curves of :func:`cxrlib.train.cit.crossval.read_cit_history` (:func:`plot_cit_history`).
matplotlib is imported when a figure is drawn."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["plot_transforms", "plot_cit_history"]


def plot_transforms(images: np.ndarray, transformed: np.ndarray, titles: Sequence[str]):
    """Seed 000's Fig. 4 with difference images: one row per image - original, negative and
    positive transform, and each transform minus the original.

    Parameters
    ----------
    images : (N, S, S) originals; transformed : (2, N, S, S) from :func:`transform_images`
        (index 0 ``G_N``, 1 ``G_P``); titles : (N,) row labels.

    The originals are shown on [0, 1], each transform on its own gray scale (1st to 99th
    percentile, since an early generator may shift the intensities); the differences use a
    symmetric blue-red scale per row. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    if transformed.shape[:2] != (2, len(images)) or len(titles) != len(images):
        raise ValueError(f"expected (2, {len(images)}, S, S) transforms and {len(images)} titles, "
                         f"got {transformed.shape} and {len(titles)}")
    fig, axes = plt.subplots(len(images), 5, figsize=(11, 2.4 * len(images)), squeeze=False)
    for row, (ax, title) in enumerate(zip(axes, titles)):
        diffs = transformed[:, row] - images[row]
        limit = float(np.abs(diffs).max()) or 1.0
        def own_range(image):
            low, high = np.percentile(image, [1, 99])
            return float(low), float(max(high, low + 1e-6))

        panels = [(images[row], "original", "gray", 0, 1),
                  (transformed[0, row], "negative transform G_N", "gray",
                   *own_range(transformed[0, row])),
                  (transformed[1, row], "positive transform G_P", "gray",
                   *own_range(transformed[1, row])),
                  (diffs[0], "G_N x - x", "RdBu_r", -limit, limit),
                  (diffs[1], "G_P x - x", "RdBu_r", -limit, limit)]
        for a, (image, name, cmap, low, high) in zip(ax, panels):
            a.imshow(image, cmap=cmap, vmin=low, vmax=high)
            a.set_title(name, fontsize=8)
            a.axis("off")
        ax[0].text(-0.08, 0.5, title, transform=ax[0].transAxes, rotation=90, va="center",
                   ha="right", fontsize=9)
    fig.tight_layout()
    return fig


def plot_cit_history(history: pd.DataFrame, title: str = ""):
    """Loss curves of :func:`read_cit_history`: generator loss terms (training) and the fused
    validation loss per epoch, one line per (experiment, lambda, fold). Returns the figure."""
    import matplotlib.pyplot as plt

    panels = [("train_pixel", "pixel MSE (train)"), ("train_perceptual", "perceptual MSE (train)"),
              ("train_ce", "classifier CE (train)"), ("valid_loss", "fused CE (validation)")]
    if history.empty:
        raise ValueError("no CiT training history to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.0))
    for (key, run), colour in zip(history.groupby(["experiment", "lam", "repetition", "fold"]),
                                  plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10):
        label = f"{key[0]} λ={key[1]:g} f{key[3]}"
        for ax, (column, name) in zip(axes, panels):
            ax.plot(run["epoch"] + 1, run[column], "o-", color=colour, label=label, markersize=3)
            ax.set(title=name, xlabel="epoch")
    axes[0].set_yscale("log")
    axes[-1].legend(fontsize=6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
