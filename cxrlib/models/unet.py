"""The 2-D U-Net lung segmenter of the "thoughtful evaluation" paper (seed 001).

Architecture, as described in the paper's reference implementation:

- every stage is two 3x3 convolutions ("same" padding), each followed by a ReLU;
- encoder stages of 32, 64, 64 and 128 channels, each followed by a 2x2 max-pooling;
- a bottleneck of 256 channels;
- a decoder that mirrors the encoder: nearest-neighbour 2x upsampling, concatenation with the
  encoder feature map of the same resolution (the skip connection), two 3x3 convolutions;
- a final 1x1 convolution to one channel.

The network returns **logits** (apply ``torch.sigmoid`` for lung probabilities), so that training
can use the numerically stable ``BCEWithLogitsLoss``, which equals sigmoid + binary cross-entropy.

``width`` multiplies every channel count (``width=0.5`` gives 16-32-32-64 / 128), the knob the
profiles use to keep CPU runs short. The upsampling goes to the exact size of the skip feature map,
so any input of at least 16x16 pixels works, not only multiples of 16.

Example::

    >>> import torch
    >>> net = UNet(width=0.25)
    >>> net(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 1, 64, 64])
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNet", "UNetEnsemble", "ENCODER_CHANNELS", "BOTTLENECK_CHANNELS"]

#: Encoder channels at width 1.0, one entry per resolution (the paper's 32-64-64-128).
ENCODER_CHANNELS = (32, 64, 64, 128)
#: Channels at the lowest resolution, at width 1.0.
BOTTLENECK_CHANNELS = 256


def _scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1."""
    return max(1, int(round(channels * width)))


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by ReLU (optionally batch normalisation in between).

    Input (N, in_channels, H, W) -> output (N, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = False):
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(c_in, out_channels, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net for binary segmentation; returns logits.

    Parameters
    ----------
    in_channels : channels of the input image (1 for a radiograph).
    width : multiplier of every channel count; 1.0 gives the paper's network.
    batch_norm : add batch normalisation after each convolution (not in the paper; off by
        default; it makes training from scratch less sensitive to the learning rate).

    Shapes
    ------
    input : float tensor (N, in_channels, H, W), H and W >= 16, standardised intensities.
    output : float tensor (N, 1, H, W), logits of "lung".
    """

    def __init__(self, in_channels: int = 1, width: float = 1.0, batch_norm: bool = False):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        self.in_channels = in_channels
        self.width = float(width)
        self.batch_norm = bool(batch_norm)

        enc = [_scaled(c, width) for c in ENCODER_CHANNELS]
        bottom = _scaled(BOTTLENECK_CHANNELS, width)

        self.encoder = nn.ModuleList()
        c_prev = in_channels
        for c in enc:
            self.encoder.append(ConvBlock(c_prev, c, batch_norm))
            c_prev = c
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(c_prev, bottom, batch_norm)

        # Decoder, from the lowest resolution up: input = upsampled previous + skip.
        self.decoder = nn.ModuleList()
        c_prev = bottom
        for c in reversed(enc):
            self.decoder.append(ConvBlock(c_prev + c, c, batch_norm))
            c_prev = c
        self.head = nn.Conv2d(c_prev, 1, kernel_size=1)

    def config(self) -> dict:
        """The constructor arguments, enough to rebuild the network (stored with the weights)."""
        return {"in_channels": self.in_channels, "width": self.width, "batch_norm": self.batch_norm}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects a (N, {self.in_channels}, H, W) tensor, got shape {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < 2 ** len(self.encoder):
            raise ValueError(
                f"UNet input must be at least {2 ** len(self.encoder)} pixels on each side, "
                f"got {tuple(x.shape[-2:])}"
            )
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for block, skip in zip(self.decoder, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


class UNetEnsemble(nn.Module):
    """U-Nets trained apart (other seeds, other cohorts) whose lung probabilities are averaged.

    ``forward`` returns the logit of the members' mean probability, so the ensemble stands
    wherever a :class:`UNet` does: ``torch.sigmoid(ensemble(x))`` is the mean of
    ``torch.sigmoid(member(x))`` (clamped to [1e-6, 1 - 1e-6]). Members differ in their mistakes
    more than in what they get right, so the average is the better segmenter on images unlike
    the training ones (Lakshminarayanan et al. 2017; Ovadia et al. 2019).

    Parameters
    ----------
    members : the U-Nets (at least one), with the same input channels.

    Shapes
    ------
    input : float tensor (N, C, H, W), as for :class:`UNet`.
    output : float tensor (N, 1, H, W), logits of "lung".
    """

    def __init__(self, members):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("a U-Net ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probability = torch.stack([torch.sigmoid(m(x).float()) for m in self.members]).mean(0)
        return torch.logit(probability, eps=1e-6)
