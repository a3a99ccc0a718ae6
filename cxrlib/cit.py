"""Class-inherent transformations (FuCiTNet) and COVID-SDNet (seed 000): training and inference.

Seed 000 (Tabik et al. 2020, Sec. 4) turns each radiograph ``x`` into two images with two
generators learnt per class - ``G_N x`` (the "negative" transform, sign ``-``) and ``G_P x``
(the "positive" transform, sign ``+``) - and classifies both:

1. **CiT training** (FuCiTNet, Rey-Area et al. 2020): the generators and a classifier ``C``
   learn together. The images of class k go through ``G_k``; generator k minimises
   ``pixel MSE + 0.006 perceptual MSE + 2e-8 TV + lambda CE(C(G_k x), k)`` (:func:`generator_loss`)
   and ``C`` minimises the cross-entropy of all transformed images. Early stopping on a
   validation split drawn from the training folds (:func:`cxrlib.splits.fold_split`).
   **FuCiTNet alone** predicts the class k whose transform ``C`` finds most typical of k:
   ``argmax_k softmax(C(G_k x))_k`` (:func:`fucitnet_probabilities`).
2. **COVID-SDNet**: every training image gives ``G_P x`` and ``G_N x`` labelled P+/P- or N+/N-
   (:func:`sdnet_dataset`); a 4-class network (ResNet-50 -> GAP -> FC 512 ReLU -> FC 4 in the
   paper) learns them, and the two output vectors of a test image are fused by seed 000's rule
   (:func:`sdnet_fusion`).

Arrays: images float32 (N, S, S), intensities in [0, 1] (the generators' outputs are
unbounded but stay close); labels int class indices into ``classes`` (binary: 0 = negative
``control``, 1 = positive ``covid19``). Networks receive the gray image repeated on 3 channels
with the ImageNet mean/std (:func:`to_network_input`), as every classifier of the study.

The joint training is a plain PyTorch loop rather than a fastai ``Learner``: it steps two
optimisers with different schedules (generators: Adam 1e-4, weight decay 1e-4; classifier:
Adam 1e-3, StepLR(5, 0.1)) from one backward pass, in which :func:`scale_gradient` gives the
generators lambda times the classifier's gradient (see :func:`cit_step`).

:func:`run_cit_crossval` does both stages fold by fold with the split plan of notebook 00 and
writes the rows of models ``fucitnet`` and ``covid-sdnet`` into ``predictions.parquet``; each
fold also leaves ``cit/<stem>.pth`` (generators and CiT classifier), ``cit/<stem>_history.csv``
(one line per epoch) and ``cit/<stem>_split.csv`` (image_id, role: the images that trained,
validated and tested it), and a line in ``cit_runs.csv``. Each fold is a unit of work
(:mod:`cxrlib.units`: :func:`cit_specs`, :func:`cit_fold`) that any executor may run; its rows
and line reach the tables through its shard, merged by the calling process.
"""
from __future__ import annotations

import contextlib
import copy
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cxrlib.cv_report import CIT_PAPER_METHODS, classifier_setup, recipe_for
from cxrlib.gpu import OFF, DeviceSettings
from cxrlib.models.cit import CiTGenerator
from cxrlib.models.classifiers import (
    IMAGENET_MEAN, IMAGENET_STD, WIDTH_SCALABLE, build_classifier, find_imagenet_weights,
)
from cxrlib.predictions import artifact_stem, make_predictions, validate_predictions
from cxrlib.splits import check_split_plan, fold_split
from cxrlib.training import (
    TrainingRecipe, default_device, load_images, precise_batchnorm, predict, train_classifier,
)
from cxrlib.units import (
    FoldSpec, data_hash, inputs_table, make_spec, read_inputs, run_units, write_inputs,
)

__all__ = [
    "CIT_MODELS", "SDNET_CLASSES", "CiTRecipe", "CIT_RECIPES", "pixel_mse", "perceptual_mse",
    "total_variation", "classifier_ce", "generator_loss", "perceptual_network", "to_network_input",
    "scale_gradient", "cit_step", "TrainedCiT", "train_cit", "transform_images",
    "fucitnet_probabilities", "sdnet_dataset", "sdnet_fusion", "sdnet_probabilities",
    "CiTSetup", "run_cit_crossval", "cit_specs", "cit_fold", "load_cit", "read_cit_runs",
    "read_cit_history",
    "plot_transforms", "plot_cit_history",
]

#: The two methods of seed 000 built on the transformations (the ``model`` column).
CIT_MODELS = tuple(CIT_PAPER_METHODS)
#: COVID-SDNet's four classes, in the paper's order: true class P/N, transform +/-.
SDNET_CLASSES = ("P+", "P-", "N+", "N-")
CIT_RUNS_FILE = "cit_runs.csv"
#: The key of a line of :data:`CIT_RUNS_FILE`.
RUNS_KEY = ("experiment", "lam", "repetition", "fold")


# --------------------------------------------------------------------------------------------
# Recipe


@dataclass(frozen=True)
class CiTRecipe:
    """How the generators and the CiT classifier are trained together.

    Attributes
    ----------
    name, source : recipe name and where its values come from.
    lam : weight lambda of the classifier cross-entropy in the generator loss.
    perceptual_weight, tv_weight : weights of the perceptual MSE and the total variation.
    generator_lr, generator_weight_decay : Adam for the generators (L2 weight decay).
    classifier_lr : Adam for the classifier, multiplied by ``gamma`` every ``step_size`` epochs.
    batch_size, epochs : images per step, passes over the training split.
    early_stopping_patience : stop after this many epochs without a lower validation loss
        (the cross-entropy of the fused FuCiTNet prediction); the best epoch's weights are kept.
    warmup_epochs : first epochs trained with lambda = 0, so that the generators learn to
        reconstruct their input before the classifier's gradient reaches them (as SRGAN
        pretrains its generator on the pixel loss); 0 in the paper. The last epoch always has
        lambda, and only epochs with lambda are candidates for the kept weights.
    precise_bn_batches : before each validation, recompute the batch-norm statistics of the
        generators (on their class's training images) and of the classifier (on the transformed
        images) from this many training batches (0: off), as ``precise_bn_batches`` of
        :class:`cxrlib.training.TrainingRecipe`: after a few quick steps the running averages
        lag behind the weights.
    """

    name: str
    source: str
    lam: float = 0.05
    perceptual_weight: float = 0.006
    tv_weight: float = 2e-8
    generator_lr: float = 1e-4
    generator_weight_decay: float = 1e-4
    classifier_lr: float = 1e-3
    step_size: int = 5
    gamma: float = 0.1
    batch_size: int = 32
    epochs: int = 30
    early_stopping_patience: int | None = 5
    warmup_epochs: int = 0
    precise_bn_batches: int = 0

    def __post_init__(self):
        if self.lam < 0 or self.batch_size < 2 or self.epochs < 1:
            raise ValueError(f"CiT recipe {self.name!r}: lam must be >= 0, batch_size >= 2 and "
                             f"epochs >= 1 (got {self.lam}, {self.batch_size}, {self.epochs})")

    def with_overrides(self, **changes) -> "CiTRecipe":
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)


CIT_RECIPES = {
    "fucitnet2020": CiTRecipe(
        name="fucitnet2020", source="seed 000 / FuCiTNet: generators Adam 1e-4 (weight decay "
        "1e-4), ResNet-18 Adam 1e-3 StepLR(5, 0.1), batch 32, lambda 0.05, early stopping"),
    "fucitnet-fast": CiTRecipe(
        name="fucitnet-fast", source="FuCiTNet with generator learning rate 1e-3 (not 1e-4), "
        "so that randomly initialised generators approach the identity within a few CPU epochs, "
        "a first epoch without the classifier term (lambda 0) and precise batch-norm statistics "
        "before each validation", generator_lr=1e-3, warmup_epochs=1, precise_bn_batches=4),
}


# --------------------------------------------------------------------------------------------
# Loss terms (tensors in, scalar tensor out)


def pixel_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two (N, C, H, W) image batches."""
    return F.mse_loss(output, target)


def perceptual_mse(features: nn.Module, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of ``features`` (frozen; VGG16 to pool5) of two (N, 1, H, W)
    image batches in [0, 1] (each passed through :func:`to_network_input`). The target's
    features carry no gradient."""
    with torch.no_grad():
        wanted = features(to_network_input(target))
    return F.mse_loss(features(to_network_input(output)), wanted)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """SRGAN's total-variation loss (the FuCiTNet code's ``TVLoss``) of (N, C, H, W) images:
    ``2 * (mean of squared vertical differences + mean of squared horizontal differences)``."""
    vertical = (images[:, :, 1:, :] - images[:, :, :-1, :]).pow(2).mean()
    horizontal = (images[:, :, :, 1:] - images[:, :, :, :-1]).pow(2).mean()
    return 2 * (vertical + horizontal)


def classifier_ce(logits: torch.Tensor, target_class: int) -> torch.Tensor:
    """Mean cross-entropy of (N, K) logits against one class index for every row."""
    target = torch.full((len(logits),), int(target_class), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


def generator_loss(output: torch.Tensor, target: torch.Tensor, logits: torch.Tensor,
                   generator_class: int, features: nn.Module, recipe: CiTRecipe) -> dict:
    """The terms of generator k's loss on the images of its class, and their weighted sum.

    Parameters
    ----------
    output : (N, 1, H, W) ``G_k(x)``; target : (N, 1, H, W) ``x``.
    logits : (N, K) ``C(G_k(x))``.
    generator_class : k.
    features : the perceptual network.

    Returns ``{"pixel", "perceptual", "tv", "ce", "total"}`` (scalar tensors) with
    ``total = pixel + perceptual_weight * perceptual + tv_weight * tv + lam * ce``.
    """
    terms = {"pixel": pixel_mse(output, target),
             "perceptual": perceptual_mse(features, output, target),
             "tv": total_variation(output),
             "ce": classifier_ce(logits, generator_class)}
    terms["total"] = (terms["pixel"] + recipe.perceptual_weight * terms["perceptual"]
                      + recipe.tv_weight * terms["tv"] + recipe.lam * terms["ce"])
    return terms


# --------------------------------------------------------------------------------------------
# Networks around the generators


def to_network_input(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) gray images in [0, 1] -> (N, 3, H, W) with the ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images.expand(-1, 3, -1, -1) - mean) / std


def perceptual_network(width: float = 1.0, weights: str | Path | None = "imagenet",
                       seed: int = 0) -> tuple[nn.Module, str]:
    """VGG16's convolutional layers up to pool5, frozen, in eval mode.

    Parameters
    ----------
    width : channel multiplier of VGG16.
    weights : ``"imagenet"`` (the locally cached torchvision file, see
        :func:`cxrlib.models.classifiers.find_imagenet_weights`; only at ``width`` 1), a path
        to a VGG16 state dict, or None.
    seed : seeds the random initialisation of the substitute.

    Returns (features, description). **Substitute** when no ImageNet file is found or
    ``width`` < 1: the same layers randomly initialised (He initialisation) and frozen. Random
    convolutional features still measure multi-scale structure (He, Wang & Hopcroft 2016,
    "A powerful generative model using random weights for the deep image representation"),
    cost no training and cannot leak test images, which a VGG16 trained on the cohort would
    unless retrained per fold.
    """
    use = None
    if weights is not None and width == 1.0:
        use = weights if not (isinstance(weights, str) and weights == "imagenet") \
            else find_imagenet_weights("vgg16")
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        net = build_classifier("vgg16", 2, width=width, weights=use)
    features = net.backbone.features
    if use is not None:
        description = f"VGG16 to pool5, {net.init_description}"
    else:
        why = ("no local ImageNet VGG16 file" if width == 1.0
               else f"width {width} (ImageNet weights need width 1)")
        description = (f"VGG16 (width {width}) to pool5, randomly initialised and frozen: {why} "
                       "- documented substitute for the ImageNet VGG16")
    for p in features.parameters():
        p.requires_grad_(False)
    return features.eval(), description


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def scale_gradient(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient flowing back by ``scale`` (a
    scalar or a tensor broadcastable to ``x``, e.g. (N, 1, 1, 1) per image)."""
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    return _ScaleGradient.apply(x, scale)


def _classifier_for_cit(name: str, n_classes: int, image_size: int, width: float,
                        weights: str | None) -> nn.Module:
    """The CiT classifier; with ImageNet weights a ResNet keeps its stem and layer1 frozen."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the fallback is in init_description
        model = build_classifier(name, n_classes, image_size=image_size, width=width,
                                 weights=weights)
    if model.init_description.startswith("ImageNet") and name.startswith("resnet"):
        net = model.backbone
        for module in (net.conv1, net.bn1, net.layer1):
            for p in module.parameters():
                p.requires_grad_(False)
        model.init_description += "; conv1, bn1 and layer1 frozen"
    return model


# --------------------------------------------------------------------------------------------
# Joint training


def cit_step(generators: nn.ModuleList, classifier: nn.Module, features: nn.Module,
             x: torch.Tensor, y: torch.Tensor, recipe: CiTRecipe,
             gpu: DeviceSettings | None = None, scaler=None) -> dict:
    """Losses of one batch, backpropagated once (no optimiser step).

    Parameters
    ----------
    x : (B, 1, S, S) images in [0, 1]; y : (B,) class indices.
    gpu : the forward pass runs in its autocast (:meth:`cxrlib.gpu.DeviceSettings.autocast`
        on ``x``'s device; None: float32).
    scaler : a ``GradScaler`` that scales the loss before the backward pass (float16), or None.

    The images of class k go through ``G_k``; all transformed images are classified in one
    batch (so that batch normalisation never sees a single class). The backward pass gives the
    classifier the gradient of the batch's mean cross-entropy, and generator k the gradient of
    :func:`generator_loss` over its images: the classifier's gradient reaches ``G_k`` scaled by
    ``lam * B / B_k`` (:func:`scale_gradient`), which turns its share ``B_k / B`` of the batch
    mean into ``lam`` times the mean over its own images.

    Returns the batch's loss terms as floats (``pixel``, ``perceptual``, ``tv``, ``ce``,
    ``generator``: the generator losses weighted by their share of the batch).
    """
    autocast = contextlib.nullcontext() if gpu is None else gpu.autocast(x.device)
    outputs, targets, scales, classes_in_batch = [], [], [], []
    with autocast:
        for k in torch.unique(y).tolist():
            xk = x[y == k]
            outputs.append(generators[k](xk))
            targets.append(xk)
            scales.append(torch.full((len(xk), 1, 1, 1), recipe.lam * len(x) / len(xk)))
            classes_in_batch.append((k, len(xk)))
        transformed = torch.cat(outputs)
        labels = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in classes_in_batch])
        logits = classifier(to_network_input(scale_gradient(transformed,
                                                            torch.cat(scales).to(x))))
        ce = F.cross_entropy(logits, labels.to(x.device))
        image_terms = {"pixel": 0.0, "perceptual": 0.0, "tv": 0.0}
        image_loss = 0.0
        for output, target, (k, n) in zip(outputs, targets, classes_in_batch):
            share = n / len(x)
            parts = {"pixel": pixel_mse(output, target),
                     "perceptual": perceptual_mse(features, output, target),
                     "tv": total_variation(output)}
            image_loss = image_loss + parts["pixel"] \
                + recipe.perceptual_weight * parts["perceptual"] + recipe.tv_weight * parts["tv"]
            for name, value in parts.items():
                image_terms[name] += share * value.item()
    loss = image_loss + ce
    (loss if scaler is None else scaler.scale(loss)).backward()
    out = {name: value for name, value in image_terms.items()}
    out["ce"] = ce.item()
    out["generator"] = (out["pixel"] + recipe.perceptual_weight * out["perceptual"]
                        + recipe.tv_weight * out["tv"] + recipe.lam * out["ce"])
    return out


@torch.no_grad()
def transform_images(generators: nn.ModuleList, images: np.ndarray, batch_size: int = 64,
                     device: str | torch.device | None = None) -> np.ndarray:
    """Every image through every generator: float32 (K, N, S, S) from (N, S, S) (eval mode)."""
    device = default_device(device)
    images = np.asarray(images, dtype=np.float32)
    was_training = generators.training
    generators = generators.to(device, memory_format=torch.channels_last).eval()
    out = np.empty((len(generators),) + images.shape, dtype=np.float32)
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size])[:, None].to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        for k, g in enumerate(generators):
            out[k, start:start + len(x)] = g(x)[:, 0].cpu().numpy()
    generators.to(memory_format=torch.contiguous_format).train(was_training)
    return out


def fucitnet_probabilities(generators: nn.ModuleList, classifier: nn.Module,
                           images: np.ndarray, device=None,
                           transformed: np.ndarray | None = None) -> np.ndarray:
    """FuCiTNet's fused prediction: float32 (N, K), rows summing to 1.

    ``s_k = softmax(C(G_k x))_k`` - how typical of class k the classifier finds the image once
    ``G_k`` has transformed it - normalised over k; the predicted class is ``argmax_k s_k``.
    ``transformed`` (K, N, S, S) may pass :func:`transform_images` output computed already.
    """
    if transformed is None:
        transformed = transform_images(generators, images, device=device)
    scores = np.stack([predict(classifier, transformed[k], device=device)[0][:, k]
                       for k in range(len(transformed))], axis=1)
    scores = np.clip(scores, 1e-12, None)
    return (scores / scores.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass
class TrainedCiT:
    """What :func:`train_cit` returns.

    Attributes
    ----------
    generators : ``nn.ModuleList`` (K,) with ``G_k`` at index k (CPU, eval mode).
    classifier : the CiT classifier (CPU, eval mode).
    history : one row per epoch: ``epoch``, ``train_generator`` (mean generator loss),
        ``train_pixel``, ``train_perceptual``, ``train_tv``, ``train_ce``, ``valid_loss``
        (cross-entropy of the fused prediction), ``valid_accuracy``, ``valid_pixel``
        (pixel MSE of ``G_y x`` on the validation images), ``epoch_lam`` (0 in the warm-up),
        ``classifier_lr``, ``seconds``.
    best_epoch : the epoch whose weights were kept.
    stopped_early : True when early stopping ended the training.
    perceptual : how the perceptual network was initialised, in words.
    """

    generators: nn.ModuleList
    classifier: nn.Module
    history: pd.DataFrame
    best_epoch: int
    stopped_early: bool
    perceptual: str
    recipe: CiTRecipe
    notes: list[str] = field(default_factory=list)


@torch.no_grad()
def _refresh_batchnorm(generators: nn.ModuleList, classifier: nn.Module, x: torch.Tensor,
                       y: torch.Tensor, batch_size: int, n_batches: int, device) -> None:
    """Precise batch-norm statistics (:func:`cxrlib.training.precise_batchnorm`) for each
    generator from its class's images, then for the classifier from the transformed images,
    using at most ``n_batches`` batches of ``x`` (B, 1, S, S), shuffled.

    The classifier trained on batches that mix the classes (each image through its own class's
    generator), so its statistics are taken on such batches too, in ``x``'s order: batches of
    one class would miss the variance between the classes. A generator with no image of its class
    here keeps the statistics it trained with.
    """
    x, y = x[: n_batches * batch_size], y[: n_batches * batch_size]
    transformed = torch.empty_like(x)  # each image through its own class's generator
    for k, g in enumerate(generators):
        own = torch.nonzero(y == k).flatten()
        if len(own) == 0:
            continue
        batches = [x[own[i:i + batch_size]] for i in range(0, len(own), batch_size)]
        precise_batchnorm(g, batches, device=device)
        g.eval()
        transformed[own] = torch.cat([g(b.to(device)).cpu() for b in batches])
    mixed = [transformed[i:i + batch_size] for i in range(0, len(x), batch_size)]
    precise_batchnorm(classifier, [to_network_input(b) for b in mixed if len(b) > 1],
                      device=device)


@torch.no_grad()
def _validate(generators, classifier, images, labels, device) -> dict:
    transformed = transform_images(generators, images, device=device)
    fused = fucitnet_probabilities(generators, classifier, images, device, transformed)
    own = transformed[labels, np.arange(len(labels))]
    return {"valid_loss": float(-np.log(np.clip(fused[np.arange(len(labels)), labels], 1e-12,
                                                None)).mean()),
            "valid_accuracy": float((fused.argmax(axis=1) == labels).mean()),
            "valid_pixel": float(((own - images) ** 2).mean())}


def train_cit(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    valid_images: np.ndarray,
    valid_labels: np.ndarray,
    classifier: nn.Module,
    features: nn.Module,
    recipe: CiTRecipe,
    generator_width: float = 1.0,
    perceptual: str = "",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    gpu: DeviceSettings | None = None,
) -> TrainedCiT:
    """Train one generator per class together with ``classifier`` (FuCiTNet).

    Parameters
    ----------
    train_images, valid_images : float32 (N, S, S) in [0, 1].
    train_labels, valid_labels : int (N,) class indices 0..K-1 (K = the classifier's outputs).
    classifier : K-class network taking ImageNet-normalised (N, 3, S, S) input.
    features : the frozen perceptual network (:func:`perceptual_network`).
    recipe : a :class:`CiTRecipe`.
    generator_width : channel multiplier of the generators.
    perceptual : description of ``features`` (kept in the result).
    seed : seeds the generators' initialisation and the batch order.
    gpu : mixed precision (``torch.autocast``, a ``GradScaler`` for float16), channels-last
        classifier and perceptual network, and cuDNN's autotuner on a CUDA device
        (:class:`cxrlib.gpu.DeviceSettings`; None: all off; the batches are slices of one
        tensor, so no loader workers). Validation runs in float32.

    The validation split (from the training folds) selects the epoch and stops the training
    after ``recipe.early_stopping_patience`` epochs without a lower validation loss.
    """
    train_labels = np.asarray(train_labels, dtype=np.int64)
    valid_labels = np.asarray(valid_labels, dtype=np.int64)
    n_classes = classifier.classifier.out_features
    for name, images, labels in (("train", train_images, train_labels),
                                 ("valid", valid_images, valid_labels)):
        if len(images) == 0 or len(images) != len(labels):
            raise ValueError(f"{name}: {len(images)} images and {len(labels)} labels (both must "
                             "be non-empty and equal)")
        if labels.min() < 0 or labels.max() >= n_classes:
            raise ValueError(f"{name} labels must be class indices 0..{n_classes - 1}")
    missing = sorted(set(range(n_classes)) - set(train_labels.tolist()))
    if missing:
        raise ValueError(f"class index(es) {missing} have no training image: each generator "
                         "learns from the images of its class")
    device = default_device(device)
    gpu = OFF if gpu is None else gpu
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generators = nn.ModuleList(CiTGenerator(1, generator_width) for _ in range(n_classes))
    # channels-last memory: about twice as fast for these thin convolutions on a CPU
    generators = generators.to(device, memory_format=torch.channels_last)
    channels_last = gpu.memory_format(device) == torch.channels_last
    if channels_last:
        classifier = classifier.to(device, memory_format=torch.channels_last)
        features = features.to(device, memory_format=torch.channels_last)
    else:
        classifier, features = classifier.to(device), features.to(device)
    scaler = gpu.grad_scaler(device)
    g_opt = torch.optim.Adam(generators.parameters(), lr=recipe.generator_lr,
                             weight_decay=recipe.generator_weight_decay)
    c_opt = torch.optim.Adam([p for p in classifier.parameters() if p.requires_grad],
                             lr=recipe.classifier_lr)
    c_sched = torch.optim.lr_scheduler.StepLR(c_opt, step_size=recipe.step_size,
                                              gamma=recipe.gamma)
    x_all = torch.from_numpy(np.asarray(train_images, dtype=np.float32))[:, None]
    y_all = torch.from_numpy(train_labels)
    warmup = min(recipe.warmup_epochs, recipe.epochs - 1)  # at least one epoch with lambda
    rows, best, best_state, since_best = [], np.inf, None, 0
    stopped_early = False
    with gpu.cudnn(device):
        for epoch in tqdm(range(recipe.epochs), desc="CiT epochs", disable=not progress,
                          leave=False):
            start = time.perf_counter()
            generators.train(), classifier.train()
            order = rng.permutation(len(x_all))
            n_batches = max(1, len(order) // recipe.batch_size)  # drop the last partial batch
            sums: dict[str, float] = {}
            step_recipe = recipe.with_overrides(lam=0.0) if epoch < warmup else recipe
            for b in range(n_batches):
                idx = order[b * recipe.batch_size:(b + 1) * recipe.batch_size] if n_batches > 1 \
                    else order
                g_opt.zero_grad(), c_opt.zero_grad()
                x = x_all[idx].to(device).contiguous(memory_format=torch.channels_last)
                terms = cit_step(generators, classifier, features, x, y_all[idx].to(device),
                                 step_recipe, gpu=gpu, scaler=scaler)
                if scaler is None:
                    g_opt.step(), c_opt.step()
                else:
                    scaler.step(g_opt), scaler.step(c_opt)
                    scaler.update()
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value / n_batches
            lr = c_opt.param_groups[0]["lr"]
            c_sched.step()
            if recipe.precise_bn_batches:
                shuffled = rng.permutation(len(x_all))
                _refresh_batchnorm(generators, classifier, x_all[shuffled], y_all[shuffled],
                                   recipe.batch_size, recipe.precise_bn_batches, device)
            generators.eval(), classifier.eval()
            valid = _validate(generators, classifier, valid_images, valid_labels, device)
            rows.append({"epoch": epoch, **{f"train_{k}": v for k, v in sums.items()}, **valid,
                         "epoch_lam": step_recipe.lam, "classifier_lr": lr,
                         "seconds": time.perf_counter() - start})
            if epoch < warmup:
                continue  # the warm-up is not a candidate for the kept weights
            if valid["valid_loss"] < best:
                best, since_best = valid["valid_loss"], 0
                best_state = (copy.deepcopy(generators.state_dict()),
                              copy.deepcopy(classifier.state_dict()), epoch)
            else:
                since_best += 1
                if recipe.early_stopping_patience and since_best >= recipe.early_stopping_patience:
                    stopped_early = epoch < recipe.epochs - 1
                    break
    notes = []
    if best_state is None:
        notes.append("validation loss never finite: the last epoch's weights are kept")
        best_epoch = len(rows) - 1
    else:
        generators.load_state_dict(best_state[0])
        classifier.load_state_dict(best_state[1])
        best_epoch = best_state[2]
    generators = generators.to("cpu", memory_format=torch.contiguous_format)
    classifier = classifier.cpu()
    if channels_last:
        classifier = classifier.to(memory_format=torch.contiguous_format)
        features.to(memory_format=torch.contiguous_format)  # shared between folds: as it came
    return TrainedCiT(generators=generators.eval(), classifier=classifier.eval(),
                      history=pd.DataFrame(rows), best_epoch=best_epoch,
                      stopped_early=stopped_early, perceptual=perceptual, recipe=recipe,
                      notes=notes)


# --------------------------------------------------------------------------------------------
# COVID-SDNet: four classes and the fusion rule


def sdnet_dataset(transformed: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COVID-SDNet's training set from both transforms of binary-labelled images.

    Parameters
    ----------
    transformed : (2, N, S, S): index 0 the negative transform ``G_N x``, 1 the positive
        ``G_P x`` (:func:`transform_images` with generators ordered as the classes
        ``[negative, positive]``).
    labels : (N,) 0 = negative (N), 1 = positive (P).

    Returns images (2N, S, S) - all positive transforms, then all negative ones - and their
    indices into :data:`SDNET_CLASSES` (P+, P-, N+, N-).
    """
    transformed = np.asarray(transformed)
    labels = np.asarray(labels)
    if transformed.ndim != 4 or transformed.shape[0] != 2 or transformed.shape[1] != len(labels):
        raise ValueError(f"transformed must be (2, {len(labels)}, S, S), got {transformed.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("COVID-SDNet needs binary labels (0 negative, 1 positive)")
    positive = labels == 1
    plus = np.where(positive, SDNET_CLASSES.index("P+"), SDNET_CLASSES.index("N+"))
    minus = np.where(positive, SDNET_CLASSES.index("P-"), SDNET_CLASSES.index("N-"))
    return (np.concatenate([transformed[1], transformed[0]]),
            np.concatenate([plus, minus]).astype(np.int64))


def _check_sdnet_pair(theta: np.ndarray, psi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    theta, psi = np.asarray(theta, dtype=float), np.asarray(psi, dtype=float)
    if theta.ndim != 2 or theta.shape[1] != 4 or theta.shape != psi.shape:
        raise ValueError(f"theta and psi must both be (N, 4) probabilities over {SDNET_CLASSES}, "
                         f"got {theta.shape} and {psi.shape}")
    return theta, psi


def sdnet_fusion(theta: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """Seed 000's fusion of the two predictions of an image: True where it is called positive.

    Parameters
    ----------
    theta : (N, 4) probabilities of the positive transform ``G_P x`` over (P+, P-, N+, N-).
    psi : (N, 4) probabilities of the negative transform ``G_N x``.

    Rule: (a) ``argmax theta`` is N+ and ``argmax psi`` is N-: negative; (b) ``argmax theta``
    is P+ and ``argmax psi`` is P-: positive; (c) otherwise negative when
    ``max(theta_N+, theta_N-, psi_N+, psi_N-) > max(theta_P+, theta_P-, psi_P+, psi_P-)``,
    positive otherwise (ties go to positive).
    """
    theta, psi = _check_sdnet_pair(theta, psi)
    top_theta, top_psi = theta.argmax(axis=1), psi.argmax(axis=1)
    rule_a = (top_theta == SDNET_CLASSES.index("N+")) & (top_psi == SDNET_CLASSES.index("N-"))
    rule_b = (top_theta == SDNET_CLASSES.index("P+")) & (top_psi == SDNET_CLASSES.index("P-"))
    largest_p = np.maximum(theta[:, :2].max(axis=1), psi[:, :2].max(axis=1))
    largest_n = np.maximum(theta[:, 2:].max(axis=1), psi[:, 2:].max(axis=1))
    return np.where(rule_a, False, np.where(rule_b, True, ~(largest_n > largest_p)))


def sdnet_probabilities(theta: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """A (negative, positive) score per image for the predictions table: float (N, 2).

    The largest N and the largest P probability over both transforms, normalised to sum to 1;
    rule (c) of :func:`sdnet_fusion` is their comparison, and rules (a)/(b) agree with it
    except on exact ties (the fused decision itself is :func:`sdnet_fusion`).
    """
    theta, psi = _check_sdnet_pair(theta, psi)
    largest_p = np.maximum(theta[:, :2].max(axis=1), psi[:, :2].max(axis=1))
    largest_n = np.maximum(theta[:, 2:].max(axis=1), psi[:, 2:].max(axis=1))
    scores = np.clip(np.stack([largest_n, largest_p], axis=1), 1e-12, None)
    return scores / scores.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Cross-validation


@dataclass(frozen=True)
class CiTSetup:
    """How notebook 02 trains at one profile.

    Attributes
    ----------
    recipe : the CiT recipe (``profile.cit_recipe``: ``fucitnet2020`` as in the paper,
        ``fucitnet-fast`` on a CPU).
    cit_classifier : (model name, width, weights) of the CiT classifier
        (``profile.cit_classifier``: ResNet-18 from ImageNet in the paper).
    sdnet : (model name, training recipe) of COVID-SDNet's 4-class network.
    sdnet_width : its width (width-scalable models only).
    generator_width : channel multiplier of the generators and the perceptual VGG16.
    folds : folds of the split plan to train (as notebook 03).
    gpu : how both trainings use a CUDA device (:class:`cxrlib.gpu.DeviceSettings`, the
        profile's ``gpu_*``, ``loader_workers`` and ``cudnn_benchmark``; default all off).
    """

    recipe: CiTRecipe
    cit_classifier: tuple[str, float, str | None]
    sdnet: tuple[str, TrainingRecipe]
    sdnet_width: float
    generator_width: float
    folds: list[int]
    gpu: DeviceSettings = OFF

    @classmethod
    def from_profile(cls, profile) -> "CiTSetup":
        base = classifier_setup(profile)
        recipe = CIT_RECIPES[profile.cit_recipe].with_overrides(epochs=profile.cit_epochs)
        name = profile.cit_classifier
        cit_classifier = (name, base.width if name in WIDTH_SCALABLE else 1.0,
                          profile.cit_classifier_weights or None)
        sdnet = (profile.sdnet_model, recipe_for(profile.sdnet_model, base.covidnet[1]))
        if not profile.paper_schedules:
            recipe = recipe.with_overrides(batch_size=profile.batch_size)
            sdnet = (sdnet[0], sdnet[1].with_overrides(
                epochs=profile.cit_epochs, batch_size=profile.batch_size, augmentation=None,
                augment_classes=None))
        width = base.width if sdnet[0] in WIDTH_SCALABLE else 1.0
        return cls(recipe=recipe, cit_classifier=cit_classifier, sdnet=sdnet, sdnet_width=width,
                   generator_width=profile.cit_width, folds=base.folds, gpu=base.gpu)


def read_cit_runs(artifacts_dir: str | Path) -> pd.DataFrame:
    """The ``cit_runs.csv`` table: one line per trained fold (empty if none)."""
    path = Path(artifacts_dir) / CIT_RUNS_FILE
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def load_cit(path: str | Path) -> dict:
    """Read a fold's ``cit/<stem>.pth``: ``{"generators": nn.ModuleList (eval), "classes",
    "generator_width", "classifier": the CiT classifier (eval), "extra"}``."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    generators = nn.ModuleList(CiTGenerator(1, blob["generator_width"])
                               for _ in blob["classes"])
    generators.load_state_dict(blob["generators"])
    args = dict(blob["classifier_args"])
    args.pop("freeze_trunk", None)
    classifier = build_classifier(args.pop("name"), weights=None, **args)
    classifier.load_state_dict(blob["classifier"])
    return {"generators": generators.eval(), "classifier": classifier.eval(),
            "classes": blob["classes"], "generator_width": blob["generator_width"],
            "extra": blob.get("extra", {})}


def run_cit_crossval(
    images: pd.DataFrame,
    manifest: pd.DataFrame,
    plan: pd.DataFrame,
    artifacts_dir: str | Path,
    setup: CiTSetup,
    experiment: str = "sdnet",
    view: str = "sdnet",
    image_size: int = 224,
    lam: float | None = None,
    folds: Sequence[int] | None = None,
    repetitions: Sequence[int] | None = None,
    with_sdnet: bool = True,
    write_predictions: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    executor=None,
) -> pd.DataFrame:
    """FuCiTNet and COVID-SDNet trained and tested on each fold of the split plan.

    Parameters
    ----------
    images : views table (``image_id``, ``view``, ``path`` absolute), e.g.
        :func:`cxrlib.cv_report.read_views`.
    manifest : validated manifest of a binary cohort (labels ``control`` and ``covid19``).
    plan : split plan (restricted to the images to use).
    artifacts_dir : the run folder's ``artifacts/``.
    setup : :class:`CiTSetup` (``CiTSetup.from_profile(profile)``).
    experiment, view : experiment label of the rows and the view the images come from.
    image_size : network input side in pixels.
    lam : override of the recipe's lambda (the sweep); None keeps it.
    folds, repetitions : subsets to run (default ``setup.folds``, every repetition).
    with_sdnet : also train COVID-SDNet's 4-class network.
    write_predictions : write the rows into ``predictions.parquet`` (the sweep does not).
    val_fraction : share of the training patients held out for early stopping (seed 000: 10%).
    seed : fold f of repetition r trains with ``seed + 100 r + f``.
    executor : where the folds train (:func:`cxrlib.executors.get_executor`; None: the
        default).

    Each fold is a unit of work (:mod:`cxrlib.units`, :func:`cit_specs`, :func:`cit_fold`): its
    rows and ``cit_runs.csv`` line reach the tables through its shard, merged by this process. A
    fold is skipped when done with the same settings: its rows are in the table with its
    settings hash (with ``write_predictions``), or its shard is merged (without); folds made
    with other settings make the call fail (:class:`cxrlib.units.UnitSettingsConflict`).

    Returns one line per fold trained now (the ``cit_runs.csv`` columns) with ``history`` (the
    per-epoch table of :class:`TrainedCiT`, plus the run's columns) in ``attrs["history"]``.
    """
    artifacts_dir = Path(artifacts_dir)
    specs = cit_specs(images, manifest, plan, artifacts_dir, setup, experiment, view, image_size,
                      lam, folds, repetitions, with_sdnet, write_predictions, val_fraction, seed,
                      device, progress)
    metas = run_units(specs, artifacts_dir, executor=executor, progress=progress, desc="CiT")
    table = pd.DataFrame([m["runs_row"] for m in metas])
    histories = [pd.read_csv(artifacts_dir / "cit" / f"{m['stem']}_history.csv") for m in metas]
    table.attrs["history"] = pd.concat(histories, ignore_index=True) if histories \
        else pd.DataFrame()
    return table


def cit_specs(
    images: pd.DataFrame,
    manifest: pd.DataFrame,
    plan: pd.DataFrame,
    artifacts_dir: str | Path,
    setup: CiTSetup,
    experiment: str = "sdnet",
    view: str = "sdnet",
    image_size: int = 224,
    lam: float | None = None,
    folds: Sequence[int] | None = None,
    repetitions: Sequence[int] | None = None,
    with_sdnet: bool = True,
    write_predictions: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> list[FoldSpec]:
    """The units of :func:`run_cit_crossval` (same parameters), one per (repetition, fold),
    keyed (experiment, ``fucitnet``, ``<CiT classifier>-lam<lambda>``, repetition, fold); writes
    their inputs table under ``artifacts/shards/inputs/``."""
    artifacts_dir = Path(artifacts_dir)
    check_split_plan(plan)
    labels = manifest.drop_duplicates("image_id").set_index("image_id")["label"].astype(str)
    classes = ["control", "covid19"]
    if set(labels) != set(classes):
        raise ValueError(f"FuCiTNet and COVID-SDNet need a binary control / covid19 cohort; this "
                         f"manifest has labels {sorted(set(labels))}")
    rows = images[images["view"] == view].drop_duplicates("image_id")
    if rows.empty:
        raise ValueError(f"the images table has no view {view!r} (it has "
                         f"{sorted(set(images['view']))}): run notebook 01 first")
    recipe = setup.recipe if lam is None else setup.recipe.with_overrides(lam=float(lam))
    plan = plan[plan["image_id"].isin(rows["image_id"])]
    inputs = inputs_table(plan, labels, rows.set_index("image_id")["path"])
    inputs_path = write_inputs(artifacts_dir, inputs)
    repetitions = sorted(plan["repetition"].unique()) if repetitions is None else list(repetitions)
    folds = setup.folds if folds is None else list(folds)
    cit_name, cit_width, cit_weights = setup.cit_classifier
    sdnet_name, sdnet_recipe = setup.sdnet
    settings = {
        "unit": "cit", "view": view, "image_size": int(image_size),
        "val_fraction": float(val_fraction), "seed": int(seed), "classes": classes,
        "recipe": {k: v for k, v in recipe.as_dict().items() if k != "source"},
        "cit_classifier": {"model": cit_name, "width": float(cit_width), "weights": cit_weights},
        "generator_width": float(setup.generator_width),
        "sdnet": {"model": sdnet_name, "width": float(setup.sdnet_width),
                  "recipe": {k: v for k, v in sdnet_recipe.as_dict().items() if k != "source"}},
        "inputs": data_hash(inputs),
    }
    if setup.gpu.hashed():  # only settings that are on: the CPU profiles' hashes stay as they were
        settings["gpu"] = setup.gpu.hashed()
    cells = [(experiment, "fucitnet", cit_name)] \
        + ([(experiment, "covid-sdnet", sdnet_name)] if with_sdnet else [])
    config = {"setup": setup, "recipe": recipe, "view": view, "image_size": int(image_size),
              "val_fraction": float(val_fraction), "seed": int(seed), "classes": classes,
              "with_sdnet": bool(with_sdnet), "write_predictions": bool(write_predictions)}
    return [make_spec("cit", experiment, "fucitnet", f"{cit_name}-lam{recipe.lam:g}", int(rep),
                      int(fold), artifacts_dir, inputs_path, settings,
                      row_cells=cells if write_predictions else [], config=config,
                      device=None if device is None else str(device), progress=bool(progress),
                      gpu=setup.gpu)
            for rep in repetitions for fold in folds]


#: What :func:`cit_fold` keeps between the folds it trains in one process: the last view's
#: images and the perceptual network (the same for every fold of a run).
_CIT_CACHE: dict[tuple, object] = {}


def _cached(key: tuple, make):
    if key not in _CIT_CACHE:
        for old in [k for k in _CIT_CACHE if k[0] == key[0]]:
            del _CIT_CACHE[old]
        _CIT_CACHE[key] = make()
    return _CIT_CACHE[key]


def cit_fold(spec: FoldSpec) -> tuple[pd.DataFrame | None, dict, str, tuple]:
    """Train and test one fold of :func:`cit_specs`: the generators and CiT classifier
    (``cit/<stem>.pth``, ``_split.csv``, ``_history.csv``), then COVID-SDNet's network. Returns
    (its predictions rows, or None without ``write_predictions``; its ``cit_runs.csv`` line;
    that file's name; its key) for :func:`cxrlib.units.run_unit` to write as a shard."""
    cfg = spec.config
    setup, recipe, classes = cfg["setup"], cfg["recipe"], cfg["classes"]
    experiment, view, image_size = spec.experiment, cfg["view"], cfg["image_size"]
    rep, fold, seed = spec.repetition, spec.fold, cfg["seed"]
    artifacts_dir = Path(spec.artifacts_dir)
    inputs = read_inputs(spec.inputs)
    plan = inputs[["image_id", "group", "repetition", "fold"]]
    labels = inputs.drop_duplicates("image_id").set_index("image_id")["label"]
    paths = inputs.dropna(subset=["path"]).drop_duplicates("image_id").set_index("image_id")["path"]
    device = default_device(spec.device)
    features, perceptual = _cached(("perceptual", setup.generator_width, seed),
                                   lambda: perceptual_network(setup.generator_width, seed=seed))
    index, array = _cached(("images", spec.inputs, image_size), lambda: (
        pd.Index(paths.index.to_numpy()),
        load_images(list(paths.to_numpy()), image_size, progress=spec.progress)))
    cit_name, cit_width, cit_weights = setup.cit_classifier

    split = fold_split(plan, rep, fold, val_fraction=cfg["val_fraction"], seed=seed)
    x = {name: array[index.get_indexer(ids)] for name, ids in split.items()}
    y = {name: np.array([classes.index(labels[i]) for i in ids], dtype=np.int64)
         for name, ids in split.items()}
    unit_seed = seed + 100 * int(rep) + int(fold)
    torch.manual_seed(unit_seed)
    classifier = _classifier_for_cit(cit_name, 2, image_size, cit_width, cit_weights)
    start = time.perf_counter()
    gpu = OFF if spec.gpu is None else spec.gpu
    fit = train_cit(x["train"], y["train"], x["valid"], y["valid"], classifier, features,
                    recipe, setup.generator_width, perceptual, seed=unit_seed,
                    device=device, gpu=gpu)
    cit_seconds = time.perf_counter() - start
    stem = spec.stem
    folder = artifacts_dir / "cit"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"generators": fit.generators.state_dict(),
                "classifier": fit.classifier.state_dict(),
                "classifier_args": fit.classifier.build_args, "classes": classes,
                "generator_width": setup.generator_width,
                "extra": {"experiment": experiment, "view": view,
                          "repetition": int(rep), "fold": int(fold),
                          "recipe": recipe.as_dict(), "best_epoch": int(fit.best_epoch),
                          "perceptual": perceptual}},
               folder / f"{stem}.pth")
    pd.concat([pd.DataFrame({"image_id": split[n], "role": n}) for n in split]) \
        .to_csv(folder / f"{stem}_split.csv", index=False)
    history = fit.history.assign(experiment=experiment, lam=recipe.lam, repetition=rep,
                                 fold=fold)
    history.to_csv(folder / f"{stem}_history.csv", index=False)

    test_ids, test_labels = split["test"], [labels[i] for i in split["test"]]
    with_sdnet = cfg["with_sdnet"]
    transformed = {n: transform_images(fit.generators, x[n], device=device)
                   for n in (x if with_sdnet else ["test"])}
    fused = fucitnet_probabilities(fit.generators, fit.classifier, x["test"], device,
                                   transformed["test"])
    run = {"experiment": experiment, "lam": recipe.lam, "repetition": rep, "fold": fold,
           "view": view, "image_size": image_size, "n_train": len(split["train"]),
           "n_valid": len(split["valid"]), "n_test": len(test_ids),
           "epochs_run": len(fit.history), "best_epoch": fit.best_epoch,
           "stopped_early": fit.stopped_early, "cit_seconds": round(cit_seconds, 2),
           "fucitnet_test_accuracy": float((fused.argmax(1) == y["test"]).mean()),
           "valid_accuracy": float(fit.history["valid_accuracy"].iloc[fit.best_epoch]),
           "cit_classifier": cit_name, "cit_init": classifier.init_description,
           "perceptual": perceptual, "recipe": recipe.name, "precision": gpu.precision(device),
           "checkpoint": str((folder / f"{stem}.pth").relative_to(artifacts_dir)),
           "split": str((folder / f"{stem}_split.csv").relative_to(artifacts_dir)),
           "notes": " | ".join(fit.notes)}
    new = [make_predictions(test_ids, test_labels, fused, classes, experiment=experiment,
                            model="fucitnet", method=cit_name, repetition=rep,
                            fold=fold)]
    if with_sdnet:
        new.append(_sdnet_fold(transformed, y, split, test_labels, classes, setup,
                               image_size, experiment, rep, fold, unit_seed,
                               artifacts_dir, device, run, gpu))
    run["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    rows = pd.concat(new, ignore_index=True) if cfg["write_predictions"] else None
    return rows, run, CIT_RUNS_FILE, RUNS_KEY


def _sdnet_fold(transformed: dict, y: dict, split: dict, test_labels: list, classes: list,
                setup: CiTSetup, image_size: int, experiment: str, rep: int, fold: int,
                unit_seed: int, artifacts_dir: Path, device, run: dict,
                gpu: DeviceSettings = OFF) -> pd.DataFrame:
    """Train COVID-SDNet's 4-class network on both transforms (``transformed[split]``: (2, N,
    S, S) from :func:`transform_images`); the test fold's fused rows."""
    name, recipe = setup.sdnet
    train_x, train_y = sdnet_dataset(transformed["train"], y["train"])
    valid_x, valid_y = sdnet_dataset(transformed["valid"], y["valid"])
    torch.manual_seed(unit_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = build_classifier(name, len(SDNET_CLASSES), image_size=image_size,
                                 width=setup.sdnet_width, weights=recipe.weights,
                                 hidden_units=recipe.hidden_units if name != "covidnet" else None)
    stem = artifact_stem(experiment, "covid-sdnet", name, rep, fold)
    sd_fit = train_classifier(model, train_x, train_y, valid_x, valid_y, recipe,
                              list(SDNET_CLASSES), log_path=artifacts_dir / "logs" / f"{stem}.csv",
                              seed=unit_seed, device=device, gpu=gpu)
    theta = predict(sd_fit.model, transformed["test"][1], device=device)[0]
    psi = predict(sd_fit.model, transformed["test"][0], device=device)[0]
    positive = sdnet_fusion(theta, psi)
    rows = make_predictions(split["test"], test_labels, sdnet_probabilities(theta, psi), classes,
                            experiment=experiment, model="covid-sdnet", method=name,
                            repetition=rep, fold=fold)
    rows["predicted"] = np.where(positive, classes[1], classes[0])
    run.update({"sdnet_model": name, "sdnet_init": model.init_description,
                "sdnet_recipe": recipe.name, "sdnet_epochs_run": len(sd_fit.history),
                "sdnet_seconds": round(sd_fit.seconds, 2),
                "sdnet_test_accuracy": float((positive == (y["test"] == 1)).mean())})
    return validate_predictions(rows, origin=f"{experiment}/covid-sdnet r{rep} f{fold}")


# --------------------------------------------------------------------------------------------
# Reading back and figures


def read_cit_history(artifacts_dir: str | Path) -> pd.DataFrame:
    """Every trained fold's per-epoch history (``cit/*_history.csv``) in one table: the
    :class:`TrainedCiT` history columns plus ``experiment``, ``lam``, ``repetition``, ``fold``."""
    files = sorted((Path(artifacts_dir) / "cit").glob("*_history.csv"))
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


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
