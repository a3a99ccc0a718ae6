"""Figures of CAMs (overlays, grids, seed 001's Fig. 1 and seed 000's "why positive / why
negative") and the interactive viewer."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from pytorch_grad_cam.utils.image import show_cam_on_image

from cxrlib.data.images import read_image, read_mask
from cxrlib.data.manifest import image_info
from cxrlib.train.predictions import classes_of

from .frames import cam_to_image_frame, row_box
from .oof import oof_cams

__all__ = ["cam_overlay", "plot_cam_grid", "plot_cam_table", "confident_outcomes", "plot_why",
           "cam_viewer"]


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
    (:func:`cxrlib.data.images.overlay_rgb`); the out-of-fold Grad-CAM mapped back onto the
    original image (:func:`cam_to_image_frame`; the box is recomputed from
    ``artifacts/lung_masks``, where the scores are computed); the view the model saw with the map
    over it.

    Returns an ``ipywidgets.VBox``.
    """
    import ipywidgets as W

    from cxrlib.data.images import overlay_rgb, png_bytes

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
        panels[0].value = png_bytes(overlay_rgb(image, lungs, lesion, alpha=0.3))
        framed = cam_to_image_frame(cams[0], row_box(rec), image.shape)
        panels[1].value = png_bytes(cam_overlay(image, framed, opacity.value))
        panels[2].value = png_bytes(cam_overlay(view_images[0], cams[0], opacity.value))
        text.value = (f"<b>{rec['image_id']}</b> · true <b>{rec['label']}</b> · predicted "
                      f"<b>{rec['predicted']}</b> · p({target.value}) = {rec['p_target']:.2f} · "
                      f"view {rec['view']}, fold {rec['fold']}")

    for w in (pick, experiment, target, opacity):
        w.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([pick, experiment]), W.HBox([target, opacity]), text,
                   W.HBox(panels)])
