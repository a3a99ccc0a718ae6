"""The class-inherent transformation (CiT) generator of FuCiTNet (seed 000, Sec. 4.2).

One generator per class (``G_N``, ``G_P``) maps an image to an image of the same size; it is an
SRGAN-style residual network without upsampling:

- **head**: a 9x9 convolution (image channels -> 64) and a PReLU;
- **body**: 5 identical residual blocks, each ``x + BN(conv3x3(PReLU(BN(conv3x3(x)))))`` with 64
  feature maps;
- **tail**: a 3x3 convolution (64 -> image channels), no activation (the output is compared
  pixel by pixel with the input image).

``width`` multiplies the 64 feature maps (the ``smoke`` and ``default`` profiles use fewer on a
CPU; 1.0 is the paper's). ``in_channels`` is 3 in the paper (RGB-replicated radiographs); the
study feeds its grayscale images with 1 channel, which changes only the first and last layer.

Example::

    >>> import torch
    >>> g = CiTGenerator(in_channels=1, width=0.25)
    >>> g(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 1, 32, 32])
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["CiTGenerator", "ResidualBlock", "FEATURES", "N_BLOCKS"]

#: Feature maps of the generator at width 1.0.
FEATURES = 64
#: Residual blocks of the body.
N_BLOCKS = 5


class ResidualBlock(nn.Module):
    """``x + BN(conv(PReLU(BN(conv(x)))))`` with 3x3 convolutions of ``channels`` maps.

    Input and output: (N, channels, H, W).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.PReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CiTGenerator(nn.Module):
    """A CiT generator: (N, C, H, W) -> (N, C, H, W), same size.

    Parameters
    ----------
    in_channels : image channels C (3 in the paper, 1 for the study's grayscale input).
    width : multiplier of the 64 feature maps (at least 1 map).
    n_blocks : residual blocks (5 in the paper).
    """

    def __init__(self, in_channels: int = 3, width: float = 1.0, n_blocks: int = N_BLOCKS):
        super().__init__()
        if in_channels < 1 or n_blocks < 1 or width <= 0:
            raise ValueError(f"in_channels and n_blocks must be >= 1 and width > 0, got "
                             f"{in_channels}, {n_blocks}, {width}")
        features = max(1, int(round(FEATURES * width)))
        self.in_channels, self.features = in_channels, features
        self.head = nn.Sequential(nn.Conv2d(in_channels, features, 9, padding=4), nn.PReLU())
        self.blocks = nn.Sequential(*(ResidualBlock(features) for _ in range(n_blocks)))
        self.tail = nn.Conv2d(features, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected a (N, {self.in_channels}, H, W) batch, got shape "
                             f"{tuple(x.shape)}")
        return self.tail(self.blocks(self.head(x)))
