"""The terms of generator k's loss (tensors in, scalar tensor out) and their weighted sum
:func:`generator_loss`: ``pixel MSE + 0.006 perceptual MSE + 2e-8 TV + lambda CE(C(G_k x), k)``
in the paper (the weights are a :class:`~cxrlib.train.cit.recipe.CiTRecipe`'s)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxrlib.train.cit.networks import to_network_input
from cxrlib.train.cit.recipe import CiTRecipe

__all__ = ["pixel_mse", "perceptual_mse", "total_variation", "classifier_ce", "generator_loss"]


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
