"""Training and inference of the image classifiers, with fastai.

The pieces, each usable alone:

- :class:`TrainingRecipe` and :data:`RECIPES`: each paper's optimiser, schedule, loss, batch size,
  epochs, model selection and augmentation, by name (``arias2020`` is the study's main one);
- :func:`prepare_images` / :func:`load_images`: grayscale radiographs -> float32 (N, S, S) in
  [0, 1], the shorter side resized to S and the centre square kept (seed 001's input layer);
- :class:`Augmentation`: seed 001's training augmentation (horizontal flip, Gaussian noise of
  variance 0.015, small rotation, elastic deformation, scaling 0.9-1.1), never used at test time;
- :class:`ClassifierDataset`: (image, label) pairs as the networks want them: 3 identical
  channels, ImageNet mean/std;
- :func:`train_classifier`: a fastai ``Learner`` on plain PyTorch datasets, with model selection
  on the validation split and a CSV log per epoch;
- :func:`predict`: class probabilities and penultimate-layer embeddings, no augmentation.

Arrays: images are float32 (N, S, S) in [0, 1]; labels are int64 class indices (N,) into the
``classes`` list used everywhere (the order of the probability columns). fastai is imported only
inside :func:`train_classifier`, so inference stays light.

Example::

    recipe = get_recipe("arias2020").with_overrides(epochs=6)
    model = build_classifier("covidnet", n_classes=3, image_size=128, width=0.5)
    fit = train_classifier(model, x_train, y_train, x_valid, y_valid, recipe,
                           classes=["control", "pneumonia", "covid19"], log_path="log.csv")
    probabilities, embeddings = predict(fit.model, x_test)
"""
from __future__ import annotations

import contextlib
import io
import itertools
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.utils.class_weight import compute_class_weight
from tqdm.auto import tqdm

from cxrlib.gpu import OFF, DeviceSettings, default_device
from cxrlib.data.images import read_image
from cxrlib.models.batchnorm import precise_batchnorm
from cxrlib.models.classifiers import IMAGENET_MEAN, IMAGENET_STD
from cxrlib.preprocess.views import resize_image

# fastai 2.8 scripts a layer with torch.jit.script when it is first imported (below, inside the
# functions); torch deprecates that with a FutureWarning naming a file of the installation, which
# nothing here can act on and which would otherwise print into every training notebook's report.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated",
                        category=FutureWarning)

__all__ = [
    "Augmentation", "ARIAS_AUGMENTATION", "INCEPTION_AUGMENTATION", "TrainingRecipe", "RECIPES",
    "DEFAULT_RECIPE", "get_recipe", "prepare_images", "load_images", "ClassifierDataset",
    "balanced_class_weights", "TrainedClassifier", "train_classifier", "predict",
    "augment_batch", "normalise_batch",
]


# --------------------------------------------------------------------------------------------
# Augmentation


@dataclass(frozen=True)
class Augmentation:
    """Random training transforms of a (1, S, S) image in [0, 1] (torchvision ``v2``).

    Applied in this order: horizontal flip with probability ``hflip``; a random affine map
    (rotation in +-``rotation_deg`` degrees, scaling in ``scale``, shift up to ``translate`` x the
    side); with probability ``elastic_p`` an elastic deformation (``ElasticTransform(alpha,
    sigma)``, displacements in pixels); with probability ``noise_p`` additive Gaussian noise of
    variance ``noise_var`` (intensity units), clipped to [0, 1].
    """

    hflip: float = 0.5
    rotation_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.0
    elastic_p: float = 0.5
    elastic_alpha: float = 50.0
    elastic_sigma: float = 5.0
    noise_p: float = 0.5
    noise_var: float = 0.015

    def build(self):
        """The torchvision ``v2.Compose`` implementing these settings."""
        from torchvision.transforms import v2

        steps = []
        if self.hflip > 0:
            steps.append(v2.RandomHorizontalFlip(p=self.hflip))
        if self.rotation_deg > 0 or self.scale != (1.0, 1.0) or self.translate > 0:
            steps.append(v2.RandomAffine(
                degrees=self.rotation_deg,
                translate=(self.translate, self.translate) if self.translate > 0 else None,
                scale=self.scale, interpolation=v2.InterpolationMode.BILINEAR))
        if self.elastic_p > 0:
            steps.append(v2.RandomApply(
                [v2.ElasticTransform(alpha=self.elastic_alpha, sigma=self.elastic_sigma)],
                p=self.elastic_p))
        if self.noise_p > 0 and self.noise_var > 0:
            steps.append(v2.RandomApply(
                [v2.GaussianNoise(mean=0.0, sigma=math.sqrt(self.noise_var), clip=True)],
                p=self.noise_p))
        return v2.Compose(steps)


def _gaussian_kernel1d(size: int, sigma: float, device) -> torch.Tensor:
    """torchvision's Gaussian kernel (``gaussian_blur``), whose 2-D kernel is its outer product."""
    lim = (size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=size, device=device)
    return torch.softmax(x.div(sigma).pow(2).neg(), dim=0)


def _blurred_noise(shape, sigma: float, device, generator=None) -> torch.Tensor:
    """Uniform noise in [-1, 1) of ``shape`` (B, 1, H, W), blurred as torchvision's
    ``ElasticTransform`` blurs it (kernel ``int(8 sigma + 1)``, made odd; reflected borders), with
    the separable form of its 2-D kernel."""
    from torch.nn import functional as F

    noise = torch.rand(shape, device=device, generator=generator) * 2 - 1
    if sigma <= 0:
        return noise
    size = int(8 * sigma + 1)
    size += 1 - size % 2
    size = min(size, 2 * min(shape[-2:]) - 1)  # reflected padding must fit the image
    kernel = _gaussian_kernel1d(size, sigma, device)
    pad = size // 2
    out = F.conv2d(F.pad(noise, (pad, pad, 0, 0), mode="reflect"), kernel.view(1, 1, 1, size))
    return F.conv2d(F.pad(out, (0, 0, pad, pad), mode="reflect"), kernel.view(1, 1, size, 1))


def augment_batch(images: torch.Tensor, augmentation: "Augmentation",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """:class:`Augmentation`'s random transforms, drawn for every image of a batch at once on the
    batch's device (the study's GPU augmentation, ``DeviceSettings.device_augmentation``).

    The same transforms with the same distributions as :meth:`Augmentation.build` (flip; random
    affine map: rotation, scale, shift in pixels; elastic deformation with torchvision's
    displacement field; clipped Gaussian noise), each drawn per image, with one difference: the
    affine map and the elastic deformation are composed into a single bilinear resampling (the
    elastic displacement taken through the affine map, as applying them one after the other
    does) instead of two. The random draws are not those of the per-image transforms.

    Parameters
    ----------
    images : (B, 1, S, S) float in [0, 1].
    generator : a ``torch.Generator`` on the batch's device (None: the global one).

    Returns (B, 1, S, S) float32.
    """
    from torch.nn import functional as F

    a = augmentation
    x = images.float()
    b, _, h, w = x.shape
    device = x.device

    def draw(*shape):
        return torch.rand(shape, device=device, generator=generator)

    if a.hflip > 0:
        x = torch.where((draw(b) < a.hflip).view(b, 1, 1, 1), x.flip(-1), x)
    affine = a.rotation_deg > 0 or tuple(a.scale) != (1.0, 1.0) or a.translate > 0
    elastic = a.elastic_p > 0
    if affine or elastic:
        angle = (draw(b) * 2 - 1) * math.radians(a.rotation_deg)
        scale = a.scale[0] + draw(b) * (a.scale[1] - a.scale[0])
        # torchvision rounds the shift to whole pixels; in grid units a pixel is 2 / side
        shift = torch.round((draw(b, 2) * 2 - 1) * a.translate * torch.tensor(
            [w, h], device=device, dtype=torch.float32)) * torch.tensor(
            [2.0 / w, 2.0 / h], device=device)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        inverse = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
        theta = torch.cat([inverse, -(inverse @ shift.unsqueeze(-1))], dim=-1)  # (B, 2, 3)
        grid = F.affine_grid(theta, (b, 1, h, w), align_corners=False)
        if elastic:
            dx = _blurred_noise((b, 1, h, w), a.elastic_sigma, device, generator) \
                * a.elastic_alpha / w
            dy = _blurred_noise((b, 1, h, w), a.elastic_sigma, device, generator) \
                * a.elastic_alpha / h
            on = (draw(b) < a.elastic_p).view(b, 1, 1, 1).float()
            displacement = torch.cat([dx, dy], 1).permute(0, 2, 3, 1) * on  # (B, H, W, 2)
            grid = grid + displacement @ inverse.transpose(1, 2).unsqueeze(1)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if a.noise_p > 0 and a.noise_var > 0:
        noisy = (x + torch.randn(x.shape, device=device, generator=generator)
                 * math.sqrt(a.noise_var)).clamp(0.0, 1.0)
        x = torch.where((draw(b) < a.noise_p).view(b, 1, 1, 1), noisy, x)
    return x


#: Seed 001: flip, Gaussian noise (variance 0.015), small rotation, elastic deformation, scaling
#: 0.9-1.1. The paper gives no probabilities or rotation range; these are ours.
ARIAS_AUGMENTATION = Augmentation()
#: Seed 003: random mirroring, crops of 0-20% (zoom 1-1.25), shifts of up to 10 of 299 pixels,
#: rotations in +-15 degrees.
INCEPTION_AUGMENTATION = Augmentation(
    hflip=0.5, rotation_deg=15.0, scale=(1.0, 1.25), translate=10 / 299, elastic_p=0.0, noise_p=0.0)


# --------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class TrainingRecipe:
    """How one paper trains its classifier.

    Attributes
    ----------
    name : recipe name (the ``method`` column of the predictions table).
    source : where the settings come from.
    optimizer : ``"adam"`` (PyTorch's Adam: betas 0.9/0.999, eps 1e-8, L2 weight decay) or
        ``"sgd_nesterov"`` (SGD with Nesterov momentum ``momentum``).
    lr : initial learning rate.
    weight_decay : L2 penalty.
    momentum : SGD momentum.
    schedule : ``"constant"``; ``"plateau"`` (multiply the rate by ``plateau_factor`` after
        ``plateau_patience`` epochs without a lower validation loss, not below ``min_lr``);
        ``"inverse_time"`` (Keras' ``decay``: ``lr / (1 + decay * step)`` with ``decay = lr /
        epochs`` per optimisation step); ``"cosine"`` (cosine decay from ``lr`` to 0);
        ``"one_cycle"`` (fastai's ``fit_one_cycle`` with peak ``lr``: warm-up, then cosine
        annealing, with the inverse momentum cycle).
    class_weight : ``"balanced"`` (loss weights ``n / (C * n_c)`` from the training split) or
        None.
    batch_size, epochs : images per step, passes over the training split.
    select_best : keep the weights of the epoch with the lowest validation loss (else the last).
    early_stopping_patience : stop after this many epochs without improvement (None: never).
    augmentation : training augmentation, or None.
    augment_classes : only images of these classes are augmented (seed 001 augments pneumonia
        and COVID-19); None augments every class.
    weights : ``"imagenet"`` to start from locally cached ImageNet weights, or None.
    freeze_trunk : train only the fully connected layers (seed 004).
    hidden_units : extra FC layer of the torchvision models (seed 000's ResNet-50: 512).
    precise_bn_batches : before each validation, recompute the batch-norm statistics from this
        many training batches (0: off; see ``PreciseBatchNorm`` in :func:`train_classifier`).
    """

    name: str
    source: str
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "constant"
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    min_lr: float = 0.0
    class_weight: str | None = None
    batch_size: int = 32
    epochs: int = 20
    select_best: bool = True
    early_stopping_patience: int | None = None
    augmentation: Augmentation | None = None
    augment_classes: tuple[str, ...] | None = None
    weights: str | None = None
    freeze_trunk: bool = False
    hidden_units: int | None = None
    precise_bn_batches: int = 0

    def __post_init__(self):
        if self.optimizer not in ("adam", "sgd_nesterov"):
            raise ValueError(f"recipe {self.name!r}: unknown optimizer {self.optimizer!r}")
        if self.schedule not in ("constant", "plateau", "inverse_time", "cosine", "one_cycle"):
            raise ValueError(f"recipe {self.name!r}: unknown schedule {self.schedule!r}")
        if self.class_weight not in (None, "balanced"):
            raise ValueError(f"recipe {self.name!r}: class_weight must be 'balanced' or None")
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError(f"recipe {self.name!r}: lr, batch_size and epochs must be positive")

    def with_overrides(self, **changes) -> "TrainingRecipe":
        """A copy with some fields changed (unknown names raise ``TypeError``)."""
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)


RECIPES: dict[str, TrainingRecipe] = {
    "arias2020": TrainingRecipe(
        name="arias2020", source="seed 001: Adam 2e-5, ReduceLROnPlateau(0.5, 3), weighted CE, "
        "batch 32, 24 epochs, augmentation of pneumonia and COVID-19",
        optimizer="adam", lr=2e-5, weight_decay=1e-7, schedule="plateau", plateau_factor=0.5,
        plateau_patience=3, min_lr=1e-5, class_weight="balanced", batch_size=32, epochs=24,
        select_best=True, augmentation=ARIAS_AUGMENTATION,
        augment_classes=("pneumonia", "covid19")),
    "civit2020": TrainingRecipe(
        name="civit2020", source="seed 002: Adam 1e-3 with decay lr/epochs, batch 32, 40 epochs",
        optimizer="adam", lr=1e-3, schedule="inverse_time", batch_size=32, epochs=40,
        select_best=False),
    "tabik2020": TrainingRecipe(
        name="tabik2020", source="seed 000: ResNet-50 from ImageNet, GAP + FC 512, SGD 1e-3 "
        "Nesterov momentum 0.9, batch 16, early stopping on 10% of the training set",
        optimizer="sgd_nesterov", lr=1e-3, momentum=0.9, batch_size=16, epochs=30,
        select_best=True, early_stopping_patience=5, weights="imagenet", hidden_units=512),
    "inception2020": TrainingRecipe(
        name="inception2020", source="seed 003: Inception from ImageNet, Adam, cosine decay from "
        "1e-4, batch 64, at most 30 epochs, early stopping patience 5",
        optimizer="adam", lr=1e-4, schedule="cosine", batch_size=64, epochs=30, select_best=True,
        early_stopping_patience=5, augmentation=INCEPTION_AUGMENTATION, weights="imagenet"),
    "soares2020": TrainingRecipe(
        name="soares2020", source="seed 004: frozen ImageNet convolutional layers, Adam 1e-3, "
        "batch 15, 80 epochs", optimizer="adam", lr=1e-3, batch_size=15, epochs=80,
        select_best=False, weights="imagenet", freeze_trunk=True),
}

#: Seed 001's recipe with a learning rate that learns within a few CPU epochs (Adam 1e-3 instead
#: of 2e-5) and batch-norm statistics recomputed before each validation (profiles with
#: ``cls_recipe="arias2020-fast"``).
RECIPES["arias2020-fast"] = RECIPES["arias2020"].with_overrides(
    name="arias2020-fast", lr=1e-3, precise_bn_batches=8,
    source="seed 001's recipe with Adam 1e-3 (not 2e-5) and precise batch-norm statistics")

#: The recipe each model is trained with unless another is named.
DEFAULT_RECIPE = {"covidnet": "arias2020", "vgg16": "civit2020", "resnet50": "tabik2020",
                  "resnet18": "tabik2020", "inception_v3": "inception2020",
                  "xception": "soares2020"}


def get_recipe(name: str | TrainingRecipe) -> TrainingRecipe:
    """The recipe called ``name`` (a :class:`TrainingRecipe` is returned unchanged)."""
    if isinstance(name, TrainingRecipe):
        return name
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown training recipe {name!r}; "
                         f"choose one of {sorted(RECIPES)}") from None


# --------------------------------------------------------------------------------------------
# Images


def _prepare_one(image: np.ndarray, image_size: int) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image (H, W), got shape {image.shape}")
    h, w = image.shape
    if (h, w) == (image_size, image_size):
        return image
    scale = image_size / min(h, w)
    new_h, new_w = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    resized = resize_image(image, (new_h, new_w))
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    return resized[top:top + image_size, left:left + image_size].astype(np.float32)


def prepare_images(images: Sequence[np.ndarray] | np.ndarray, image_size: int) -> np.ndarray:
    """Resize grayscale images for the network: shorter side to ``image_size``, centre square kept.

    Parameters
    ----------
    images : (N, H, W) array or a sequence of 2-D arrays (sizes may differ), intensities in [0, 1].
    image_size : output side S in pixels.

    Returns
    -------
    float32 array (N, S, S), clipped to [0, 1].
    """
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    out = np.empty((len(images), image_size, image_size), dtype=np.float32)
    for i, image in enumerate(images):
        try:
            out[i] = _prepare_one(image, image_size)
        except ValueError as exc:
            raise ValueError(f"image {i}: {exc}") from None
    return np.clip(out, 0.0, 1.0, out=out)


def load_images(paths: Sequence[str | Path], image_size: int, progress: bool = False) -> np.ndarray:
    """Read image files (:func:`cxrlib.data.images.read_image`) and :func:`prepare_images` them.

    Returns float32 (N, S, S) in [0, 1].
    """
    out = np.empty((len(paths), image_size, image_size), dtype=np.float32)
    for i, path in enumerate(tqdm(paths, desc="images", disable=not progress, leave=False)):
        out[i] = _prepare_one(read_image(path), image_size)
    return np.clip(out, 0.0, 1.0, out=out)


class ClassifierDataset(torch.utils.data.Dataset):
    """(image, label) pairs for the classifiers.

    Parameters
    ----------
    images : float32 (N, S, S) in [0, 1] (see :func:`prepare_images`).
    labels : int (N,) class indices.
    augmentation : training transforms, or None (validation, test).
    augment : bool (N,), which images get the augmentation (default: all).
    normalise : False: items are the (1, S, S) images in [0, 1], for a batch transform on the
        device to augment and normalise (:func:`normalise_batch`).

    Items: ``x`` float32 tensor (3, S, S), the gray image repeated on 3 channels and normalised
    with the ImageNet mean/std; ``y`` int64 scalar tensor.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray,
                 augmentation: Augmentation | None = None, augment: np.ndarray | None = None,
                 normalise: bool = True):
        images = np.asarray(images, dtype=np.float32)
        labels = np.asarray(labels)
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be a (N, S, S) array, got shape {images.shape}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
        self.images = torch.from_numpy(np.ascontiguousarray(images))[:, None]
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.transform = augmentation.build() if augmentation is not None else None
        if augment is None:
            augment = np.ones(len(images), dtype=bool)
        self.augment = np.asarray(augment, dtype=bool)
        if self.augment.shape != (len(images),):
            raise ValueError(f"augment must have shape ({len(images)},), got {self.augment.shape}")
        self.mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
        self.normalise = bool(normalise)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        if self.transform is not None and self.augment[i]:
            from torchvision import tv_tensors

            x = self.transform(tv_tensors.Image(x)).as_subclass(torch.Tensor)
        if not self.normalise:
            return x, self.labels[i]
        return (x.expand(3, -1, -1) - self.mean) / self.std, self.labels[i]


def normalise_batch(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) images in [0, 1] -> (B, 3, S, S) with the ImageNet mean/std, as
    :class:`ClassifierDataset` gives them."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float().expand(-1, 3, -1, -1) - mean) / std


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """scikit-learn's 'balanced' weights ``n / (n_classes * count_c)``, float32 (n_classes,).

    Raises ``ValueError`` when a class has no image (its weight would be infinite).
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        raise ValueError(f"class index(es) {np.flatnonzero(counts == 0).tolist()} have no training "
                         "image: balanced class weights need every class")
    weights = compute_class_weight("balanced", classes=np.arange(n_classes), y=labels)
    return weights.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainedClassifier:
    """What :func:`train_classifier` returns.

    Attributes
    ----------
    model : the selected weights (CPU, eval mode).
    history : one row per epoch: ``epoch`` (0-based), ``train_loss``, ``valid_loss``,
        ``accuracy``, ``balanced_accuracy`` (validation), ``lr`` (rate used in the epoch), ``time``.
    best_epoch : epoch whose weights were kept.
    stopped_early : True when early stopping ended the training.
    seconds : wall time of the training.
    recipe : the recipe used (with overrides).
    notes : what the training said (tracker messages, fallbacks).
    precision : ``"fp32"``, or ``"bf16"`` / ``"fp16"`` in mixed precision
        (:meth:`cxrlib.gpu.DeviceSettings.precision`).
    """

    model: torch.nn.Module
    history: pd.DataFrame
    best_epoch: int
    stopped_early: bool
    seconds: float
    recipe: TrainingRecipe
    notes: list[str] = field(default_factory=list)
    precision: str = "fp32"


def _optimizer(recipe: TrainingRecipe):
    from fastai.optimizer import Adam, OptimWrapper

    if recipe.optimizer == "adam":
        # PyTorch's Adam (the papers' code): betas (0.9, 0.999), eps 1e-8, L2 weight decay
        return partial(Adam, mom=0.9, sqr_mom=0.999, eps=1e-8, decouple_wd=False)
    return partial(OptimWrapper, opt=torch.optim.SGD, momentum=recipe.momentum, nesterov=True)


def _inverse_time(lr: float, decay_per_step: float, total_steps: int):
    def schedule(pct: float) -> float:
        return lr / (1.0 + decay_per_step * pct * total_steps)
    return schedule


def _make_keep_best():
    from fastai.callback.tracker import TrackerCallback

    class KeepBestWeights(TrackerCallback):
        """Keep, in memory, the weights of the epoch with the best monitored value."""

        order = TrackerCallback.order + 1

        def before_fit(self):
            super().before_fit()
            self.best_state, self.best_epoch = None, None

        def after_epoch(self):
            super().after_epoch()
            if self.new_best:
                self.best_epoch = self.epoch
                self.best_state = {k: v.detach().to("cpu", copy=True)
                                   for k, v in self.learn.model.state_dict().items()}

    return KeepBestWeights()


def _make_precise_bn(n_batches: int, prepare=None):
    from fastai.callback.core import Callback

    class PreciseBatchNorm(Callback):
        """Before each validation, :func:`precise_batchnorm` on up to ``n_batches`` training
        batches, so that the current weights are validated with their own statistics
        (``prepare(x, y)``: what the training does to a batch first, e.g. augment it on the
        device)."""

        order = 1  # after TrainEvalCallback has put the model in eval mode

        def before_validate(self):
            batches = itertools.islice(self.learn.dls.train, n_batches)
            if prepare is not None:
                batches = (prepare(x, y) for x, y in batches)
            precise_batchnorm(self.learn.model, batches)

    return PreciseBatchNorm()


def _make_device_augmentation(augmentation: Augmentation | None, augmented: Sequence[int] | None):
    """A fastai callback that augments the training batches on the device
    (:func:`augment_batch`, the images of the classes ``augmented`` only; None: all) and
    normalises every batch (:func:`normalise_batch`); the datasets give raw images."""
    from fastai.callback.core import Callback

    class DeviceAugmentation(Callback):
        order = 4  # before channels-last (5) and mixed precision (10)

        def prepare(self, x, y, training=True):
            if training and augmentation is not None:
                on = torch.ones(len(x), dtype=torch.bool, device=x.device) if augmented is None \
                    else torch.isin(y, torch.as_tensor(list(augmented), device=y.device))
                if on.any():
                    x = torch.where(on.view(-1, 1, 1, 1), augment_batch(x, augmentation), x)
            return normalise_batch(x)

        def before_batch(self):
            self.learn.xb = (self.prepare(self.learn.xb[0], self.learn.yb[0], self.training),)

    return DeviceAugmentation()


def train_classifier(
    model: torch.nn.Module,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    valid_images: np.ndarray,
    valid_labels: np.ndarray,
    recipe: str | TrainingRecipe,
    classes: Sequence[str],
    log_path: str | Path | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    gpu: DeviceSettings | None = None,
    extra_callbacks: Sequence = (),
) -> TrainedClassifier:
    """Train ``model`` with a fastai ``Learner`` following ``recipe``.

    Parameters
    ----------
    model : a classifier from :func:`cxrlib.models.classifiers.build_classifier` (its output
        order is ``classes``).
    train_images, valid_images : float32 (N, S, S) in [0, 1] (:func:`prepare_images`).
    train_labels, valid_labels : int (N,) indices into ``classes``.
    recipe : a :class:`TrainingRecipe` or the name of one in :data:`RECIPES`.
    classes : class names, in output order (used to find ``recipe.augment_classes``).
    log_path : CSV file written by fastai's ``CSVLogger`` (one line per epoch), or None.
    seed : seeds Python, NumPy and torch for the shuffling and the augmentation (seed torch
        before building the model too for reproducible initial weights; ``run_crossval`` does).
    device : default CUDA when available, else CPU.
    progress : show fastai's progress bars and epoch table (off for batch runs).
    gpu : mixed precision, channels-last memory, DataLoader workers, augmentation on the
        device (:func:`augment_batch`) and cuDNN's autotuner
        (:class:`cxrlib.gpu.DeviceSettings`; None: all off). On the CPU only the workers act.
    extra_callbacks : more fastai callbacks for the ``Learner`` (e.g. a timer).

    The validation split (drawn from the training folds, never the test fold) drives the
    learning-rate plateau schedule, early stopping and the choice of the kept epoch.
    """
    from fastai.callback.progress import CSVLogger, ProgressCallback  # noqa: F401 (no_bar)
    from fastai.callback.schedule import ParamScheduler, SchedCos, fit_one_cycle  # noqa: F401
    from fastai.callback.tracker import EarlyStoppingCallback, ReduceLROnPlateau
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner, ValueMetric
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import BalancedAccuracy, accuracy
    from fastai.torch_core import set_seed

    recipe = get_recipe(recipe)
    classes = list(classes)
    n_classes = len(classes)
    for name, images, labels in (("train", train_images, train_labels),
                                 ("valid", valid_images, valid_labels)):
        if len(images) == 0:
            raise ValueError(f"no {name} images: training needs a training and a validation split")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} {name} images but {len(labels)} labels")
        labels = np.asarray(labels)
        if labels.min() < 0 or labels.max() >= n_classes:
            raise ValueError(f"{name} labels must be indices into {classes}, got values "
                             f"{sorted(set(labels.tolist()))}")
    unknown = set(recipe.augment_classes or ()) - set(classes)
    notes = []
    if unknown:
        notes.append(f"augment_classes {sorted(unknown)} are not among the classes {classes}")

    set_seed(seed, reproducible=True)
    device = default_device(device)
    gpu = OFF if gpu is None else gpu
    train_labels = np.asarray(train_labels, dtype=np.int64)
    wanted = None
    if recipe.augment_classes is None:
        augment = np.ones(len(train_labels), dtype=bool)
    else:
        wanted = [classes.index(c) for c in recipe.augment_classes if c in classes]
        augment = np.isin(train_labels, wanted)
    device_augmentation = None
    if gpu.augments_on_device(device):  # raw images; augmented and normalised on the device
        device_augmentation = _make_device_augmentation(recipe.augmentation, wanted)
        train_ds = ClassifierDataset(train_images, train_labels, normalise=False)
        valid_ds = ClassifierDataset(valid_images, np.asarray(valid_labels, dtype=np.int64),
                                     normalise=False)
    else:
        train_ds = ClassifierDataset(train_images, train_labels, recipe.augmentation, augment)
        valid_ds = ClassifierDataset(valid_images, np.asarray(valid_labels, dtype=np.int64))
    drop_last = len(train_ds) > recipe.batch_size  # avoid a 1-image batch-norm step
    dls = DataLoaders.from_dsets(train_ds, valid_ds, bs=recipe.batch_size, device=device,
                                 drop_last=(drop_last, False), **gpu.loader_options(device))

    weight = None
    if recipe.class_weight == "balanced":
        weight = torch.from_numpy(balanced_class_weights(train_labels, n_classes)).to(device)
    loss_func = CrossEntropyLossFlat(weight=weight)

    callbacks = []
    tracking = None
    if recipe.precise_bn_batches:
        callbacks.append(_make_precise_bn(
            recipe.precise_bn_batches,
            None if device_augmentation is None else device_augmentation.prepare))
    if recipe.select_best:
        tracking = _make_keep_best()
        callbacks.append(tracking)
    if recipe.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(patience=recipe.early_stopping_patience))
    if recipe.schedule == "plateau":
        callbacks.append(ReduceLROnPlateau(  # fastai divides the rate by ``factor``
            patience=recipe.plateau_patience, factor=1.0 / recipe.plateau_factor,
            min_lr=recipe.min_lr))
    elif recipe.schedule == "inverse_time":
        total_steps = recipe.epochs * len(dls.train)
        callbacks.append(ParamScheduler(
            {"lr": _inverse_time(recipe.lr, recipe.lr / recipe.epochs, total_steps)}))
    elif recipe.schedule == "cosine":
        callbacks.append(ParamScheduler({"lr": SchedCos(recipe.lr, 0.0)}))
    if log_path is not None:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        callbacks.append(CSVLogger(fname=log_path.resolve()))

    if device_augmentation is not None:
        callbacks.append(device_augmentation)
    callbacks += gpu.fastai_callbacks(device) + list(extra_callbacks)
    channels_last = gpu.memory_format(device) == torch.channels_last
    model = model.to(device, memory_format=torch.channels_last) if channels_last \
        else model.to(device)
    learn = Learner(dls, model, loss_func=loss_func, opt_func=_optimizer(recipe), lr=recipe.lr,
                    wd=recipe.weight_decay, wd_bn_bias=True, train_bn=True,
                    metrics=[accuracy, BalancedAccuracy()], cbs=callbacks)
    learn.metrics.append(ValueMetric(lambda: learn.opt.hypers[-1]["lr"], "lr"))

    start = time.perf_counter()
    messages = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(gpu.cudnn(device))
        # fastai's BalancedAccuracy warns about small validation batches lacking a class
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found in 'y_true'")
        if not progress:
            stack.enter_context(learn.no_bar())
            stack.enter_context(learn.no_logging())
            stack.enter_context(contextlib.redirect_stdout(messages))  # tracker callbacks print
        if recipe.schedule == "one_cycle":
            learn.fit_one_cycle(recipe.epochs, lr_max=recipe.lr, wd=recipe.weight_decay)
        else:
            learn.fit(recipe.epochs, lr=recipe.lr, wd=recipe.weight_decay)
    seconds = time.perf_counter() - start
    notes += [line for line in messages.getvalue().splitlines() if line.strip()]

    names = list(learn.recorder.metric_names[1:-1])  # drop 'epoch' and 'time'
    values = np.asarray([v[:len(names)] for v in learn.recorder.values], dtype=float)
    history = pd.DataFrame(values, columns=names).rename(
        columns={"balanced_accuracy_score": "balanced_accuracy"})
    history.insert(0, "epoch", np.arange(len(history)))
    n_epochs = len(history)
    best_epoch = n_epochs - 1
    if tracking is not None and tracking.best_state is not None:
        model.load_state_dict(tracking.best_state)
        best_epoch = int(tracking.best_epoch)
    elif tracking is not None:
        notes.append("validation loss never improved (NaN?): the last epoch's weights are kept")
    model = model.cpu()
    if channels_last:
        model = model.to(memory_format=torch.contiguous_format)
    return TrainedClassifier(
        model=model.eval(), history=history, best_epoch=best_epoch,
        stopped_early=n_epochs < recipe.epochs, seconds=seconds, recipe=recipe, notes=notes,
        precision=gpu.precision(device))


# --------------------------------------------------------------------------------------------
# Inference


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    images: np.ndarray,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and embeddings of prepared images, without augmentation.

    Parameters
    ----------
    model : a classifier with ``features`` and ``classifier`` (see
        :mod:`cxrlib.models.classifiers`).
    images : float32 (N, S, S) in [0, 1].

    Returns
    -------
    probabilities : float32 (N, n_classes), softmax of the logits (rows sum to 1).
    embeddings : float32 (N, D), the penultimate layer (``model.features``).
    """
    device = default_device(device)
    dataset = ClassifierDataset(images, np.zeros(len(images), dtype=np.int64))
    was_training = model.training
    model = model.to(device).eval()
    probabilities, embeddings = [], []
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        x = torch.stack([dataset[i][0] for i in range(start, stop)])
        features = model.features(x.to(device))
        probabilities.append(torch.softmax(model.classifier(features), dim=1).float().cpu())
        embeddings.append(features.float().cpu())
    model.train(was_training)
    if not probabilities:
        n_out = model.classifier.out_features
        return np.zeros((0, n_out), np.float32), np.zeros((0, model.embedding_dim), np.float32)
    return torch.cat(probabilities).numpy(), torch.cat(embeddings).numpy()
