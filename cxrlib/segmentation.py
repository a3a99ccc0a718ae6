"""Lung segmentation: U-Net training (fastai), inference, post-processing, scores and the QC flag.

The method is seed 001's (details in the reference implementation):

- input: the grayscale radiograph resized to ``size x size``, histogram-equalised, standardised
  (zero mean, unit standard deviation, per image) - :func:`prepare_unet_input`;
- network: :class:`cxrlib.models.UNet`, trained with Adam on binary cross-entropy, batch 8,
  augmentation rotation +-10 degrees, shift +-10%, zoom +-20% (the same draw for image and mask).
  The ``paper`` profile keeps these settings; ``smoke`` and ``default`` add batch normalisation
  and a higher one-cycle learning rate so that their few CPU epochs converge (profile fields
  ``seg_batch_size``, ``seg_lr``, ``seg_batch_norm``);
- post-processing: threshold 0.5, removal of regions smaller than 2% of the image, hole filling,
  the two largest regions kept - :func:`postprocess_mask`;
- quality control: seed 003's rules (both lungs found, the lungs covering at least 30% of the
  image) plus anatomical shape checks (sizes, side by side, height, top and bottom edges, neck,
  shoulders), each a recorded reason, and a plausibility score - :func:`lung_qc`, implemented in
  :mod:`cxrlib.lung_plausibility`.

Weights are read from a local file only (:func:`load_unet`); nothing is downloaded. A weights file
is written by :func:`save_unet` together with a JSON file of the training parameters.

Typical use (notebook 01)::

    fit = train_unet_on_manifest(manifest, run.artifact("unet_lung.pt"), profile=P, seed=seed)
    seg = segment_manifest(fit.model, manifest, run.artifact("lung_masks"), size=P.seg_size)
    scores = score_masks(manifest, run.artifact("lung_masks"))

Arrays: images are float32 (H, W) in [0, 1] (see :mod:`cxrlib.images`), masks bool (H, W).
fastai is imported only when training, so inference stays light.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy import ndimage
from sklearn.model_selection import GroupShuffleSplit
from tqdm.auto import tqdm

from cxrlib.domain_randomisation import check_changes, randomise
from cxrlib.gpu import OFF, DeviceSettings
from cxrlib.images import read_image, read_mask
from cxrlib.lung_plausibility import QC_COLUMNS, RULE_COLUMNS, RULES, plausibility, rule_phrase
from cxrlib.models.unet import UNet
from cxrlib.profiles import Profile, get_profile
from cxrlib.splits import split_groups
from cxrlib.training import default_device
from cxrlib.views import _equalize_hist, mask_file_name, resize_image, resize_mask

__all__ = [
    "AUGMENTATION", "prepare_unet_input", "load_segmentation_pairs", "split_by_patient",
    "train_unet", "train_unet_on_manifest", "SegmenterFit", "save_unet", "load_unet",
    "read_unet_params", "predict_lung_probability", "postprocess_mask", "segment_images",
    "lung_qc", "segment_manifest", "dice_score", "iou_score", "score_masks",
    "summarise_scores",
    "worst_cases", "reference_scores", "scores_table", "qc_summary",
    "qc_flag_reasons",
    "training_curves_figure", "mask_cases_figure",
]

#: Augmentation of the reference implementation (Keras ImageDataGenerator arguments).
AUGMENTATION = {"rotation_deg": 10.0, "shift": 0.1, "zoom": 0.2}

_WEIGHTS_FORMAT = "cxrlib-unet-v1"


# --------------------------------------------------------------------------------------------
# Input preparation and data


def prepare_unet_input(image: np.ndarray, size: int) -> np.ndarray:
    """The U-Net input of one radiograph.

    Parameters
    ----------
    image : float array (H, W), any range (usually [0, 1]).
    size : side of the network input, in pixels.

    Returns
    -------
    float32 array (size, size): anti-aliased bilinear resize (aspect ratio not kept,
    :func:`cxrlib.views.resize_image`), histogram equalisation, then standardisation to zero
    mean and unit standard deviation (per image).
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


def _data_root(manifest: pd.DataFrame, data_root) -> Path:
    if data_root is not None:
        return Path(data_root)
    if "data_root" not in manifest.attrs:
        raise ValueError("the manifest has no attrs['data_root']: pass data_root= explicitly "
                         "(load_manifest sets it)")
    return Path(manifest.attrs["data_root"])


def _rows_with_masks(manifest: pd.DataFrame) -> pd.DataFrame:
    if "lung_mask_path" not in manifest.columns:
        raise ValueError("the manifest has no 'lung_mask_path' column: no lung masks to train on")
    paths = manifest["lung_mask_path"]
    has = paths.notna() & paths.astype(str).str.strip().ne("")
    return manifest[has]


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
    root = _data_root(manifest, data_root)
    with_mask = _rows_with_masks(manifest)
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
    (:func:`cxrlib.domain_randomisation.randomise`, then :func:`normalise_unet_input`) and
    joint random affine transform.

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


def _batch_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Dice of thresholded predictions over a batch (fastai metric)."""
    pred = logits > 0
    truth = target > 0.5
    inter = (pred & truth).flatten(1).sum(1).float()
    total = (pred.flatten(1).sum(1) + truth.flatten(1).sum(1)).float()
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    return dice.mean()


# --------------------------------------------------------------------------------------------
# Training


def train_unet(
    train_images: np.ndarray,
    train_masks: np.ndarray,
    valid_images: np.ndarray,
    valid_masks: np.ndarray,
    width: float = 1.0,
    epochs: int = 10,
    batch_size: int = 8,
    lr: float = 1e-3,
    schedule: str = "one_cycle",
    augment: bool = True,
    batch_norm: bool = False,
    domain_randomisation: tuple = (),
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    init: UNet | None = None,
    gpu: DeviceSettings | None = None,
) -> tuple[UNet, pd.DataFrame]:
    """Train a :class:`UNet` from scratch with a fastai ``Learner``.

    Parameters
    ----------
    train_images, valid_images : float32 (N, S, S), prepared by :func:`prepare_unet_input`.
    train_masks, valid_masks : bool (N, S, S).
    width : channel multiplier of the U-Net (``profile.width``).
    epochs : passes over the training images.
    batch_size : images per step (8 in the reference).
    lr : learning rate; the peak of the one-cycle schedule, or the constant rate.
    schedule : ``"one_cycle"`` (fastai ``fit_one_cycle``) or ``"constant"`` (Adam at a fixed
        rate, as the reference).
    augment : random rotation, shift and zoom (:data:`AUGMENTATION`) of image and mask together.
    batch_norm : see :class:`UNet`.
    domain_randomisation : names of :data:`cxrlib.domain_randomisation.CHANGES` drawn on each
        training image before the affine augmentation (each with probability 0.5).
    seed : seeds Python, NumPy and torch (weights, shuffling, augmentation).
    device : default CUDA when available, else CPU.
    progress : show fastai's progress bars and epoch table.
    init : a U-Net to start from (a copy is trained; ``width`` and ``batch_norm`` are then its
        own) instead of random weights.
    gpu : mixed precision, DataLoader workers (the augmentation and domain randomisation run in
        them) and cuDNN's autotuner (:class:`cxrlib.gpu.DeviceSettings`; None: all off). The
        U-Net is channels-last on every device.

    Returns
    -------
    model : the trained network, on the CPU, in eval mode.
    history : DataFrame, one row per epoch: ``epoch``, ``train_loss`` (fastai's smoothed
        training loss at the end of the epoch), ``valid_loss``, ``valid_dice`` (mean per-image
        Dice of the validation predictions thresholded at 0.5, before post-processing).
    """
    import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
    import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.losses import BCEWithLogitsLossFlat
    from fastai.optimizer import Adam
    from fastai.torch_core import set_seed

    for name, imgs, msks in (("train", train_images, train_masks),
                             ("valid", valid_images, valid_masks)):
        if np.ndim(imgs) != 3 or np.shape(imgs) != np.shape(msks):
            raise ValueError(f"{name}_images {np.shape(imgs)} and {name}_masks {np.shape(msks)} "
                             "must both be (N, S, S)")
        if len(imgs) == 0:
            raise ValueError(f"no {name} images")
    if schedule not in ("one_cycle", "constant"):
        raise ValueError(f"schedule must be 'one_cycle' or 'constant', got {schedule!r}")

    set_seed(seed, reproducible=True)
    device = default_device(device)
    gpu = OFF if gpu is None else gpu
    train_ds = _LungDataset(train_images, train_masks, augment=augment,
                            randomise=domain_randomisation, seed=seed)
    valid_ds = _LungDataset(valid_images, valid_masks, augment=False)
    dls = DataLoaders.from_dsets(
        train_ds, valid_ds, bs=batch_size, device=device,
        drop_last=(len(train_ds) > batch_size, False), **gpu.loader_options(device),
    )
    # channels-last convolutions train ~1.2x faster on CPU, with the same numbers
    if init is not None:
        model = copy.deepcopy(init).train().to(memory_format=torch.channels_last)
    else:
        model = UNet(in_channels=1, width=width, batch_norm=batch_norm).to(
            memory_format=torch.channels_last)

    def dice(logits, target):  # the name fastai shows in its epoch table
        return _batch_dice(logits, target)

    learn = Learner(dls, model, loss_func=BCEWithLogitsLossFlat(), opt_func=Adam, lr=lr, wd=0.0,
                    metrics=[dice], cbs=gpu.fastai_callbacks(device))
    with contextlib.ExitStack() as quiet:
        quiet.enter_context(gpu.cudnn(device))
        if not progress:
            quiet.enter_context(learn.no_bar())
            quiet.enter_context(learn.no_logging())
        if schedule == "one_cycle":
            learn.fit_one_cycle(epochs, lr_max=lr)
        else:
            learn.fit(epochs, lr=lr)
    values = np.asarray(learn.recorder.values, dtype=float).reshape(-1, 3)
    history = pd.DataFrame({
        "epoch": np.arange(1, len(values) + 1),
        "train_loss": values[:, 0],
        "valid_loss": values[:, 1],
        "valid_dice": values[:, 2],
    })
    model = learn.model.cpu().eval()
    return model, history


@dataclass
class SegmenterFit:
    """What :func:`train_unet_on_manifest` returns.

    Attributes
    ----------
    model : the trained U-Net (CPU, eval mode).
    history : per-epoch losses and validation Dice (see :func:`train_unet`).
    split : DataFrame ``image_id``, ``subset`` (train / valid / test) of the rows with a lung mask.
    params : the training parameters, also written next to the weights as JSON.
    weights_path : where the weights were saved.
    """

    model: UNet
    history: pd.DataFrame
    split: pd.DataFrame
    params: dict = field(default_factory=dict)
    weights_path: Path | None = None


def train_unet_on_manifest(
    manifest: pd.DataFrame,
    weights_path: str | Path,
    profile: str | Profile = "default",
    size: int | None = None,
    width: float | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    batch_norm: bool | None = None,
    min_steps: int | None = None,
    schedule: str = "one_cycle",
    augment: bool = True,
    domain_randomisation: tuple | None = None,
    valid_size: float = 0.1,
    test_size: float = 0.2,
    seed: int = 0,
    data_root: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    gpu: DeviceSettings | None = None,
) -> SegmenterFit:
    """Train the lung U-Net on every manifest row that has a lung mask, and save it.

    The rows with a mask are split by patient (:func:`split_by_patient`); the network trains on
    ``train``, fastai reports on ``valid`` each epoch, and ``test`` is left for scoring.
    Arguments left as None come from the profile: ``size`` = ``seg_size``, ``width`` =
    ``width``, ``epochs`` = ``seg_epochs``, ``batch_size`` = ``seg_batch_size``, ``lr`` =
    ``seg_lr``, ``batch_norm`` = ``seg_batch_norm``, ``domain_randomisation`` =
    ``seg_domain_randomisation``, ``min_steps`` = ``seg_min_steps`` when
    ``epochs`` is None too, else 0: the epochs are raised, when needed, so that training makes
    at least ``min_steps`` optimiser steps (``ceil(min_steps / steps per epoch)`` epochs),
    ``gpu`` = the profile's :class:`cxrlib.gpu.DeviceSettings`. The others are those of
    :func:`train_unet`.

    The weights go to ``weights_path`` and the parameters to ``weights_path`` with suffix
    ``.json`` (see :func:`save_unet`).
    """
    prof = get_profile(profile)
    size = int(size if size is not None else prof.seg_size)
    width = float(width if width is not None else prof.width)
    if min_steps is None:  # the profile's floor applies to the profile's epochs only
        min_steps = prof.seg_min_steps if epochs is None else 0
    epochs = int(epochs if epochs is not None else prof.seg_epochs)
    batch_size = int(batch_size if batch_size is not None else prof.seg_batch_size)
    lr = float(lr if lr is not None else prof.seg_lr)
    batch_norm = bool(batch_norm if batch_norm is not None else prof.seg_batch_norm)
    domain_randomisation = check_changes(domain_randomisation if domain_randomisation is not None
                                         else prof.seg_domain_randomisation)
    gpu = DeviceSettings.from_profile(prof) if gpu is None else gpu
    rows = _rows_with_masks(manifest)
    if rows.empty:
        raise ValueError("no manifest row has a lung_mask_path: nothing to train the U-Net on")
    subset = split_by_patient(rows, valid_size=valid_size, test_size=test_size, seed=seed)
    images, masks = load_segmentation_pairs(rows, size, data_root=_data_root(manifest, data_root),
                                            progress=progress)
    is_train = (subset == "train").to_numpy()
    is_valid = (subset == "valid").to_numpy()
    min_steps = int(min_steps)
    n_train = int(is_train.sum())
    steps_per_epoch = n_train // batch_size if n_train > batch_size else 1  # drop_last
    epochs = max(epochs, math.ceil(min_steps / max(steps_per_epoch, 1)))
    start = time.perf_counter()
    model, history = train_unet(
        images[is_train], masks[is_train], images[is_valid], masks[is_valid],
        width=width, epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule,
        augment=augment, batch_norm=batch_norm, domain_randomisation=domain_randomisation,
        seed=seed, device=device, progress=progress, gpu=gpu,
    )
    # what changes the U-Net's training (the classifiers' device augmentation does not)
    unet_gpu = {k: v for k, v in gpu.hashed().items() if k != "device_augmentation"}
    params = {
        "size": size, "width": width, "batch_norm": batch_norm, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "schedule": schedule, "optimizer": "Adam",
        "loss": "binary cross-entropy (on logits)",
        "augmentation": AUGMENTATION if augment else None,
        "domain_randomisation": list(domain_randomisation),
        "preprocessing": "resize to size x size, histogram equalisation, per-image standardisation",
        "min_steps": min_steps, "seed": seed, "profile": prof.name,
        "n_train": int(is_train.sum()), "n_valid": int(is_valid.sum()),
        "n_test": int((subset == "test").sum()),
        "train_seconds": round(time.perf_counter() - start, 1),
        "final_train_loss": float(history["train_loss"].iloc[-1]),
        "final_valid_loss": float(history["valid_loss"].iloc[-1]),
        "final_valid_dice": float(history["valid_dice"].iloc[-1]),
        "torch": torch.__version__,
        "precision": gpu.precision(default_device(device)),
        **({"gpu": unet_gpu} if unet_gpu else {}),
    }
    path = save_unet(model, weights_path, params)
    split = pd.DataFrame({"image_id": rows["image_id"].to_numpy(), "subset": subset.to_numpy()})
    return SegmenterFit(model=model, history=history, split=split, params=params, weights_path=path)


# --------------------------------------------------------------------------------------------
# Weights


def _params_path(weights_path: Path) -> Path:
    return weights_path.with_suffix(".json")


def save_unet(model: UNet, path: str | Path, params: dict | None = None) -> Path:
    """Write the weights and architecture to ``path`` (a torch file) and ``params`` plus the
    architecture to ``path`` with suffix ``.json``. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": _WEIGHTS_FORMAT, "config": config, "state_dict": state}, tmp)
    os.replace(tmp, path)
    record = {"architecture": {"name": "UNet", **config}, **(params or {})}
    _params_path(path).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    return path


def read_unet_params(path: str | Path) -> dict:
    """The training parameters saved beside the weights ``path`` (its ``.json`` file), e.g.
    ``read_unet_params(p)["size"]`` is the input size to segment at. ``{}`` when absent."""
    params = _params_path(Path(path))
    return json.loads(params.read_text()) if params.is_file() else {}


def load_unet(path: str | Path, device: str | torch.device = "cpu") -> UNet:
    """Load a U-Net written by :func:`save_unet` from a local file (nothing is downloaded).

    Raises ``FileNotFoundError`` with instructions when the file does not exist, and
    ``ValueError`` when it is not a cxrlib U-Net weights file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no U-Net lung-segmentation weights at {path}. Weights are never downloaded: train "
            "them by running notebook 01 (lung segmentation), or in Python with "
            "cxrlib.segmentation.train_unet_on_manifest(manifest, weights_path=...) "
            "(or train_unet(...) then save_unet(model, path)); or put a weights file written "
            f"by save_unet at {path}."
        )
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for a foreign or corrupt file
        raise ValueError(f"{path} is not a readable torch weights file: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != _WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a cxrlib U-Net weights file (written by save_unet)")
    model = UNet(**blob["config"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# Inference and post-processing


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
    min_lung_fraction: float = 0.30,
    min_region_fraction: float = 0.05,
) -> dict:
    """The segmentation quality flag of one mask, bool (H, W): seed 003's rules and the
    anatomical plausibility rules of :mod:`cxrlib.lung_plausibility` (see
    :func:`~cxrlib.lung_plausibility.plausibility`).

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
    min_lung_fraction: float = 0.30,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Segment every image of a manifest, write the masks, and flag segmentation quality.

    Each mask is written as an 8-bit 0/255 PNG at the image's own resolution, to
    ``out_dir / mask_file_name(image_id)`` (what :func:`cxrlib.views.build_views` reads).

    Parameters
    ----------
    model : a trained U-Net (:func:`load_unet`).
    manifest : validated manifest; paths relative to ``data_root``
        (default ``manifest.attrs['data_root']``).
    size : network input side (the size the model was trained at, ``profile.seg_size``).
    threshold, min_region_fraction : see :func:`postprocess_mask`.
    min_lung_fraction : QC threshold on the lungs' share of the image (seed 003: 30%).

    Returns
    -------
    DataFrame, one row per image in manifest order: ``image_id``, ``mask_path`` (absolute),
    and the columns of :func:`lung_qc` (``qc_lung_regions``, ``qc_lungs_found``,
    ``qc_lung_fraction``, ``qc_pass``, ``qc_reason``, ``qc_plausibility`` and the
    ``qc_rule_<name>`` flags of :data:`cxrlib.lung_plausibility.RULE_COLUMNS`).
    """
    root = _data_root(manifest, data_root)
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


# --------------------------------------------------------------------------------------------
# Scores


def _check_mask_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"masks differ in shape: predicted {pred.shape}, true {truth.shape}")
    return pred.astype(bool, copy=False), truth.astype(bool, copy=False)


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient ``2 |P & T| / (|P| + |T|)`` of two bool masks; 1.0 when both are empty."""
    pred, truth = _check_mask_pair(pred, truth)
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def iou_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union ``|P & T| / |P | T|`` of two bool masks; 1.0 when both are empty."""
    pred, truth = _check_mask_pair(pred, truth)
    union = int((pred | truth).sum())
    return 1.0 if union == 0 else int((pred & truth).sum()) / union


def score_masks(
    manifest: pd.DataFrame,
    masks_dir: str | Path,
    data_root: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Dice and IoU of the predicted masks in ``masks_dir`` against the manifest's lung masks.

    Only rows with a ``lung_mask_path`` are scored, at the true mask's resolution. A missing
    predicted mask is an error (run :func:`segment_manifest` first).

    Returns a DataFrame ``image_id``, ``source``, ``label``, ``dice``, ``iou``.
    """
    root = _data_root(manifest, data_root)
    masks_dir = Path(masks_dir)
    rows = _rows_with_masks(manifest)
    records = []
    for rec in tqdm(rows.itertuples(index=False), total=len(rows), desc="scoring",
                    disable=not progress):
        pred_path = masks_dir / mask_file_name(rec.image_id)
        if not pred_path.is_file():
            raise FileNotFoundError(f"no predicted mask for {rec.image_id!r} at {pred_path}: "
                                    "run segment_manifest first")
        pred, truth = read_mask(pred_path), read_mask(root / rec.lung_mask_path)
        if pred.shape != truth.shape:
            raise ValueError(f"{rec.image_id!r}: predicted mask {pred.shape} ({pred_path}) and "
                             f"true mask {truth.shape} differ in shape")
        records.append({"image_id": rec.image_id, "source": rec.source, "label": rec.label,
                        "dice": dice_score(pred, truth), "iou": iou_score(pred, truth)})
    return pd.DataFrame(records, columns=["image_id", "source", "label", "dice", "iou"])


def summarise_scores(scores: pd.DataFrame, by: str | list[str] | None = "source") -> pd.DataFrame:
    """Mean and standard deviation (ddof=1) of Dice and IoU per group (``by=None``: overall).

    Returns columns ``[*by], n, dice_mean, dice_sd, iou_mean, iou_sd``.
    """
    def agg(frame: pd.DataFrame) -> pd.Series:
        return pd.Series({
            "n": len(frame),
            "dice_mean": frame["dice"].mean(), "dice_sd": frame["dice"].std(),
            "iou_mean": frame["iou"].mean(), "iou_sd": frame["iou"].std(),
        })

    if by is None:
        return agg(scores).to_frame().T.astype({"n": int})
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in by if c not in scores.columns]
    if missing:
        raise ValueError(f"cannot group scores by {missing}: columns are {list(scores.columns)}")
    out = scores.groupby(by, sort=True)[["dice", "iou"]].agg(["count", "mean", "std"])
    return pd.DataFrame({
        "n": out[("dice", "count")].astype(int),
        "dice_mean": out[("dice", "mean")], "dice_sd": out[("dice", "std")],
        "iou_mean": out[("iou", "mean")], "iou_sd": out[("iou", "std")],
    }).reset_index()


def worst_cases(scores: pd.DataFrame, n: int = 5, metric: str = "dice") -> pd.DataFrame:
    """The ``n`` rows with the lowest ``metric`` (``dice`` or ``iou``), worst first."""
    if metric not in ("dice", "iou"):
        raise ValueError(f"metric must be 'dice' or 'iou', got {metric!r}")
    return scores.sort_values([metric, "image_id"], kind="stable").head(n).reset_index(drop=True)


def reference_scores() -> pd.DataFrame:
    """The published scores of seed 001's U-Net (trained and tested on real masks of each set).

    Columns ``dataset``, ``dice``, ``iou``, ``note``.
    """
    note = ("U-Net of seed 001 (imlab-uiip/lung-segmentation-2d); seed 001 quotes the JSRT "
            "figures, the Montgomery ones come from the same implementation")
    return pd.DataFrame({
        "dataset": ["JSRT", "Montgomery"],
        "dice": [0.985, 0.972],
        "iou": [0.971, 0.956],
        "note": [note, note],
    })


# --------------------------------------------------------------------------------------------
# Tables and figures of notebook 01


def scores_table(scores: pd.DataFrame) -> pd.DataFrame:
    """The published scores beside this run's, per source, per class and overall.

    ``scores``: the output of :func:`score_masks` (``image_id``, ``source``, ``label``, ``dice``,
    ``iou``). Returns columns ``what`` (``paper`` / ``reproduced``), ``group`` (``dataset`` for
    the paper's rows, ``source``, ``label`` or ``all``), ``name``, ``n`` (images; empty for the
    paper), ``dice``, ``dice_sd``, ``iou``, ``iou_sd`` (means and sample sds, in [0, 1]).
    """
    paper = reference_scores().drop(columns="note").rename(columns={"dataset": "name"})
    parts = [paper.assign(what="paper", group="dataset")]
    for by in ("source", "label", None):
        part = summarise_scores(scores, by=by).rename(columns={
            by: "name", "dice_mean": "dice", "iou_mean": "iou"})
        parts.append(part.assign(what="reproduced", group=by or "all",
                                 **({} if by else {"name": "all"})))
    out = pd.concat(parts, ignore_index=True)
    out["n"] = out["n"].astype("Int64")
    return out[["what", "group", "name", "n", "dice", "dice_sd", "iou", "iou_sd"]]


#: The shape rules counted by :func:`qc_summary` (seed 003's two have their own columns).
_SHAPE_RULES = [name for name in RULES if name not in ("no_lung_pair", "low_fraction")]


def qc_summary(qc: pd.DataFrame, min_lung_fraction: float = 0.30,
               by: str = "source") -> pd.DataFrame:
    """Counts of the segmentation QC flag per ``by`` group, plus a ``total`` row.

    ``qc``: one row per image with ``by``, ``qc_lungs_found``, ``qc_lung_fraction``, ``qc_pass``
    and the ``qc_rule_<name>`` flags (the columns of :func:`segment_manifest` joined with the
    manifest's ``by``); ``min_lung_fraction`` is the threshold the flag was computed with.
    Returns columns ``[by], images, passed, flagged, lungs_not_found`` (not exactly two lung
    regions of sufficient size), ``low_lung_fraction`` (lungs cover less than the threshold),
    one count per shape rule of :mod:`cxrlib.lung_plausibility` (``size_mismatch``,
    ``not_side_by_side``, ``implausible_height``, ``top_edge``, ``bottom_edge``, ``shoulders``;
    missing (NA) when ``qc`` lacks that rule's column), ``mean_lung_fraction`` (in [0, 1]),
    ``flagged_pct`` (percent). An image may count under several rules.
    """
    need = {by, "qc_lungs_found", "qc_lung_fraction", "qc_pass"}
    missing = sorted(need - set(qc.columns))
    if missing:
        raise ValueError(f"qc table lacks column(s) {missing}; columns are {list(qc.columns)}")
    if qc.empty:
        raise ValueError("qc table is empty: nothing to summarise")

    def agg(g: pd.DataFrame) -> dict:
        passed = int(g["qc_pass"].astype(bool).sum())
        rules = {name: (int(g[f"qc_rule_{name}"].astype(bool).sum())
                        if f"qc_rule_{name}" in g.columns else pd.NA) for name in _SHAPE_RULES}
        return {"images": len(g), "passed": passed, "flagged": len(g) - passed,
                "lungs_not_found": int((~g["qc_lungs_found"].astype(bool)).sum()),
                "low_lung_fraction": int((g["qc_lung_fraction"] < min_lung_fraction).sum()),
                **rules,
                "mean_lung_fraction": float(g["qc_lung_fraction"].mean()),
                "flagged_pct": 100.0 * (len(g) - passed) / len(g)}

    rows = [{by: key, **agg(g)} for key, g in qc.groupby(by, sort=True)]
    rows.append({by: "total", **agg(qc)})
    out = pd.DataFrame(rows).astype({name: "Int64" for name in _SHAPE_RULES})
    return out.round({"mean_lung_fraction": 3, "flagged_pct": 1})


def qc_flag_reasons(qc: pd.DataFrame, min_lung_fraction: float = 0.30) -> pd.Series:
    """The general reasons of each failed segmentation QC: the phrases of the failed rules of
    :mod:`cxrlib.lung_plausibility` (e.g. ``"no lung pair found"``, ``"lungs under 30% of the
    image"``, ``"reaches the top edge or the neck"``) joined by ``"; "``, without the per-image
    details of ``qc_reason``, so that images group by them.

    ``qc``: the columns of :func:`segment_manifest` (a table without the ``qc_rule_<name>``
    columns gives the phrases of seed 003's two rules from ``qc_lungs_found`` and
    ``qc_lung_fraction``). Returns a Series indexed by ``image_id`` of the images that fail, in
    ``qc``'s order.
    """
    failed = qc[~qc["qc_pass"].astype(bool)]
    flags = pd.DataFrame(index=failed.index)
    for name, column in zip(RULES, RULE_COLUMNS):
        if column in failed.columns:
            flags[name] = failed[column].astype(bool)
    if "no_lung_pair" not in flags:
        flags["no_lung_pair"] = ~failed["qc_lungs_found"].astype(bool)
    if "low_fraction" not in flags:
        flags["low_fraction"] = failed["qc_lung_fraction"] < min_lung_fraction
    names = [name for name in RULES if name in flags]
    reasons = ["; ".join(rule_phrase(name, min_lung_fraction) for name in names if row[name])
               or "failed" for row in flags[names].to_dict("records")]
    return pd.Series(reasons, index=failed["image_id"].astype(str).to_numpy(), dtype=object)


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
