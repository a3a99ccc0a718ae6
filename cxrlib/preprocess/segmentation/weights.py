"""The U-Net weights file: written with the training parameters beside it, read from a local
file only (nothing is downloaded)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from cxrlib.models.unet import UNet

__all__ = ["save_unet", "read_unet_params", "load_unet"]

_WEIGHTS_FORMAT = "cxrlib-unet-v1"


def _params_path(weights_path: Path) -> Path:
    return weights_path.with_suffix(".json")


def save_unet(model: UNet, path: str | Path, params: dict | None = None) -> Path:
    """Write the weights and architecture to ``path`` (a torch file) and ``params`` plus the
    architecture to ``path`` with suffix ``.json``. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": _WEIGHTS_FORMAT, "config": config, "state_dict": state}, tmp)
    os.replace(tmp, path)
    record = {"architecture": {"name": "UNet", **config}, **(params or {})}
    _params_path(path).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    return path


def read_unet_params(path: str | Path) -> dict:
    """The training parameters saved beside the weights ``path`` (its ``.json`` file), e.g.
    ``read_unet_params(p)["size"]`` is the input size to segment at. ``{}`` when absent."""
    params = _params_path(Path(path))
    return json.loads(params.read_text()) if params.is_file() else {}


def load_unet(path: str | Path, device: str | torch.device = "cpu") -> UNet:
    """Load a U-Net written by :func:`save_unet` from a local file (nothing is downloaded).

    Raises ``FileNotFoundError`` with instructions when the file does not exist, and
    ``ValueError`` when it is not a cxrlib U-Net weights file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no U-Net lung-segmentation weights at {path}. Weights are never downloaded: train "
            "them by running notebook 01 (lung segmentation), or in Python with "
            "cxrlib.preprocess.segmentation.train_unet_on_manifest(manifest, weights_path=...) "
            "(or train_unet(...) then save_unet(model, path)); or put a weights file written "
            f"by save_unet at {path}."
        )
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for a foreign or corrupt file
        raise ValueError(f"{path} is not a readable torch weights file: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != _WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a cxrlib U-Net weights file (written by save_unet)")
    model = UNet(**blob["config"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()
