"""Networks around the generators: the input every network receives (:func:`to_network_input`),
the frozen perceptual network of the generator loss (:func:`perceptual_network`) and the
gradient scaling through which the generators get lambda times the classifier's gradient
(:func:`scale_gradient`)."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from cxrlib.models.classifiers import (
    IMAGENET_MEAN, IMAGENET_STD, build_classifier, find_imagenet_weights,
)

__all__ = ["to_network_input", "perceptual_network", "scale_gradient"]


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
