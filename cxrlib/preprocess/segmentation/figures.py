"""Notebook 01's figures: the training curves and the predicted masks of chosen cases."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd

from cxrlib.data.images import read_image, read_mask
from cxrlib.preprocess.views import mask_file_name

__all__ = ["training_curves_figure", "mask_cases_figure"]


def training_curves_figure(history: pd.DataFrame):
    """Figure: training and validation loss (left) and validation Dice (right) per epoch, from
    the ``history`` of :func:`train_unet`. Returns a matplotlib figure."""
    import matplotlib.pyplot as plt

    missing = sorted({"epoch", "train_loss", "valid_loss", "valid_dice"} - set(history.columns))
    if missing:
        raise ValueError(f"history lacks column(s) {missing}: pass SegmenterFit.history")
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
    ax_loss.plot(history["epoch"], history["train_loss"], "o-", label="training (smoothed)")
    ax_loss.plot(history["epoch"], history["valid_loss"], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="binary cross-entropy", title="U-Net loss")
    ax_loss.legend(fontsize=8)
    ax_dice.plot(history["epoch"], history["valid_dice"], "s-", color="C2")
    ax_dice.set(xlabel="epoch", ylabel="Dice (threshold 0.5)", ylim=(0, 1),
                title="Validation Dice, before post-processing")
    for ax in (ax_loss, ax_dice):
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def mask_cases_figure(
    cases: pd.DataFrame,
    masks_dir: str | Path,
    data_root: str | Path,
    caption: str = "dice",
    title: str = "",
    max_rows: int = 12,
):
    """Figure: one row per case - the image, its true lung mask (when the row has a
    ``lung_mask_path``) and the predicted mask of ``masks_dir`` outlined in green on the image
    (no outline when the predicted mask is empty).

    ``cases``: manifest rows (``image_id``, ``path``, optional ``lung_mask_path``) plus the
    column named by ``caption`` (e.g. ``dice`` or ``qc_reason``), shown under the row's id.
    At most ``max_rows`` rows are drawn. Returns a matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if cases.empty:
        raise ValueError("no cases to show")
    cases = cases.head(max_rows)
    root, masks_dir = Path(data_root), Path(masks_dir)
    with_truth = "lung_mask_path" in cases.columns and cases["lung_mask_path"].notna().any()
    columns = ["image", "true mask", "predicted (outline)"] if with_truth else [
        "image", "predicted (outline)"]
    fig, axes = plt.subplots(len(cases), len(columns), squeeze=False,
                             figsize=(2.2 * len(columns), 2.3 * len(cases)),
                             layout="constrained")
    for i, rec in enumerate(cases.to_dict("records")):
        image = read_image(root / rec["path"])
        pred = read_mask(masks_dir / mask_file_name(rec["image_id"]))
        panels = [image]
        if with_truth:
            truth = rec.get("lung_mask_path")
            panels.append(read_mask(root / truth) if isinstance(truth, str) and truth else None)
        panels.append(image)  # the prediction is outlined on it
        for j, (ax, panel) in enumerate(zip(axes[i], panels)):
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=9)
            if panel is None:
                ax.set_facecolor("#eeeeee")
                continue
            ax.imshow(panel, cmap="gray", vmin=0, vmax=1)
            if j == len(panels) - 1 and pred.any():
                ax.contour(pred, levels=[0.5], colors="lime", linewidths=0.8)
        value = rec.get(caption, "")
        value = f"{value:.3f}" if isinstance(value, float) else str(value)
        label = f"{rec['image_id']}\n{caption}: {value}" if value else str(rec["image_id"])
        axes[i, 0].set_ylabel(textwrap.fill(label, 30, replace_whitespace=False), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
