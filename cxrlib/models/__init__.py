"""Network definitions (plain ``torch.nn`` modules, no training code), one file per
architecture, and :func:`batchnorm.precise_batchnorm`, which re-estimates a network's batch-norm
statistics."""
from cxrlib.models.unet import UNet, UNetEnsemble

__all__ = ["UNet", "UNetEnsemble"]
