"""Batch-norm statistics of a trained network, re-estimated on data (no training step).

Used by the classifiers' training loop (:mod:`cxrlib.train.training`, after each epoch) and by
the U-Net's adaptation to a new corpus (:mod:`cxrlib.preprocess.segmentation_adaptation`).
"""
from __future__ import annotations

import torch

__all__ = ["precise_batchnorm"]


@torch.no_grad()
def precise_batchnorm(model: torch.nn.Module, batches, device=None) -> torch.nn.Module:
    """Precise batch-norm statistics ("precise BN", Wu & Johnson 2021), in place.

    Running averages (momentum 0.1) lag behind weights that change quickly, so a network
    evaluated early in training sees statistics of older weights. Here every batch-norm layer
    gets the plain average of its batch statistics over ``batches`` (PyTorch's
    ``torch.optim.swa_utils.update_bn``), except frozen layers (affine weights that do not
    train), which keep theirs.

    Parameters
    ----------
    model : the network; left in the train/eval mode it had.
    batches : iterable of input tensors (B, C, H, W), or of (inputs, targets) tuples.
    device : where to move each batch first (None: as they are).

    Returns
    -------
    ``model``. With no batch, or no batch-norm layer to update, it is unchanged.
    """
    from torch.optim.swa_utils import update_bn

    batches = list(batches)
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    frozen = [m for m in norms if m.weight is not None and not m.weight.requires_grad]
    if not batches or len(frozen) == len(norms):
        return model
    kept = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
            for m in frozen]
    update_bn(batches, model, device=device)
    for m, (mean, var, count) in zip(frozen, kept):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.num_batches_tracked.copy_(count)
    return model
