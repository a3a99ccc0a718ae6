"""Adapting the synthetic-cohort lung U-Net to a real corpus from the corpus's images alone.

A U-Net trained on synthetic radiographs (:mod:`cxrlib.preprocess.synthetic_unet`) meets real ones
with other grey-level statistics, texture and anatomy. Without a single target mask, two steps
close part of the gap:

1. **Batch-norm statistics re-estimated on the target images** (AdaBN, Li et al. 2016): every
   batch-normalisation layer's running mean and variance are recomputed over the corpus's images,
   the weights untouched. (A U-Net without batch normalisation, the ``paper`` profile's, skips it.)
2. **Self-training on plausible pseudo-masks**: the adapted network segments the corpus; the masks
   whose anatomical plausibility (:func:`cxrlib.preprocess.lung_plausibility.plausibility`) is at
   least ``min_plausibility`` become training targets, and the network is fine-tuned on them for a
   few epochs with the same domain randomisation as its synthetic training. Masks the QC would
   doubt never become targets, so the network is not taught its own failures. With ``rounds``
   above 1 this repeats, each round on the pseudo-masks of the network the last round left
   (iterative self-training, as in Zou et al. 2018's class-balanced self-training and Xie et
   al. 2020's noisy student): better masks make better targets, and an image whose mask was
   implausible at first can become one.

Only images go in: :func:`adapt_unet` takes arrays of pixels, and nothing here reads a file. The
report says, per image, the plausibility of its mask before and after, and whether it was a target.
"""
from __future__ import annotations

import copy
import textwrap
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from cxrlib.gpu import DeviceSettings
from cxrlib.data.images import read_image
from cxrlib.preprocess.lung_plausibility import MIN_LUNG_FRACTION, plausibility
from cxrlib.models.unet import UNet, UNetEnsemble
from cxrlib.profiles import Profile, get_profile
from cxrlib.models.batchnorm import precise_batchnorm
from cxrlib.preprocess.segmentation import (
    epochs_for_min_steps, postprocess_mask, predict_lung_probability, prepare_unet_input,
    segment_images, train_unet,
)

__all__ = ["reestimate_batchnorm", "pseudo_masks", "adapt_unet", "Adaptation",
           "ManifestImages", "adaptation_settings", "adapt_unet_to_manifest", "plausibility_figure",
           "most_changed", "masks_before_after_figure", "adaptation_text",
           "SELECTION_LUNG_FRACTION"]

#: Characters per line of a panel title in :func:`masks_before_after_figure` (a 3.4-inch panel
#: at 8 pt holds about 40).
TITLE_WIDTH = 34

#: The lung-fraction floor used when scoring pseudo-masks for selection: the QC's default, the
#: lowest share under which no radiologist or synthetic mask falls (seed 003's 30% would reject
#: true lungs, see :mod:`cxrlib.preprocess.lung_plausibility`).
SELECTION_LUNG_FRACTION = MIN_LUNG_FRACTION


def reestimate_batchnorm(model: UNet, images: np.ndarray, batch_size: int = 32) -> UNet:
    """A copy of ``model`` whose batch-norm running statistics are those of ``images``.

    ``images``: float32 (N, S, S) prepared by
    :func:`cxrlib.preprocess.segmentation.prepare_unet_input`. Each layer's statistics are the
    exact average over all batches (:func:`cxrlib.models.batchnorm.precise_batchnorm`); the weights
    are unchanged. A model without batch normalisation is returned as an unchanged copy.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, S, S) array, got shape {images.shape}")
    adapted = copy.deepcopy(model).cpu().eval()
    precise_batchnorm(adapted, [torch.from_numpy(images[start:start + batch_size, None])
                                for start in range(0, len(images), batch_size)])
    return adapted.eval()


def pseudo_masks(model: UNet, images: np.ndarray,
                 min_lung_fraction: float = SELECTION_LUNG_FRACTION,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Post-processed masks of prepared images and their plausibility.

    ``images``: float32 (N, S, S) prepared inputs. Returns ``masks`` bool (N, S, S) and
    ``scores`` float (N,) (``qc_plausibility`` of each mask at the network's resolution).
    """
    probs = predict_lung_probability(model, images)
    masks = np.stack([postprocess_mask(p) for p in probs])
    scores = np.array([plausibility(m, min_lung_fraction=min_lung_fraction)["qc_plausibility"]
                       for m in masks])
    return masks, scores


@dataclass
class Adaptation:
    """What :func:`adapt_unet` returns.

    Attributes
    ----------
    model : the adapted U-Net (CPU, eval mode).
    report : one row per image given: ``index`` (position in the input list), ``used``
        (in the adaptation sample), ``plausibility_before`` (synthetic U-Net),
        ``plausibility_batchnorm`` (after step 1), ``target`` (a pseudo-mask used in step 2),
        ``target_rounds`` (in how many self-training rounds it was one),
        ``plausibility_after`` (adapted U-Net); plausibility is NaN for images outside the sample.
    params : settings, counts and seconds.
    """

    model: UNet
    report: pd.DataFrame
    params: dict = field(default_factory=dict)


def adapt_unet(model: UNet, images: list[np.ndarray], size: int, epochs: int = 3,
               min_steps: int = 0, min_plausibility: float = 0.9, max_images: int = 600,
               rounds: int = 1, batch_size: int = 8,
               lr: float = 3e-4, domain_randomisation: tuple = (), loss: str = "bce",
               seed: int = 0,
               progress: bool = False, gpu: DeviceSettings | None = None) -> Adaptation:
    """Adapt a lung U-Net to the images of a corpus, without any of its masks.

    Parameters
    ----------
    model : the U-Net to adapt (left unchanged; the result is a copy), or a
        :class:`cxrlib.models.unet.UNetEnsemble`: the batch-norm statistics of every member are
        re-estimated, the pseudo-masks are the ensemble's, and each member is self-trained on
        them (member ``k`` of ``n`` with seed ``seed + r * n + k`` in round ``r``, from 0).
    images : the corpus's radiographs, float arrays (H_i, W_i) in [0, 1]; pixels only.
    size : the network's input side in pixels.
    epochs : self-training epochs of each round (0: batch-norm re-estimation only).
    min_steps : fewest self-training optimiser steps of each round: with few targets the epochs
        are raised to reach them (:func:`cxrlib.preprocess.segmentation.epochs_for_min_steps`);
        not when ``epochs`` is 0.
    min_plausibility : lowest plausibility of a pseudo-mask kept as a target.
    max_images : most images used (a random sample, drawn with ``seed``); the rest are only
        reported.
    rounds : self-training rounds; each takes its targets from the pseudo-masks of the network
        the round before left (the first from the batch-norm-adapted one). A round with fewer
        than 2 targets ends the self-training.
    batch_size, lr : self-training batch and peak learning rate (one-cycle schedule).
    domain_randomisation : changes drawn on the targets
        (:mod:`cxrlib.preprocess.domain_randomisation`).
    loss : the self-training loss (:func:`cxrlib.preprocess.segmentation.train_unet`).
    seed : sampling, shuffling and augmentation.
    progress : fastai's progress bars.
    gpu : how the self-training uses a CUDA device (:class:`cxrlib.gpu.DeviceSettings`; None:
        all off).
    """
    if len(images) == 0:
        raise ValueError("no images to adapt the U-Net to")
    if not 0.0 <= min_plausibility <= 1.0:
        raise ValueError(f"min_plausibility must be in [0, 1], got {min_plausibility!r}")
    if int(rounds) < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds!r}")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    n = len(images)
    used = np.sort(rng.choice(n, size=min(n, int(max_images)), replace=False))
    prepared = np.stack([prepare_unet_input(images[i], size) for i in used])
    _, before = pseudo_masks(model, prepared)
    adapted = reestimate_batchnorm(model, prepared)
    masks, after_bn = pseudo_masks(adapted, prepared)
    after, target_rounds, n_targets, round_epochs = after_bn, np.zeros(len(used), int), [], []
    for r in range(int(rounds) if epochs > 0 else 0):
        target = after >= min_plausibility
        if target.sum() < 2:
            break
        keep = np.flatnonzero(target)
        round_batch = min(int(batch_size), len(keep))
        round_epochs.append(int(epochs_for_min_steps(epochs, len(keep), round_batch, min_steps)))
        # an ensemble's members each learn from the ensemble's pseudo-masks (better targets
        # than any member's own), with seeds of their own
        members = adapted.members if isinstance(adapted, UNetEnsemble) else [adapted]
        trained_members = [train_unet(
            prepared[keep], masks[keep], prepared[keep], masks[keep], epochs=round_epochs[-1],
            batch_size=round_batch, lr=lr, augment=True,
            domain_randomisation=domain_randomisation, loss=loss,
            seed=seed + r * len(members) + k, progress=progress, init=member, gpu=gpu)[0]
            for k, member in enumerate(members)]
        adapted = (UNetEnsemble(trained_members) if isinstance(adapted, UNetEnsemble)
                   else trained_members[0])
        target_rounds += target
        n_targets.append(int(target.sum()))
        masks, after = pseudo_masks(adapted, prepared)
    report = pd.DataFrame({"index": np.arange(n), "used": False, "plausibility_before": np.nan,
                           "plausibility_batchnorm": np.nan, "target": False,
                           "target_rounds": 0, "plausibility_after": np.nan})
    report.loc[used, "used"] = True
    report.loc[used, "plausibility_before"] = before
    report.loc[used, "plausibility_batchnorm"] = after_bn
    report.loc[used, "target"] = target_rounds > 0
    report.loc[used, "target_rounds"] = target_rounds
    report.loc[used, "plausibility_after"] = after
    params = {"n_images": n, "n_used": int(len(used)),
              "n_targets": n_targets[0] if n_targets else 0,
              "rounds": len(n_targets), "n_targets_per_round": n_targets,
              "epochs_per_round": round_epochs,
              "epochs": round_epochs[0] if round_epochs else 0, "min_steps": int(min_steps),
              "min_plausibility": float(min_plausibility),
              "lr": float(lr), "batch_norm_layers": _n_batchnorm(model),
              "domain_randomisation": list(domain_randomisation), "loss": loss,
              "seconds": round(time.perf_counter() - start, 1)}
    return Adaptation(model=adapted.eval(), report=report, params=params)


def _n_batchnorm(model: UNet) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


class ManifestImages:
    """The radiographs of a manifest as a lazy sequence: item ``i`` is the image of row ``i``
    (:func:`cxrlib.data.images.read_image` of ``data_root / path``), read when asked for.

    Only the ``path`` column is read; a lung mask column is never touched.
    """

    def __init__(self, manifest: pd.DataFrame, data_root):
        from pathlib import Path

        self.paths = [Path(data_root) / p for p in manifest["path"].astype(str)]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return read_image(self.paths[int(i)])


def adaptation_settings(profile: str | Profile) -> dict:
    """The keyword arguments of :func:`adapt_unet` that a profile sets: ``epochs`` =
    ``seg_adapt_epochs``, ``min_steps`` = ``seg_adapt_min_steps``, ``min_plausibility`` =
    ``seg_adapt_min_plausibility``, ``max_images`` = ``seg_adapt_max_images``, ``rounds`` =
    ``seg_adapt_rounds``, ``batch_size`` = ``seg_batch_size``, ``domain_randomisation`` =
    ``seg_domain_randomisation``, ``loss`` = ``seg_loss`` and ``lr`` a tenth of ``seg_lr``
    (fine-tuning, not training)."""
    prof = get_profile(profile)
    return dict(epochs=prof.seg_adapt_epochs, min_steps=prof.seg_adapt_min_steps,
                min_plausibility=prof.seg_adapt_min_plausibility,
                max_images=prof.seg_adapt_max_images, rounds=prof.seg_adapt_rounds,
                batch_size=prof.seg_batch_size,
                lr=prof.seg_lr / 10, domain_randomisation=prof.seg_domain_randomisation,
                loss=prof.seg_loss)


def adapt_unet_to_manifest(model: UNet, size: int, manifest: pd.DataFrame, data_root,
                           profile: str | Profile = "default", seed: int = 0,
                           progress: bool = False) -> Adaptation:
    """:func:`adapt_unet` on a manifest's images (the ``path`` column only) with the profile's
    settings (:func:`adaptation_settings`) and :class:`cxrlib.gpu.DeviceSettings`. The report
    gains the ``image_id`` column."""
    result = adapt_unet(model, ManifestImages(manifest, data_root), size,
                        **adaptation_settings(profile), seed=seed, progress=progress,
                        gpu=DeviceSettings.from_profile(profile))
    result.report.insert(0, "image_id", manifest["image_id"].to_numpy())
    return result


def plausibility_figure(report: pd.DataFrame, min_plausibility: float):
    """Histogram of the pseudo-masks' plausibility before adaptation, after the batch-norm
    step and after self-training (``report`` of :func:`adapt_unet`), with the QC's pass line
    (0.5) and the self-training threshold."""
    import matplotlib.pyplot as plt

    used = report[report["used"]]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bins = np.linspace(0, 1, 21)
    for column, label in (("plausibility_before", "synthetic U-Net"),
                          ("plausibility_batchnorm", "batch-norm statistics re-estimated"),
                          ("plausibility_after", "after self-training")):
        ax.hist(used[column], bins=bins, histtype="step", linewidth=1.8, label=label)
    ax.axvline(0.5, color="k", linestyle=":", label="QC pass (0.5)")
    ax.axvline(min_plausibility, color="grey", linestyle="--",
               label=f"self-training targets (≥ {min_plausibility:g})")
    ax.set_xlabel("plausibility of the predicted lung mask")
    ax.set_ylabel("images")
    ax.set_title(f"Adaptation to the corpus: {len(used)} images")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def most_changed(report: pd.DataFrame, n: int = 6) -> np.ndarray:
    """Positions (in the corpus order of ``report``, :func:`adapt_unet`) of the ``n`` images whose
    mask plausibility changed most with the adaptation (images outside the sample last)."""
    change = (report["plausibility_after"] - report["plausibility_before"]).abs()
    order = change.sort_values(ascending=False, na_position="last", kind="stable").index
    return report.loc[order[:n], "index"].to_numpy()


def masks_before_after_figure(images: list[np.ndarray], titles: list[str], before: UNet,
                              after: UNet, size: int, max_images: int = 6):
    """Each image (float (H, W)) with the lung mask of the synthetic U-Net (``before``, orange)
    and of the adapted one (``after``, cyan) outlined; one panel per image, titled (titles
    wrapped at :data:`TITLE_WIDTH` characters)."""
    import matplotlib.pyplot as plt

    images, titles = list(images)[:max_images], list(titles)[:max_images]
    if not images:
        raise ValueError("no images to show")
    masks_before = segment_images(before, images, size)
    masks_after = segment_images(after, images, size)
    cols = min(3, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, m0, m1, title in zip(axes.ravel(), images, masks_before, masks_after, titles):
        ax.imshow(image, cmap="gray")
        for mask, colour in ((m0, "orange"), (m1, "cyan")):
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.2)
        # long file-stem ids wrap at their hyphens, so that neighbouring titles never overlap
        ax.set_title(textwrap.fill(str(title), TITLE_WIDTH), fontsize=8)
    fig.suptitle("Lung masks before (orange) and after (cyan) adaptation to the corpus")
    fig.tight_layout()
    return fig


def adaptation_text(adaptation: Adaptation) -> str:
    """One paragraph, in Markdown, that says what the adaptation did."""
    p, r = adaptation.params, adaptation.report
    used = r[r["used"]]
    passing = [int((used[c] >= 0.5).sum()) for c in
               ("plausibility_before", "plausibility_batchnorm", "plausibility_after")]
    bn = (f"re-estimated the batch-norm statistics of its {p['batch_norm_layers']} layers on them"
          if p["batch_norm_layers"] else "has no batch normalisation to re-estimate")
    rounds = p.get("rounds", 1 if p["epochs"] else 0)
    if rounds > 1:
        st = (f"then trained it in {rounds} rounds, each on the pseudo-masks of plausibility at "
              f"least {p['min_plausibility']:g} that the network of the round before drew "
              f"({', '.join(map(str, p['n_targets_per_round']))} of them; "
              f"{', '.join(map(str, p['epochs_per_round']))} epoch(s))")
    elif p["epochs"]:
        st = (f"then trained it for {p['epochs']} epoch(s) on the {p['n_targets']} pseudo-masks "
              f"of plausibility at least {p['min_plausibility']:g}")
    else:
        st = "did no self-training (too few plausible pseudo-masks, or no self-training epochs)"
    return (f"**Adaptation to this corpus** (images only, no mask read): the U-Net saw "
            f"{p['n_used']} of the {p['n_images']} images, {bn}, and {st} ({p['seconds']:.0f} s). "
            f"Masks with a plausible shape (plausibility ≥ 0.5, the lung-fraction rule at "
            f"{SELECTION_LUNG_FRACTION:.0%}): {passing[0]} before, {passing[1]} after the "
            f"batch-norm step, {passing[2]} after self-training, of {len(used)}. Per image in "
            "`tables/segmentation_adaptation.csv`.")
