"""Training on a CUDA device: mixed precision, channels-last memory, DataLoader workers with
pinned memory, and cuDNN's autotuner, as one frozen :class:`DeviceSettings`.

A profile sets them (``gpu_mixed_precision``, ``gpu_channels_last``, ``loader_workers``,
``cudnn_benchmark``; :meth:`DeviceSettings.from_profile`) and the trainings take them as
``gpu=``: :func:`cxrlib.train.training.train_classifier` (fastai's ``MixedPrecision`` callback),
:func:`cxrlib.train.cit.train_cit` (a plain loop: ``torch.autocast`` and a ``GradScaler``),
:func:`cxrlib.preprocess.segmentation.train_unet`. The default, ``DeviceSettings()``, is everything
off: the trainings as they were before these settings existed.

- ``mixed_precision``: autocast to bfloat16 where the GPU supports it (no loss scaling needed),
  else float16 with a ``GradScaler``. Only on a CUDA device; on the CPU the training stays in
  float32, bit for bit as without it.
- ``channels_last``: the classifiers' weights and input batches in channels-last memory on a
  CUDA device (tensor cores want NHWC); the same arithmetic in another layout. The U-Net and the
  CiT generators use channels-last memory on every device already.
- ``loader_workers``: DataLoader worker processes that prepare and augment the batches while
  the device trains (on any device; with CUDA the batches are also copied to pinned memory by a
  background thread, which makes the host-to-device copy faster). 0: the batches are made in
  the training process, between the steps. On a CPU the training's own threads use the cores:
  workers beyond the spare cores fight them (a 2-core machine trained several times slower with
  one worker), hence 0 in the CPU profiles.
- ``device_augmentation``: the classifiers' training augmentation drawn for a whole batch on the
  CUDA device (:func:`cxrlib.train.training.augment_batch`) instead of image by image on the CPU.
  torchvision's elastic deformation blurs its displacement field with a 41 x 41 kernel, about
  30 ms per 224-px image on a CPU core: a few loader workers cannot feed a GPU that trains
  COVID-Net at a thousand images a second. The same transforms and distributions, other random
  draws. The U-Net's augmentation (domain randomisation, NumPy) stays on the CPU, in the loader
  workers.
- ``cudnn_benchmark``: let cuDNN time its convolution algorithms and keep the fastest
  (``torch.backends.cudnn.benchmark``). Off, cuDNN is also told to use deterministic
  algorithms (``cudnn.deterministic``), so that a unit trained again on the same GPU gives the
  same weights, as the study promises ("every executor gives the same tables"); on, a run is
  faster and no longer bitwise reproducible.

**Which of them enter a unit's settings hash** (:mod:`cxrlib.train.units`;
:meth:`DeviceSettings.hashed`): those that change what is computed, not only how. Mixed precision
computes in another arithmetic; the number of loader workers changes the random draws of the
augmentation (each worker draws from its own seed, fastai's ``set_seed(base seed + worker id)``;
the result is reproducible for a given number of workers, not across numbers); augmentation on the
device draws other random transforms. Channels-last memory and cuDNN's choice of algorithm are ways
of computing the same thing, like the device itself, which is not a setting either. Each enters the
hash only when it is on, so the settings of the CPU profiles (everything off) hash as before these
settings existed.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch

__all__ = ["DeviceSettings", "OFF", "default_device"]


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


@dataclass(frozen=True)
class DeviceSettings:
    """How a training uses a CUDA device (see the module's docstring).

    Attributes
    ----------
    mixed_precision : bfloat16 autocast where supported, else float16 with loss scaling (CUDA
        only).
    channels_last : channels-last weights and batches (CUDA only).
    loader_workers : DataLoader worker processes (0: none); pinned memory with CUDA.
    cudnn_benchmark : cuDNN's autotuner on, deterministic algorithms off (CUDA only).
    device_augmentation : the classifiers' augmentation on the device, batch by batch (CUDA
        only).
    """

    mixed_precision: bool = False
    channels_last: bool = False
    loader_workers: int = 0
    cudnn_benchmark: bool = False
    device_augmentation: bool = False

    def __post_init__(self):
        if not isinstance(self.loader_workers, int) or isinstance(self.loader_workers, bool) \
                or self.loader_workers < 0:
            raise ValueError(f"loader_workers must be a whole number >= 0, got "
                             f"{self.loader_workers!r}")

    @classmethod
    def from_profile(cls, profile) -> "DeviceSettings":
        """The settings of a profile (a :class:`cxrlib.profiles.Profile` or its name)."""
        from cxrlib.profiles import get_profile

        prof = get_profile(profile)
        return cls(mixed_precision=bool(prof.gpu_mixed_precision),
                   channels_last=bool(prof.gpu_channels_last),
                   loader_workers=int(prof.loader_workers),
                   cudnn_benchmark=bool(prof.cudnn_benchmark),
                   device_augmentation=bool(prof.gpu_augmentation))

    def as_dict(self) -> dict:
        return asdict(self)

    def hashed(self) -> dict:
        """The settings that change a unit's result, those that are on only: ``{}`` when
        mixed precision and augmentation on the device are off and there are no loader
        workers."""
        out: dict = {}
        if self.mixed_precision:
            out["mixed_precision"] = True
        if self.loader_workers:
            out["loader_workers"] = int(self.loader_workers)
        if self.device_augmentation:
            out["device_augmentation"] = True
        return out

    # ---- what a training on ``device`` does

    def amp_dtype(self, device) -> torch.dtype | None:
        """The autocast type on ``device``: bfloat16 (CUDA with bf16 support), float16 (other
        CUDA devices), or None (mixed precision off, or not a CUDA device)."""
        if not self.mixed_precision or not _is_cuda(device):
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def precision(self, device) -> str:
        """``"bf16"``, ``"fp16"`` or ``"fp32"``: what :meth:`amp_dtype` gives, in words."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype(device), "fp32")

    def memory_format(self, device) -> torch.memory_format:
        """``torch.channels_last`` with ``channels_last`` on a CUDA device, else contiguous."""
        return torch.channels_last if self.channels_last and _is_cuda(device) \
            else torch.contiguous_format

    def augments_on_device(self, device) -> bool:
        """Whether the classifiers' augmentation runs on ``device`` (CUDA only)."""
        return self.device_augmentation and _is_cuda(device)

    def loader_options(self, device) -> dict:
        """DataLoader keyword arguments: ``num_workers`` and ``pin_memory`` (with workers on a
        CUDA device, where a background thread pins each batch)."""
        return {"num_workers": int(self.loader_workers),
                "pin_memory": bool(self.loader_workers) and _is_cuda(device)}

    def autocast(self, device):
        """A context in which the forward pass runs in mixed precision (a no-op context when
        :meth:`amp_dtype` is None)."""
        dtype = self.amp_dtype(device)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=dtype)

    def grad_scaler(self, device):
        """A ``torch.amp.GradScaler`` for float16 autocast; None otherwise (bfloat16 has float32's
        range and needs no loss scaling)."""
        if self.amp_dtype(device) != torch.float16:
            return None
        return torch.amp.GradScaler("cuda")

    @contextlib.contextmanager
    def cudnn(self, device):
        """Within the context, on a CUDA device: ``cudnn.benchmark = cudnn_benchmark`` and
        ``cudnn.deterministic = not cudnn_benchmark``; the flags are restored after. Nothing
        changes on another device."""
        if not _is_cuda(device):
            yield
            return
        backend = torch.backends.cudnn
        before = (backend.benchmark, backend.deterministic)
        backend.benchmark = bool(self.cudnn_benchmark)
        backend.deterministic = not self.cudnn_benchmark
        try:
            yield
        finally:
            backend.benchmark, backend.deterministic = before

    def fastai_callbacks(self, device) -> list:
        """The fastai callbacks of a ``Learner`` on ``device``: ``MixedPrecision`` (bf16 or
        fp16) and one that turns each input batch channels-last; empty on the CPU."""
        callbacks = []
        dtype = self.amp_dtype(device)
        if dtype is not None:
            from fastai.callback.fp16 import AMPMode, MixedPrecision

            callbacks.append(MixedPrecision(
                amp_mode=AMPMode.BF16 if dtype == torch.bfloat16 else AMPMode.FP16))
        if self.memory_format(device) == torch.channels_last:
            callbacks.append(_channels_last_callback())
        return callbacks


#: Everything off: the trainings' default.
OFF = DeviceSettings()


def _channels_last_callback():
    from fastai.callback.core import Callback

    class ChannelsLastBatches(Callback):
        """Each 4-D input batch in channels-last memory, before the model sees it."""

        order = 5  # before MixedPrecision (10) enters autocast; the layout is all that changes

        def before_batch(self):
            self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last)
                                  if isinstance(x, torch.Tensor) and x.ndim == 4 else x
                                  for x in self.learn.xb)

    return ChannelsLastBatches()


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
