"""The U-Net's input and training data.

:func:`prepare_unet_input` turns a radiograph into the network's input (resize, histogram
equalisation, per-image standardisation); :func:`load_segmentation_pairs` reads a manifest's
images and lung masks at the network's size; :func:`split_by_patient` splits them into training,
validation and test patients; ``_LungDataset`` serves the (image, mask) pairs to the training,
with domain randomisation and the joint affine augmentation of :data:`AUGMENTATION`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import GroupShuffleSplit
from tqdm.auto import tqdm

from cxrlib.data.images import read_image, read_mask
from cxrlib.data.manifest import data_root_of
from cxrlib.data.splits import split_groups
from cxrlib.preprocess.domain_randomisation import check_changes, randomise
from cxrlib.preprocess.views import _equalize_hist, resize_image, resize_mask

__all__ = ["AUGMENTATION", "prepare_unet_input", "normalise_unet_input",
           "load_segmentation_pairs", "split_by_patient", "has_lung_mask", "rows_with_masks"]

#: Augmentation of the reference implementation (Keras ImageDataGenerator arguments).
AUGMENTATION = {"rotation_deg": 10.0, "shift": 0.1, "zoom": 0.2}


def prepare_unet_input(image: np.ndarray, size: int) -> np.ndarray:
    """The U-Net input of one radiograph.

    Parameters
    ----------
    image : float array (H, W), any range (usually [0, 1]).
    size : side of the network input, in pixels.

    Returns ------- float32 array (size, size): anti-aliased bilinear resize (aspect ratio not
    kept, :func:`cxrlib.preprocess.views.resize_image`), histogram equalisation, then
    standardisation to zero mean and unit standard deviation (per image).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"image must be a 2-D array (H, W), got shape {image.shape}")
    return normalise_unet_input(resize_image(image, (size, size)))


def normalise_unet_input(image: np.ndarray) -> np.ndarray:
    """Histogram equalisation, then standardisation to zero mean and unit standard deviation,
    of a float image (S, S) at the network's size. Returns float32 (S, S).

    Equalisation maps the grey levels through their own distribution, so any increasing
    grey-level curve applied before it is undone: applying it twice gives the same input.
    """
    image = np.asarray(image, dtype=np.float32)
    eq = _equalize_hist(image, image, 256)  # skimage.exposure.equalize_hist, faster
    sd = float(eq.std())
    return ((eq - eq.mean()) / (sd if sd > 0 else 1.0)).astype(np.float32)


def has_lung_mask(manifest: pd.DataFrame) -> pd.Series:
    """Bool Series (the manifest's index): the row names a lung mask (``lung_mask_path`` neither
    missing nor blank); all False when the manifest has no ``lung_mask_path`` column."""
    if "lung_mask_path" not in manifest.columns:
        return pd.Series(False, index=manifest.index, name="has_lung_mask")
    paths = manifest["lung_mask_path"]
    return (paths.notna() & paths.astype(str).str.strip().ne("")).rename("has_lung_mask")


def rows_with_masks(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest's rows with a lung mask (:func:`has_lung_mask`); an error when the manifest
    has no ``lung_mask_path`` column at all."""
    if "lung_mask_path" not in manifest.columns:
        raise ValueError("the manifest has no 'lung_mask_path' column: no lung masks to train on")
    return manifest[has_lung_mask(manifest)]


def load_segmentation_pairs(
    manifest: pd.DataFrame,
    size: int,
    data_root: str | Path | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Read every manifest row's image and lung mask as network-ready arrays.

    Every row must have a ``lung_mask_path`` (select rows first, e.g. with
    ``manifest[manifest.lung_mask_path.notna()]``).

    Returns
    -------
    images : float32 (N, size, size), prepared by :func:`prepare_unet_input`.
    masks : bool (N, size, size), the masks resized the same way (area-averaged, >= 0.5).
    """
    root = data_root_of(manifest, data_root)
    with_mask = rows_with_masks(manifest)
    if len(with_mask) != len(manifest):
        missing = manifest.index.difference(with_mask.index)
        raise ValueError(f"{len(missing)} row(s) have no lung_mask_path, e.g. image_id "
                         f"{manifest.loc[missing[0], 'image_id']!r}")
    images = np.empty((len(manifest), size, size), dtype=np.float32)
    masks = np.empty((len(manifest), size, size), dtype=bool)
    for i, rec in enumerate(tqdm(manifest.itertuples(index=False), total=len(manifest),
                                 desc="loading images and masks", disable=not progress)):
        image = read_image(root / rec.path)
        mask = read_mask(root / rec.lung_mask_path)
        if image.shape != mask.shape:
            raise ValueError(f"image {rec.image_id!r}: image {image.shape} and lung mask "
                             f"{mask.shape} ({root / rec.lung_mask_path}) differ in shape")
        images[i] = prepare_unet_input(image, size)
        masks[i] = resize_mask(mask, (size, size))
    return images, masks


def split_by_patient(
    manifest: pd.DataFrame,
    valid_size: float = 0.1,
    test_size: float = 0.2,
    seed: int = 0,
) -> pd.Series:
    """Train / validation / test subsets with no patient in two subsets.

    Two ``GroupShuffleSplit`` draws on the patient groups (``patient_id``, or ``qc_patient_group``
    when the audit made one): first the test patients, then the validation patients among the rest.
    ``valid_size`` and ``test_size`` are fractions of the patients, not of the images.

    Returns a Series of ``"train"`` / ``"valid"`` / ``"test"`` with the manifest's index, named
    ``subset``.
    """
    if not (0 < test_size < 1 and 0 < valid_size < 1 and valid_size + test_size < 1):
        raise ValueError(f"valid_size={valid_size} and test_size={test_size} must be in (0, 1) "
                         "and sum to less than 1")
    groups = split_groups(manifest).to_numpy()
    n_groups = len(np.unique(groups))
    if n_groups < 3:
        raise ValueError(f"{n_groups} patient(s) cannot be split into train, validation and test")
    subset = np.full(len(manifest), "train", dtype=object)
    outer = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    rest, test = next(outer.split(np.zeros(len(groups)), groups=groups))
    subset[test] = "test"
    inner = GroupShuffleSplit(n_splits=1, test_size=valid_size / (1 - test_size),
                              random_state=seed + 1)
    _, valid = next(inner.split(np.zeros(len(rest)), groups=groups[rest]))
    subset[rest[valid]] = "valid"
    return pd.Series(subset, index=manifest.index, name="subset")


class _LungDataset(torch.utils.data.Dataset):
    """(image, mask) pairs as float tensors (1, S, S); optional domain randomisation
    (:func:`cxrlib.preprocess.domain_randomisation.randomise`, then :func:`normalise_unet_input`)
    and joint random affine transform.

    In a DataLoader worker process the domain randomisation draws from a generator seeded with
    the worker's seed (a copy of the parent's generator would repeat the same draws in every
    worker); without workers, from one generator seeded with ``seed``."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, augment: bool,
                 randomise: tuple = (), seed: int = 0):
        from torchvision.transforms import v2

        self.randomise = check_changes(randomise)
        self.rng = np.random.default_rng(seed)
        self._worker_seed = None
        self.raw_images = np.ascontiguousarray(images, dtype=np.float32)
        self.raw_masks = np.asarray(masks, dtype=bool)
        self.images = torch.from_numpy(self.raw_images)[:, None]
        self.masks = torch.from_numpy(self.raw_masks.astype(np.float32))[:, None]
        self.transform = None
        if augment:
            zoom = AUGMENTATION["zoom"]
            self.transform = v2.RandomAffine(
                degrees=AUGMENTATION["rotation_deg"],
                translate=(AUGMENTATION["shift"], AUGMENTATION["shift"]),
                scale=(1 - zoom, 1 + zoom),
                interpolation=v2.InterpolationMode.BILINEAR,  # masks always use nearest
            )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x, y = self.images[i], self.masks[i]
        if self.randomise:
            worker = torch.utils.data.get_worker_info()
            if worker is not None and worker.seed != self._worker_seed:
                self._worker_seed = worker.seed  # a new worker (or epoch): its own draws
                self.rng = np.random.default_rng(worker.seed)
            image, mask = randomise(self.raw_images[i], self.raw_masks[i], self.rng, self.randomise)
            x = torch.from_numpy(normalise_unet_input(image))[None]
            y = torch.from_numpy(mask.astype(np.float32))[None]
        if self.transform is not None:
            from torchvision import tv_tensors

            x, y = self.transform(tv_tensors.Image(x), tv_tensors.Mask(y))
            x, y = x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)
        return x, y
