"""Sanity of decoded pixels: no radiograph is blank, constant or made of NaN.

Every reader (:func:`cxrlib.data.images.read_image`, :func:`cxrlib.data.dicom.read_dicom`) passes its
decoded array through :func:`check_pixels`. An image fails when

- a pixel is NaN or infinite (``non-finite pixel values``);
- every pixel has one value (``constant image``): e.g. a DICOM whose RescaleSlope is 0, a
  blank export;
- it is *near-constant*: at least ``MAX_BLANK_FRACTION`` (99.9 %) of its pixels hold the
  minimum or the maximum value (a blank image with a few stray pixels), or its standard
  deviation is below ``MIN_RELATIVE_STD`` of the value range the array could hold (1/2000 of
  full scale: a tenth of an 8-bit grey level).

No real radiograph trips this rule: chest X-rays hold hundreds of grey levels, a standard
deviation of 5-30 % of full scale, and their black borders cover far less than 99.9 % of the
image. Two-level images (test patterns, half black and half white) pass. The error,
:class:`DegenerateImageError`, says why, so that importers can turn it into a QC report row
(``degenerate pixel data: ...``).
"""
from __future__ import annotations

import numpy as np

#: Largest fraction of pixels at the minimum (or at the maximum) of a usable image.
MAX_BLANK_FRACTION = 0.999
#: Smallest standard deviation of a usable image, as a fraction of its full scale.
MIN_RELATIVE_STD = 1 / 2000

DEGENERATE = "degenerate pixel data"


class DegenerateImageError(ValueError):
    """Decoded pixels hold no image (NaN/inf, constant, near-constant); the message names the
    file (when known) and the reason, starting ``degenerate pixel data: ...``."""


def degenerate_reason(pixels: np.ndarray, full_scale: float | None = None) -> str | None:
    """Why ``pixels`` hold no usable image (see the module docstring), or ``None``.

    Parameters
    ----------
    pixels : decoded (H, W) array, any numeric dtype.
    full_scale : the range the values could span (1.0 for images in [0, 1], 65535 for
        uint16); default: the dtype's range for integers, 1.0 for floats. ``0`` skips the
        standard-deviation rule (values of unknown scale, e.g. after a modality LUT).
    """
    arr = np.asarray(pixels)
    if arr.size == 0:
        return f"{DEGENERATE}: empty image (shape {arr.shape})"
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        n_bad = int(np.count_nonzero(~np.isfinite(arr)))
        return f"{DEGENERATE}: non-finite pixel values (NaN or inf in {n_bad} pixel(s))"
    lo, hi = arr.min(), arr.max()
    if lo == hi:
        return f"{DEGENERATE}: constant image (every pixel is {lo.item()!r})"
    for name, value in (("minimum", lo), ("maximum", hi)):
        share = np.count_nonzero(arr == value) / arr.size
        if share >= MAX_BLANK_FRACTION:
            return (f"{DEGENERATE}: near-constant image ({share:.2%} of the pixels at the "
                    f"{name} {value.item()!r})")
    if full_scale is None:
        full_scale = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "iu" else 1.0
    std = float(np.std(arr, dtype=np.float64))
    if std < MIN_RELATIVE_STD * full_scale:
        return (f"{DEGENERATE}: near-constant image (standard deviation {std:.3g} is below "
                f"{MIN_RELATIVE_STD:.2g} of full scale {full_scale:g})")
    return None


def check_pixels(pixels: np.ndarray, where: str, full_scale: float | None = None) -> None:
    """Raise :class:`DegenerateImageError` ``"<where>: degenerate pixel data: ..."`` when
    :func:`degenerate_reason` finds one."""
    reason = degenerate_reason(pixels, full_scale)
    if reason:
        raise DegenerateImageError(f"{where}: {reason}")
