"""Reading images and masks from disk as plain arrays.

Images come back as float32 in [0, 1] (8- and 16-bit PNG, JPEG, TIFF; RGB collapsed to gray;
DICOM files through :func:`cxrlib.data.dicom.read_dicom`), masks as bool. Formats are told by content,
not by name (:func:`image_format`): a JPEG named ``.jfif`` or a DICOM without extension reads
like any other. The bit depth of the file is kept in :func:`image_bit_depth` for the data audit.

Decoded pixels are checked (:mod:`cxrlib.data.pixel_checks`): NaN/inf values, a constant or
near-constant image raise :class:`DegenerateImageError` (``degenerate pixel data: ...``), which
importers turn into a QC report row. A raster file's EXIF orientation (phone exports) is
applied, so the array is the image every viewer shows.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cxrlib.data.dicom import has_dicom_content, read_dicom, read_dicom_header
from cxrlib.data.pixel_checks import DegenerateImageError, check_pixels

__all__ = ["DICOM_SUFFIXES", "DegenerateImageError", "image_bit_depth", "image_format",
           "read_image", "read_mask", "to_uint8", "overlay_rgb", "png_bytes"]

# PIL opens 16-bit PNGs in mode "I;16" (or "I" on some versions); 8-bit gray as "L".
_MODE_MAX = {"1": 1, "L": 255, "P": 255, "RGB": 255, "RGBA": 255, "LA": 255,
             "I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I": 65535}


#: File name suffixes read as DICOM.
DICOM_SUFFIXES = (".dcm", ".dicom")
#: Leading bytes ("magic numbers") of the raster formats read through Pillow.
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"II*\x00", "tiff"),
          (b"MM\x00*", "tiff"))


def image_format(path: str | Path) -> str | None:
    """The format of an image file from its first bytes, whatever its name.

    Returns ``"png"``, ``"jpeg"``, ``"tiff"``, ``"dicom"`` (:func:`cxrlib.data.dicom.has_dicom_content`:
    a Part 10 file, or a bare data set without preamble) or ``None`` (another format, not an
    image, or a file that cannot be opened).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return "dicom" if has_dicom_content(path) else None


def _is_dicom(path: str | Path) -> bool:
    return Path(path).suffix.lower() in DICOM_SUFFIXES or image_format(path) == "dicom"


def _open(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        img = Image.open(path)
        img.load()
    except Exception as exc:  # PIL raises several types for corrupt files
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    return img


def image_bit_depth(path: str | Path) -> int:
    """Bits per pixel of a stored grayscale image: 8 or 16 (DICOM: 16 when BitsStored > 8)."""
    if _is_dicom(path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"image not found: {path}")
        return 16 if (read_dicom_header(path).bits_stored or 16) > 8 else 8
    return 16 if _open(path).mode in ("I;16", "I;16B", "I;16L", "I") else 8


def read_image(path: str | Path) -> np.ndarray:
    """Read a radiograph as a float32 array (H, W) in [0, 1].

    16-bit files are scaled by 65535, 8-bit by 255; colour images are converted to luminance.
    A 32-bit integer image ("I") is scaled by its own maximum dtype range of 16 bits, which is how
    PIL reports 16-bit PNGs on some versions. DICOM files are decoded by
    :func:`cxrlib.data.dicom.read_dicom` (modality LUT, VOI window or LUT, MONOCHROME1 inverted) to
    uint16 and scaled by 65535. The EXIF orientation of a raster file (tag 0x0112, set by
    phones and cameras) is applied (:func:`PIL.ImageOps.exif_transpose`), so a rotated JPEG
    comes out as viewers show it.

    Raises
    ------
    FileNotFoundError; ValueError ``cannot read image PATH: ...`` for a corrupt or truncated
    file; :class:`DegenerateImageError` ``PATH: degenerate pixel data: ...`` for NaN/inf, a
    constant or a near-constant image (:mod:`cxrlib.data.pixel_checks`); DICOM errors as
    :func:`cxrlib.data.dicom.read_dicom` raises them (a degenerate DICOM is both a DicomError and a
    DegenerateImageError).
    """
    if _is_dicom(path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"image not found: {path}")
        pixels, _ = read_dicom(path)  # checked there (cxrlib.data.pixel_checks)
        return pixels.astype(np.float32) / np.float32(65535)
    img = _exif_upright(_open(path), path)
    mode = img.mode
    if mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
        img, mode = img.convert("L"), "L"
    if mode not in _MODE_MAX:
        raise ValueError(f"unsupported image mode {mode!r} in {path}")
    arr = np.asarray(img).astype(np.float32) / _MODE_MAX[mode]
    check_pixels(arr, str(path), 1.0)
    return np.clip(arr, 0.0, 1.0)


def _exif_upright(img: Image.Image, path: str | Path) -> Image.Image:
    """``img`` turned as its EXIF orientation says (unchanged without one)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a corrupt EXIF block: PIL raises several types
        return img
    if orientation in (None, 1):
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:
        raise ValueError(f"cannot read image {path}: EXIF orientation {orientation!r} "
                         f"cannot be applied: {exc}") from exc


def read_mask(path: str | Path) -> np.ndarray:
    """Read a 0/255 (or 0/1) mask as a bool array (H, W)."""
    img = _open(path)
    arr = np.asarray(img.convert("L") if img.mode not in ("L", "1") else img)
    return arr > 0


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float image in [0, 1] -> uint8 (rounded)."""
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def overlay_rgb(
    image: np.ndarray,
    lung_mask: np.ndarray | None = None,
    lesion_mask: np.ndarray | None = None,
    alpha: float = 0.35,
) -> np.ndarray:
    """Blend masks over a gray image.

    Parameters
    ----------
    image : float array (H, W) in [0, 1].
    lung_mask, lesion_mask : bool arrays (H, W) or None; lungs tinted green, lesions red.
    alpha : opacity of the tint in [0, 1].

    Returns
    -------
    uint8 array (H, W, 3).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2).astype(np.float32)
    for mask, colour in ((lung_mask, (0.0, 1.0, 0.0)), (lesion_mask, (1.0, 0.0, 0.0))):
        if mask is None:
            continue
        if mask.shape != image.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, dtype=np.float32)
    return np.round(rgb * 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB (H, W, 3) or gray (H, W) uint8 array encoded as PNG."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()
