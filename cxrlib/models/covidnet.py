"""The COVID-Net variant of the "thoughtful evaluation" paper (seed 001).

The network follows the reference implementation's description:

- **stem**: a 7x7 convolution with stride 2 (3 -> 64 channels) and ReLU, then a 2x2 max-pooling;
- **four stages** of PEPX blocks, 64 -> 256 channels (3 blocks), 256 -> 512 (4), 512 -> 1024 (6)
  and 1024 -> 2048 (3), with a 2x2 max-pooling between stages;
- inside a stage the blocks are **densely summed**: a 1x1 "shortcut" convolution maps the stage
  input to the stage width, the first block reads the stage input, every later block reads the
  sum of the shortcut and of all earlier blocks' outputs, and the stage returns the sum of the
  shortcut and of every block's output;
- a **PEPX block** (projection - expansion - depthwise - projection - extension) is five
  convolutions on an input of ``n`` channels: 1x1 ``n -> n/4``, 1x1 ``n/4 -> n/2``, depthwise
  3x3 on ``n/2``, 1x1 ``n/2 -> n/4``, 1x1 ``n/4 -> n_out``. The paper does not say where the
  normalisations and non-linearities go; here every convolution is followed by batch
  normalisation, and all but the last by a ReLU, so that the summed block outputs are
  normalised (one public port has a single batch normalisation at the end of the block and no
  non-linearity inside, which makes a block a linear map);
- **head**: flatten -> FC 1024 -> ReLU -> dropout 0.3 -> FC 256 -> ReLU -> dropout 0.3 -> FC
  ``n_classes``. The 256-d layer is the "layer adjacent to the output" whose activations seed 001
  shows with t-SNE; :meth:`CovidNet.features` returns it.

Convolutions get He initialisation (see :meth:`CovidNet._init_weights`).

The output of the last stage (2048 x 7 x 7 at 224 px) is the Grad-CAM target; it is the module
``net.cam_layer`` (the last :class:`PEPXStage`, whose forward returns the summed feature map).

``width`` multiplies every convolution's channel count (the profiles use 0.5 or 0.25 on a CPU);
the head keeps the paper's 1024 and 256 units. ``image_size`` fixes the flattened size: the
feature map is ``ceil(image_size / 2) // 16`` pixels on a side (7 at 224, 4 at 128, 1 at 32), so
any size of at least 32 works.

Example::

    >>> import torch
    >>> net = CovidNet(n_classes=3, image_size=64, width=0.25)
    >>> net(torch.zeros(2, 3, 64, 64)).shape, net.features(torch.zeros(2, 3, 64, 64)).shape
    (torch.Size([2, 3]), torch.Size([2, 256]))
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["CovidNet", "PEPXBlock", "PEPXStage", "STAGES", "STEM_CHANNELS", "HEAD_UNITS"]

#: Stem output channels at width 1.0.
STEM_CHANNELS = 64
#: (output channels at width 1.0, number of PEPX blocks) of each stage.
STAGES = ((256, 3), (512, 4), (1024, 6), (2048, 3))
#: Units of the two hidden fully connected layers; the second is the embedding.
HEAD_UNITS = (1024, 256)


def _scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1."""
    return max(1, int(round(channels * width)))


def _conv_bn(in_channels: int, out_channels: int, kernel: int, groups: int = 1,
             relu: bool = True) -> list[nn.Module]:
    """Convolution ("same" padding, no bias), batch normalisation and optionally ReLU."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, groups=groups,
                        bias=False),
              nn.BatchNorm2d(out_channels)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class PEPXBlock(nn.Sequential):
    """Projection-expansion-depthwise-projection-extension block.

    Input (N, in_channels, H, W) -> output (N, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int):
        quarter = max(1, in_channels // 4)
        half = max(1, in_channels // 2)
        super().__init__(
            *_conv_bn(in_channels, quarter, 1),              # projection
            *_conv_bn(quarter, half, 1),                     # expansion
            *_conv_bn(half, half, 3, groups=half),           # depthwise
            *_conv_bn(half, quarter, 1),                     # projection
            *_conv_bn(quarter, out_channels, 1, relu=False),  # extension
        )


class PEPXStage(nn.Module):
    """A stage of densely summed PEPX blocks at one resolution.

    Input (N, in_channels, H, W) -> output (N, out_channels, H, W): the sum of the 1x1 shortcut
    convolution of the input and of every block's output.
    """

    def __init__(self, in_channels: int, out_channels: int, n_blocks: int):
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"a stage needs at least one block, got {n_blocks}")
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)
        self.blocks = nn.ModuleList(
            [PEPXBlock(in_channels, out_channels)]
            + [PEPXBlock(out_channels, out_channels) for _ in range(n_blocks - 1)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.shortcut(x)
        total = total + self.blocks[0](x)
        for block in self.blocks[1:]:
            total = total + block(total)
        return total


def feature_map_size(image_size: int) -> int:
    """Side of the last stage's feature map for a square input of ``image_size`` pixels."""
    side = (image_size + 1) // 2  # 7x7 convolution, stride 2, padding 3
    for _ in range(4):            # the stem's max-pooling and the three between stages
        side //= 2
    return side


class CovidNet(nn.Module):
    """COVID-Net variant of seed 001; returns class logits.

    Parameters
    ----------
    n_classes : number of output classes (3: control, pneumonia, COVID-19).
    image_size : side of the square input in pixels (>= 32); fixes the first FC layer's size.
    width : multiplier of every convolution's channel count; 1.0 is the paper's network.
    dropout : dropout probability after each hidden FC layer (0.3 in the paper).

    Shapes
    ------
    input : float tensor (N, 3, image_size, image_size), ImageNet-normalised.
    ``forward`` : (N, n_classes) logits.
    ``features`` : (N, 256) activations of the layer next to the output (after its ReLU).
    ``cam_layer`` output : (N, 2048 * width, s, s) with ``s = feature_map_size(image_size)``.
    """

    def __init__(self, n_classes: int = 3, image_size: int = 224, width: float = 1.0,
                 dropout: float = 0.3):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if feature_map_size(image_size) < 1:
            raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
        self.n_classes = int(n_classes)
        self.image_size = int(image_size)
        self.width = float(width)
        self.dropout_p = float(dropout)

        stem = _scaled(STEM_CHANNELS, width)
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        stages, c_in = [], stem
        for c_out, n_blocks in STAGES:
            stages.append(PEPXStage(c_in, _scaled(c_out, width), n_blocks))
            c_in = _scaled(c_out, width)
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.pool = nn.MaxPool2d(2)

        side = feature_map_size(image_size)
        hidden, embedding = HEAD_UNITS
        self.fc1 = nn.Linear(c_in * side * side, hidden)
        self.fc2 = nn.Linear(hidden, embedding)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(embedding, n_classes)

        #: Grad-CAM target: the last stage, whose output is the final feature map.
        self.cam_layer = self.stage4
        #: Size of :meth:`features`' output.
        self.embedding_dim = embedding
        self._init_weights()

    def _init_weights(self) -> None:
        """He initialisation of the convolutions (as torchvision's ResNets).

        PyTorch's default initialisation shrinks the signal several-fold per convolution + ReLU;
        the stem and the shortcut convolutions are not normalised, and with the default their
        outputs (and the batch-norm inputs downstream) start far from the unit scale that the
        batch-norm running statistics assume.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def config(self) -> dict:
        """The constructor arguments, enough to rebuild the network (stored with the weights)."""
        return {"n_classes": self.n_classes, "image_size": self.image_size, "width": self.width,
                "dropout": self.dropout_p}

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output, (N, C, s, s)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"CovidNet expects a (N, 3, H, W) tensor, got shape {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"CovidNet was built for {self.image_size}x{self.image_size} inputs, "
                             f"got {tuple(x.shape[-2:])}")
        x = self.stem(x)
        x = self.pool(self.stage1(x))
        x = self.pool(self.stage2(x))
        x = self.pool(self.stage3(x))
        return self.stage4(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 256-d embedding (N, 256): the FC layer next to the output, after its ReLU."""
        x = torch.flatten(self.feature_map(x), 1)
        x = self.dropout(self.relu(self.fc1(x)))
        return self.relu(self.fc2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))
