"""Training the lung U-Net with fastai: on prepared arrays (:func:`train_unet`), or on every
manifest row with a lung mask, split by patient, the weights then saved
(:func:`train_unet_on_manifest`). fastai is imported only inside :func:`train_unet`."""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrlib.data.manifest import data_root_of
from cxrlib.gpu import OFF, DeviceSettings, default_device
from cxrlib.models.unet import UNet
from cxrlib.preprocess.domain_randomisation import check_changes
from cxrlib.profiles import Profile, get_profile

from .data import (
    AUGMENTATION, _LungDataset, rows_with_masks, load_segmentation_pairs, split_by_patient,
)
from .weights import save_unet

__all__ = ["train_unet", "SegmenterFit", "train_unet_on_manifest", "epochs_for_min_steps",
           "BCEDiceLoss", "LOSSES", "unet_loss"]


def _batch_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Dice of thresholded predictions over a batch (fastai metric)."""
    pred = logits > 0
    truth = target > 0.5
    inter = (pred & truth).flatten(1).sum(1).float()
    total = (pred.flatten(1).sum(1) + truth.flatten(1).sum(1)).float()
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    return dice.mean()


class BCEDiceLoss(torch.nn.Module):
    """Binary cross-entropy plus soft Dice loss, both on the same logits.

    ``logits``, ``target``: (N, 1, S, S); ``target`` in {0, 1}. The loss is
    ``BCE(logits, target) + (1 - mean_n soft_dice_n)``, where the soft Dice of image ``n`` is
    ``(2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)`` over its pixels, ``p`` the sigmoid
    of the logits and ``smooth`` 1 pixel. Cross-entropy weighs every pixel alike; the Dice term
    weighs the overlap that the evaluation scores, so a lung border missed on a small lung costs
    more (the pairing nnU-Net trains with). Computed in float32 under mixed precision.
    """

    def __init__(self, smooth: float = 1.0):
        super().__init__()
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        p, t = torch.sigmoid(logits).flatten(1), target.flatten(1)
        dice = (2 * (p * t).sum(1) + self.smooth) / (p.sum(1) + t.sum(1) + self.smooth)
        return bce + (1 - dice.mean())


#: The U-Net's training losses (profile field ``seg_loss``): name -> description.
LOSSES = {"bce": "binary cross-entropy (on logits)",
          "bce+dice": "binary cross-entropy + soft Dice (on logits)"}


def unet_loss(name: str) -> torch.nn.Module:
    """The loss module called ``name`` (a key of :data:`LOSSES`)."""
    if name == "bce":
        from fastai.losses import BCEWithLogitsLossFlat

        return BCEWithLogitsLossFlat()
    if name == "bce+dice":
        return BCEDiceLoss()
    raise ValueError(f"unknown U-Net loss {name!r}; choose one of {sorted(LOSSES)}")


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
    loss: str = "bce",
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
    domain_randomisation : names of :data:`cxrlib.preprocess.domain_randomisation.CHANGES` drawn on
        each training image before the affine augmentation (each with probability 0.5).
    loss : a key of :data:`LOSSES`: ``"bce"`` (the reference's) or ``"bce+dice"``
        (:class:`BCEDiceLoss`).
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
    loss_func = unet_loss(loss)

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

    learn = Learner(dls, model, loss_func=loss_func, opt_func=Adam, lr=lr, wd=0.0,
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


def epochs_for_min_steps(epochs: int, n_train: int, batch_size: int, min_steps: int) -> int:
    """``epochs``, raised when needed so that :func:`train_unet` makes at least ``min_steps``
    optimiser steps on ``n_train`` images: ``n_train // batch_size`` steps per epoch (the last
    partial batch is dropped), or 1 when ``n_train <= batch_size``.

    >>> epochs_for_min_steps(3, 11, 8, 30), epochs_for_min_steps(3, 100, 8, 30)
    (30, 3)
    """
    steps_per_epoch = n_train // batch_size if n_train > batch_size else 1
    return max(int(epochs), math.ceil(int(min_steps) / max(steps_per_epoch, 1)))


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
    loss: str | None = None,
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
    ``seg_domain_randomisation``, ``loss`` = ``seg_loss``, ``min_steps`` = ``seg_min_steps`` when
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
    loss = str(loss if loss is not None else prof.seg_loss)
    unet_loss(loss)  # an unknown name fails before the images are read
    gpu = DeviceSettings.from_profile(prof) if gpu is None else gpu
    rows = rows_with_masks(manifest)
    if rows.empty:
        raise ValueError("no manifest row has a lung_mask_path: nothing to train the U-Net on")
    subset = split_by_patient(rows, valid_size=valid_size, test_size=test_size, seed=seed)
    images, masks = load_segmentation_pairs(rows, size, data_root=data_root_of(manifest, data_root),
                                            progress=progress)
    is_train = (subset == "train").to_numpy()
    is_valid = (subset == "valid").to_numpy()
    min_steps = int(min_steps)
    epochs = epochs_for_min_steps(epochs, int(is_train.sum()), batch_size, min_steps)
    start = time.perf_counter()
    model, history = train_unet(
        images[is_train], masks[is_train], images[is_valid], masks[is_valid],
        width=width, epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule,
        augment=augment, batch_norm=batch_norm, domain_randomisation=domain_randomisation,
        loss=loss, seed=seed, device=device, progress=progress, gpu=gpu,
    )
    # what changes the U-Net's training (the classifiers' device augmentation does not)
    unet_gpu = {k: v for k, v in gpu.hashed().items() if k != "device_augmentation"}
    params = {
        "size": size, "width": width, "batch_norm": batch_norm, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "schedule": schedule, "optimizer": "Adam",
        "loss": LOSSES[loss],
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
