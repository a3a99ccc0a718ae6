"""Image classifiers of the study behind one interface, and their checkpoints.

=============== ======================================= =========================================
name            network                                 paper
=============== ======================================= =========================================
``covidnet``    :class:`~cxrlib.models.covidnet.CovidNet` seed 001 (the study's main model)
``resnet18``    torchvision ResNet-18                   seed 000 (CiT classifier), seed 004
``resnet50``    torchvision ResNet-50                   seed 000 (final classifier), seed 004
``vgg16``       torchvision VGG16                       seed 002, seed 004
``inception_v3`` torchvision Inception-v3 (>= 75 px)    seed 003
``xception``    timm ``legacy_xception`` (optional)      seed 004
=============== ======================================= =========================================

Every model returned by :func:`build_classifier` has

- ``forward(x)``: (N, 3, S, S) ImageNet-normalised images -> (N, n_classes) logits;
- ``features(x)``: -> (N, D) penultimate embedding (``embedding_dim == D``), so that
  ``classifier(features(x))`` equals ``forward(x)`` in eval mode;
- ``classifier``: the final ``nn.Linear(D, n_classes)``;
- ``cam_layer``: the module whose output is the last convolutional feature map (the Grad-CAM
  target);
- ``init_description``: how the weights were initialised, in words (ImageNet file, or "trained
  from scratch" and why).

**Pretrained weights are never downloaded.** ``weights="imagenet"`` looks for the file that
torchvision (or timm) would have cached, in ``torch.hub.get_dir()/checkpoints`` (and, for Xception,
the Hugging Face cache); when it is not there the model is trained from scratch, a warning says so
and ``init_description`` records it. ``weights=<path>`` loads that file and fails if it is missing.

``width`` (channel multiplier) is supported by ``covidnet`` and ``vgg16`` (then without ImageNet
weights); the other networks keep their published widths and accept only ``width=1``.

``freeze_trunk=True`` is the frozen-backbone transfer of seed 004: the convolutional layers keep
their (ImageNet) weights and stay in inference mode (batch-norm statistics frozen too); only the
fully connected layers learn. It needs a :class:`TransferClassifier` (not ``covidnet``).

Xception needs the optional package ``timm``; :data:`XCEPTION_AVAILABLE` tells whether it is there.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

from cxrlib.models.covidnet import CovidNet

try:  # optional: only the Xception baseline needs it
    import timm
except ImportError:  # pragma: no cover - depends on the environment
    timm = None

__all__ = [
    "MODEL_NAMES", "WIDTH_SCALABLE", "XCEPTION_AVAILABLE", "IMAGENET_MEAN", "IMAGENET_STD",
    "TransferClassifier", "build_classifier", "find_imagenet_weights", "save_classifier",
    "load_classifier",
]

MODEL_NAMES = ("covidnet", "resnet18", "resnet50", "vgg16", "inception_v3", "xception")
#: Models whose channel counts follow ``width``.
WIDTH_SCALABLE = ("covidnet", "vgg16")
XCEPTION_AVAILABLE = timm is not None
#: The normalisation every model's input gets (seed 001 keeps it for grayscale images too).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Smallest input side each network accepts, in pixels.
MIN_IMAGE_SIZE = {"covidnet": 32, "resnet18": 32, "resnet50": 32, "vgg16": 32,
                  "inception_v3": 75, "xception": 71}

_CHECKPOINT_FORMAT = "cxrlib-classifier-v1"


# --------------------------------------------------------------------------------------------
# Transfer-learning wrapper around torchvision / timm networks


class TransferClassifier(nn.Module):
    """A pretrained-style backbone with a new head.

    Parameters
    ----------
    backbone : module mapping (N, 3, S, S) to pooled features (N, backbone_dim) - the torchvision
        network with its last FC layer replaced by ``nn.Identity``.
    backbone_dim : size of the backbone's output.
    n_classes : output classes.
    cam_layer : the backbone module that outputs the last convolutional feature map.
    conv_trunk : the convolutional part of the backbone (what ``freeze_trunk`` freezes).
    hidden_units : optional FC layer + ReLU between the backbone and the output (seed 000's
        ResNet-50 uses 512); its output is then the embedding.
    dropout : dropout before the output layer.
    input_transform : optional module applied to the input first (e.g. converting ImageNet
        normalisation into the one a pretrained network expects).

    ``features(x)`` -> (N, D) with ``D = hidden_units or backbone_dim``; ``forward(x)`` ->
    (N, n_classes) logits.
    """

    def __init__(self, backbone: nn.Module, backbone_dim: int, n_classes: int, cam_layer: nn.Module,
                 conv_trunk: nn.Module, hidden_units: int | None = None, dropout: float = 0.0,
                 input_transform: nn.Module | None = None):
        super().__init__()
        self.input_transform = input_transform if input_transform is not None else nn.Identity()
        self.backbone = backbone
        self.hidden = (nn.Sequential(nn.Linear(backbone_dim, hidden_units), nn.ReLU(inplace=True))
                       if hidden_units else nn.Identity())
        self.embedding_dim = int(hidden_units or backbone_dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.embedding_dim, n_classes)
        self.cam_layer = cam_layer
        self.conv_trunk = conv_trunk
        self.trunk_frozen = False

    def freeze_trunk(self) -> None:
        """Stop the convolutional layers from learning (weights and batch-norm statistics)."""
        for p in self.conv_trunk.parameters():
            p.requires_grad_(False)
        self.trunk_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> "TransferClassifier":
        super().train(mode)
        if self.trunk_frozen:
            self.conv_trunk.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate embedding, (N, embedding_dim)."""
        return self.hidden(self.backbone(self.input_transform(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))


class _Renormalise(nn.Module):
    """Turn ImageNet-normalised input into input normalised with another mean/std."""

    def __init__(self, mean, std):
        super().__init__()
        def column(values):
            return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)

        self.register_buffer("scale", column(IMAGENET_STD) / column(std))
        self.register_buffer("shift", (column(IMAGENET_MEAN) - column(mean)) / column(std))

    def forward(self, x):
        return x * self.scale + self.shift


# --------------------------------------------------------------------------------------------
# ImageNet weights, from local files only


def _torchvision_weight_files(name: str) -> list[str]:
    enums = {"resnet18": torchvision.models.ResNet18_Weights,
             "resnet50": torchvision.models.ResNet50_Weights,
             "vgg16": torchvision.models.VGG16_Weights,
             "inception_v3": torchvision.models.Inception_V3_Weights}
    if name == "xception":
        return ["xception-43020ad28.pth"]
    return [os.path.basename(w.url) for w in enums[name] if "FEATURES" not in w.name]


def find_imagenet_weights(name: str) -> Path | None:
    """The locally cached ImageNet weights of model ``name``, or None.

    Looks in ``torch.hub.get_dir()/checkpoints`` for the file names torchvision (or timm) uses, and
    for Xception also in the Hugging Face cache (``$HF_HUB_CACHE`` or ``~/.cache/huggingface/hub``,
    repository ``timm/legacy_xception.tf_in1k``). Never downloads anything.
    """
    if name not in MODEL_NAMES or name == "covidnet":
        return None
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for file_name in _torchvision_weight_files(name):
        if (checkpoints / file_name).is_file():
            return checkpoints / file_name
    if name == "xception":
        hf_cache = Path(os.environ.get("HF_HUB_CACHE",
                                       Path.home() / ".cache" / "huggingface" / "hub"))
        snapshots = hf_cache / "models--timm--legacy_xception.tf_in1k" / "snapshots"
        for candidate in sorted(snapshots.glob("*/model.safetensors")) + \
                sorted(snapshots.glob("*/pytorch_model.bin")):
            return candidate
    return None


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def _shown(path: Path) -> str:
    """``path`` for a report: the home folder written ``~`` (no machine's home in a report)."""
    try:
        return "~/" + Path(path).relative_to(Path.home()).as_posix()
    except ValueError:
        return str(path)


def _resolve_weights(name: str, weights) -> tuple[Path | None, str]:
    """(file to load or None, sentence describing the initialisation)."""
    if weights is None:
        return None, "random initialisation (trained from scratch): no pretrained weights requested"
    if isinstance(weights, str) and weights == "imagenet":
        found = find_imagenet_weights(name)
        if found is None:
            where = Path(torch.hub.get_dir()) / "checkpoints"
            message = (f"no local ImageNet weights for {name!r} (looked in {_shown(where)} for "
                       f"{_torchvision_weight_files(name)}); nothing is downloaded, so the model "
                       "is trained from scratch")
            warnings.warn(message, UserWarning, stacklevel=3)
            return None, "random initialisation (trained from scratch): " + message
        return found, f"ImageNet weights from {_shown(found)}"
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file for {name!r} not found: {path}")
    return path, f"weights from {_shown(path)}"


# --------------------------------------------------------------------------------------------
# Builders


def _build_resnet(name: str, n_classes: int, state: dict | None, hidden_units, dropout):
    net = getattr(torchvision.models, name)(weights=None)
    if state is not None:
        net.load_state_dict(state)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return TransferClassifier(net, dim, n_classes, cam_layer=net.layer4, conv_trunk=net,
                              hidden_units=hidden_units, dropout=dropout)


def _build_vgg16(n_classes: int, width: float, state: dict | None, hidden_units, dropout):
    from torchvision.models.vgg import VGG, cfgs, make_layers

    if width == 1.0:
        net = VGG(make_layers(cfgs["D"]), num_classes=1000, init_weights=True)
    else:
        # torchvision's layout with every convolution and FC layer scaled: the 4096-unit layers
        # of the full network are only laid out (meta device, no memory), then replaced
        cfg = [c if c == "M" else max(1, int(round(c * width))) for c in cfgs["D"]]
        fc = max(1, int(round(4096 * width)))
        with torch.device("meta"):
            net = VGG(nn.Identity(), num_classes=1000, init_weights=False)
        net.features = make_layers(cfg)
        net.classifier = nn.Sequential(
            nn.Linear(cfg[-2] * 7 * 7, fc), nn.ReLU(True), nn.Dropout(0.5),
            nn.Linear(fc, fc), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(fc, 1000))
        for m in net.modules():  # torchvision's VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
    if state is not None:
        net.load_state_dict(state)
    dim = net.classifier[6].in_features
    net.classifier[6] = nn.Identity()
    # the last ReLU of the conv trunk is the Grad-CAM target (features[-1] is the final max-pool)
    return TransferClassifier(net, dim, n_classes, cam_layer=net.features[-2],
                              conv_trunk=net.features, hidden_units=hidden_units, dropout=dropout)


def _build_inception(n_classes: int, state: dict | None, hidden_units, dropout):
    from torchvision.models.inception import Inception3

    # pretrained weights expect torchvision's transform_input (Google's normalisation)
    pretrained = state is not None
    net = Inception3(num_classes=1000, aux_logits=pretrained, transform_input=pretrained,
                     init_weights=not pretrained)
    if state is not None:
        net.load_state_dict(state)
        net.aux_logits, net.AuxLogits = False, None
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return TransferClassifier(net, dim, n_classes, cam_layer=net.Mixed_7c, conv_trunk=net,
                              hidden_units=hidden_units, dropout=dropout)


def _build_xception(n_classes: int, state: dict | None, hidden_units, dropout):
    if timm is None:
        raise ImportError("the 'xception' model needs the optional package timm "
                          "(pip install timm); the other models do not")
    net = timm.create_model("legacy_xception", pretrained=False, num_classes=0)
    transform = None
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        net.load_state_dict(state)
        transform = _Renormalise(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return TransferClassifier(net, net.num_features, n_classes, cam_layer=net.act4, conv_trunk=net,
                              hidden_units=hidden_units, dropout=dropout, input_transform=transform)


def build_classifier(
    name: str,
    n_classes: int,
    image_size: int = 224,
    width: float = 1.0,
    weights: str | Path | None = None,
    freeze_trunk: bool = False,
    hidden_units: int | None = None,
    dropout: float | None = None,
) -> nn.Module:
    """Build one of :data:`MODEL_NAMES` with an ``n_classes`` output.

    Parameters
    ----------
    name : model name (see the module docstring).
    n_classes : number of classes (>= 2).
    image_size : side of the square input in pixels (``covidnet`` needs it for its FC layer).
    width : channel multiplier; only :data:`WIDTH_SCALABLE` models accept a value other than 1.
    weights : None (random initialisation), ``"imagenet"`` (a locally cached file, else from
        scratch with a warning) or the path of a state-dict file (``.pth`` or ``.safetensors``)
        of the torchvision/timm network (its 1000-class head is dropped).
    freeze_trunk : freeze the convolutional layers (seed 004); not for ``covidnet``.
    hidden_units : extra FC + ReLU layer before the output (not for ``covidnet``).
    dropout : dropout before the output; default 0.3 for ``covidnet`` (also after its first FC
        layer), 0 otherwise.

    Returns
    -------
    The model (train mode, CPU) with the attributes ``build_args`` (these arguments, for
    :func:`save_classifier`) and ``init_description``.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    if image_size < MIN_IMAGE_SIZE[name]:
        raise ValueError(f"{name} needs inputs of at least {MIN_IMAGE_SIZE[name]} px, "
                         f"got image_size={image_size}")
    if width != 1.0 and name not in WIDTH_SCALABLE:
        raise ValueError(f"{name} keeps its published channel widths: width must be 1.0, got "
                         f"{width} (width scaling is available for {list(WIDTH_SCALABLE)})")
    if width != 1.0 and weights is not None:
        raise ValueError(f"pretrained weights need the published widths: {name} with width={width} "
                         "must be trained from scratch (weights=None)")
    if name == "covidnet" and (freeze_trunk or hidden_units):
        raise ValueError("covidnet has its own head and no pretrained trunk: freeze_trunk and "
                         "hidden_units apply to the torchvision/timm models only")
    if name == "covidnet" and isinstance(weights, str) and weights == "imagenet":
        raise ValueError("there are no ImageNet weights for covidnet; pass weights=None or the "
                         "path of a CovidNet state dict")
    build_args = {"name": name, "n_classes": int(n_classes), "image_size": int(image_size),
                  "width": float(width), "hidden_units": hidden_units, "dropout": dropout,
                  "freeze_trunk": bool(freeze_trunk)}
    if name == "xception" and timm is None:
        _build_xception(n_classes, None, None, 0.0)  # raises the ImportError
    path, description = _resolve_weights(name, weights)
    state = _read_state_dict(path) if path is not None else None

    if name == "covidnet":
        model = CovidNet(n_classes, image_size, width, dropout=0.3 if dropout is None else dropout)
        if state is not None:
            model.load_state_dict(state)
    else:
        dropout = 0.0 if dropout is None else dropout
        if name in ("resnet18", "resnet50"):
            model = _build_resnet(name, n_classes, state, hidden_units, dropout)
        elif name == "vgg16":
            model = _build_vgg16(n_classes, width, state, hidden_units, dropout)
        elif name == "inception_v3":
            model = _build_inception(n_classes, state, hidden_units, dropout)
        else:
            model = _build_xception(n_classes, state, hidden_units, dropout)
        if freeze_trunk:
            if state is None:
                warnings.warn(f"freezing the randomly initialised trunk of {name}: only the head "
                              "will learn", UserWarning, stacklevel=2)
            model.freeze_trunk()
    if freeze_trunk:
        description += "; convolutional layers frozen"
    model.build_args = build_args
    model.init_description = description
    return model


# --------------------------------------------------------------------------------------------
# Checkpoints


def save_classifier(model: nn.Module, path: str | Path, classes: list[str] | tuple[str, ...],
                    extra: dict | None = None) -> Path:
    """Write the weights of a :func:`build_classifier` model with everything needed to rebuild it.

    The file (``torch.save``) holds ``format``, ``build_args``, ``classes`` (the output order),
    ``init_description``, ``extra`` (e.g. the recipe and the fold) and ``state_dict``.
    """
    if not hasattr(model, "build_args"):
        raise ValueError("save_classifier needs a model made by build_classifier (no build_args)")
    if len(classes) != model.build_args["n_classes"]:
        raise ValueError(f"{len(classes)} class names for a "
                         f"{model.build_args['n_classes']}-class model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({
        "format": _CHECKPOINT_FORMAT,
        "build_args": model.build_args,
        "classes": list(classes),
        "init_description": getattr(model, "init_description", ""),
        "extra": dict(extra or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }, tmp)
    os.replace(tmp, path)
    return path


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_classifier` (eval mode, on ``device``).

    The model gets ``classes`` (list of class names, the output order) and ``checkpoint_extra``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier checkpoint not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a cxrlib classifier checkpoint "
                         f"(format {_CHECKPOINT_FORMAT})")
    args = dict(blob["build_args"])
    name = args.pop("name")
    args.pop("freeze_trunk", None)
    model = build_classifier(name, weights=None, **args)
    model.load_state_dict(blob["state_dict"])
    model.build_args = dict(blob["build_args"])
    model.init_description = blob.get("init_description", "")
    model.classes = list(blob["classes"])
    model.checkpoint_extra = blob.get("extra", {})
    return model.to(device).eval()
