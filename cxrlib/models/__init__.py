"""Network definitions (plain ``torch.nn`` modules, no training code)."""
from cxrlib.models.unet import UNet

__all__ = ["UNet"]
