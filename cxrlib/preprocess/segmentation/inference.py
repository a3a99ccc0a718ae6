"""Lung masks from a trained U-Net: probabilities (:func:`predict_lung_probability`), the
reference's post-processing (:func:`postprocess_mask`), masks of images of any size
(:func:`segment_images`), the quality flag of a mask (:func:`lung_qc`), and a whole manifest's
masks written to PNG files with their QC (:func:`segment_manifest`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from cxrlib.data.images import read_image
from cxrlib.data.manifest import data_root_of
from cxrlib.gpu import default_device
from cxrlib.models.unet import UNet
from cxrlib.preprocess.lung_plausibility import MIN_LUNG_FRACTION, QC_COLUMNS, plausibility
from cxrlib.preprocess.views import mask_file_name, resize_image

from .data import prepare_unet_input

__all__ = ["CPU_ACTIVATION_BYTES", "predict_lung_probability", "postprocess_mask",
           "segment_images", "lung_qc", "segment_manifest"]


#: Largest activation tensor (bytes) of a CPU forward pass. Larger blocks are served by fresh
#: ``mmap`` pages by the C allocator (glibc's threshold is at most 32 MiB), and faulting those
#: pages in costs more than the convolutions' batching gains: at 128 px, width 0.5, batches of
#: 16 images run ~30% slower per image than batches of 8.
CPU_ACTIVATION_BYTES = 16 * 2**20


def _cpu_batch_limit(model: UNet, shape: tuple[int, int]) -> int:
    """Most images per CPU forward pass so that the largest activation (the full-resolution
    decoder input: twice the first encoder stage's channels) stays under
    :data:`CPU_ACTIVATION_BYTES`."""
    first = next((m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)), 1)
    per_image = 2 * first * int(shape[0]) * int(shape[1]) * 4
    return max(1, CPU_ACTIVATION_BYTES // per_image)


def predict_lung_probability(
    model: UNet,
    images: np.ndarray,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Lung probabilities of prepared images.

    ``images``: float32 (N, S, S) from :func:`prepare_unet_input`. Returns float32 (N, S, S) in
    [0, 1] (the sigmoid of the network's logits). ``batch_size`` is the most images per forward
    pass; on CPU it is lowered so that no activation exceeds :data:`CPU_ACTIVATION_BYTES`
    (each image is computed independently, so the result does not depend on it).
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, S, S), got shape {images.shape}")
    device = default_device(device)
    if device.type == "cpu":
        batch_size = min(batch_size, _cpu_batch_limit(model, images.shape[1:]))
    # channels-last convolutions are ~1.6x faster on CPU; the numbers are the same
    model = model.to(device, memory_format=torch.channels_last).eval()
    out = np.empty(images.shape, dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start:start + batch_size, None]).to(device)
            batch = batch.contiguous(memory_format=torch.channels_last)
            out[start:start + batch_size] = torch.sigmoid(model(batch))[:, 0].cpu().numpy()
    return out


def postprocess_mask(
    probability: np.ndarray,
    threshold: float = 0.5,
    min_region_fraction: float = 0.02,
    fill_holes: bool = True,
    max_regions: int | None = 2,
) -> np.ndarray:
    """Turn a lung probability map into a clean mask, in the reference's order.

    1. ``probability > threshold``;
    2. remove connected regions (8-connectivity) smaller than ``min_region_fraction`` of the image;
    3. fill holes (background not connected to the border);
    4. keep the ``max_regions`` largest regions (None keeps all).

    ``probability``: float (H, W). Returns bool (H, W).
    """
    probability = np.asarray(probability)
    if probability.ndim != 2:
        raise ValueError(f"probability must be a 2-D array (H, W), got shape {probability.shape}")
    mask = probability > threshold
    eight = np.ones((3, 3), dtype=bool)
    labels, n = ndimage.label(mask, structure=eight)
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        sizes[0] = 0
        keep = sizes >= min_region_fraction * mask.size
        keep[0] = False  # the background, also when min_region_fraction is 0
        mask = keep[labels]
        n = int(keep.sum())
    if fill_holes:
        # holes: background regions (4-connected, as binary_fill_holes) off the image border;
        # labelling the background once is ~5x faster than binary_fill_holes' propagation
        background, n_bg = ndimage.label(~mask)
        if n_bg:
            border = np.concatenate([background[0], background[-1], background[:, 0],
                                     background[:, -1]])
            outside = np.zeros(n_bg + 1, dtype=bool)
            outside[border] = True
            outside[0] = False  # label 0 is the mask itself
            mask = ~outside[background]
    # filling holes only merges regions, so with at most max_regions left there is nothing to drop
    if max_regions is not None and n > max_regions:
        labels, n = ndimage.label(mask, structure=eight)
        if n > max_regions:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            keep = np.zeros(n + 1, dtype=bool)
            keep[np.argsort(sizes, kind="stable")[::-1][:max_regions]] = True
            keep[0] = False
            mask = keep[labels]
    return mask


def segment_images(
    model: UNet,
    images: list[np.ndarray],
    size: int,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    **postprocess,
) -> list[np.ndarray]:
    """Lung masks of images of any sizes, each at its own resolution.

    Each image is prepared at ``size x size`` (:func:`prepare_unet_input`); the predicted
    probability map is resized (bilinear) back to the image's shape and cleaned by
    :func:`postprocess_mask` (keyword arguments passed on).

    ``images``: float arrays (H_i, W_i). Returns a list of bool arrays (H_i, W_i).
    """
    prepared = np.stack([prepare_unet_input(im, size) for im in images])
    probs = predict_lung_probability(model, prepared, batch_size=batch_size, device=device)
    return [postprocess_mask(resize_image(prob, np.shape(im)), **postprocess)
            for im, prob in zip(images, probs)]


def lung_qc(
    mask: np.ndarray,
    min_lung_fraction: float = MIN_LUNG_FRACTION,
    min_region_fraction: float = 0.05,
) -> dict:
    """The segmentation quality flag of one mask, bool (H, W): seed 003's rules and the
    anatomical plausibility rules of :mod:`cxrlib.preprocess.lung_plausibility` (see
    :func:`~cxrlib.preprocess.lung_plausibility.plausibility`).

    Seed 003's rules: both lungs found - exactly two connected regions, each covering at least
    ``min_region_fraction`` of the image - and the lungs covering at least ``min_lung_fraction``
    of the image pixels. The shape rules flag lungs of very different size, not side by side, of
    implausible height, reaching the top edge or the neck, cut by the bottom edge, or widest at
    their top (shoulders, axillae).

    Returns a dict: ``qc_lung_regions`` (int), ``qc_lungs_found`` (bool), ``qc_lung_fraction``
    (float in [0, 1]), ``qc_pass`` (bool), ``qc_reason`` ("" when it passes, else the failed
    rules' reasons joined by "; ", each a general phrase, ": " and details),
    ``qc_plausibility`` (float in [0, 1], at least 0.5 exactly when it passes) and one bool
    ``qc_rule_<name>`` per rule, true when that rule failed.
    """
    return plausibility(mask, min_lung_fraction=min_lung_fraction,
                        min_region_fraction=min_region_fraction)


def segment_manifest(
    model: UNet,
    manifest: pd.DataFrame,
    out_dir: str | Path,
    size: int,
    data_root: str | Path | None = None,
    batch_size: int = 16,
    threshold: float = 0.5,
    min_region_fraction: float = 0.02,
    min_lung_fraction: float = MIN_LUNG_FRACTION,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Segment every image of a manifest, write the masks, and flag segmentation quality.

    Each mask is written as an 8-bit 0/255 PNG at the image's own resolution, to
    ``out_dir / mask_file_name(image_id)`` (what :func:`cxrlib.preprocess.views.build_views` reads).

    Parameters
    ----------
    model : a trained U-Net (:func:`load_unet`).
    manifest : validated manifest; paths relative to ``data_root``
        (default ``manifest.attrs['data_root']``).
    size : network input side (the size the model was trained at, ``profile.seg_size``).
    threshold, min_region_fraction : see :func:`postprocess_mask`.
    min_lung_fraction : QC threshold on the lungs' share of the image (default 0.20, under
        every true mask measured; seed 003: 0.30).

    Returns
    -------
    DataFrame, one row per image in manifest order: ``image_id``, ``mask_path`` (absolute),
    and the columns of :func:`lung_qc` (``qc_lung_regions``, ``qc_lungs_found``,
    ``qc_lung_fraction``, ``qc_pass``, ``qc_reason``, ``qc_plausibility`` and the
    ``qc_rule_<name>`` flags of :data:`cxrlib.preprocess.lung_plausibility.RULE_COLUMNS`).
    """
    root = data_root_of(manifest, data_root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    bar = tqdm(total=len(manifest), desc="segmenting", disable=not progress)
    for start in range(0, len(manifest), batch_size):
        chunk = manifest.iloc[start:start + batch_size]
        images = [read_image(root / p) for p in chunk["path"]]
        masks = segment_images(model, images, size, batch_size=batch_size, device=device,
                               threshold=threshold, min_region_fraction=min_region_fraction)
        for image_id, mask in zip(chunk["image_id"], masks):
            path = out_dir / mask_file_name(image_id)
            Image.fromarray(mask.astype(np.uint8) * 255).save(path, format="PNG")
            records.append({"image_id": image_id, "mask_path": str(path.resolve()),
                            **lung_qc(mask, min_lung_fraction=min_lung_fraction)})
        bar.update(len(chunk))
    bar.close()
    return pd.DataFrame(records, columns=["image_id", "mask_path", *QC_COLUMNS])
