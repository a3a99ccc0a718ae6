"""The joint training of the generators and the CiT classifier (FuCiTNet: :func:`train_cit`, one
batch: :func:`cit_step`) and what the trained networks compute: every image through every
generator (:func:`transform_images`) and FuCiTNet's fused prediction
(:func:`fucitnet_probabilities`).

The joint training is a plain PyTorch loop rather than a fastai ``Learner``: it steps two
optimisers with different schedules (generators: Adam 1e-4, weight decay 1e-4; classifier:
Adam 1e-3, StepLR(5, 0.1)) from one backward pass, in which :func:`scale_gradient` gives the
generators lambda times the classifier's gradient (see :func:`cit_step`).
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cxrlib.gpu import OFF, DeviceSettings
from cxrlib.models.cit import CiTGenerator
from cxrlib.train.cit.losses import perceptual_mse, pixel_mse, total_variation
from cxrlib.train.cit.networks import scale_gradient, to_network_input
from cxrlib.train.cit.recipe import CiTRecipe
from cxrlib.train.training import default_device, precise_batchnorm, predict

__all__ = ["cit_step", "TrainedCiT", "train_cit", "transform_images", "fucitnet_probabilities"]


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
    """Precise batch-norm statistics (:func:`cxrlib.models.batchnorm.precise_batchnorm`) for each
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
