"""The papers' preprocessed views of a radiograph, and their on-disk cache.

Each view is a pure function ``(image, mask) -> image`` on plain arrays:

========= =================================================================================
view      what it is
========= =================================================================================
``exp1``  seed 001, experiment 1: the raw image, histogram-equalised.
``exp2``  seed 001, experiment 2: a square lung region of interest (see :func:`square_roi_box`)
          cut from the *unmasked* image, equalised.
``exp3``  seed 001, experiment 3: the same square, the image multiplied by the lung mask dilated
          with a 5x5 kernel, equalised inside the lung only; everything outside is 0.
``sdnet`` seed 000 (COVID-SDNet): the smallest rectangle around both lungs plus 2.5% of its
          extent on each side, clipped to the image (see :func:`sdnet_box`); not equalised.
========= =================================================================================

Conventions
-----------
- ``image``: float array (H, W) in [0, 1] (as :func:`cxrlib.data.images.read_image` returns it).
- ``mask``: bool array (H, W), True on the lungs, same shape as the image.
- A *box* is ``(row0, row1, col0, col1)`` in pixels, half-open like a slice:
  ``image[row0:row1, col0:col1]``. A square box may leave the image (negative or past the edge);
  :func:`crop_to_box` pads the missing part with 0 (black), so the lungs stay centred and nothing
  is cut, as the paper asks. The padding takes part in the equalisation of ``exp2`` like any
  other black pixel.
- ``size``: when given, the crop is resized to ``size x size`` *before* equalisation (equalising
  the small image is much faster and the histogram of a resized image is nearly the same), and the
  5x5 dilation of ``exp3`` is applied at that output resolution. ``exp1`` keeps the aspect ratio
  up to the last step: the shorter side goes to ``size`` and the centre square is kept, which is
  the input pipeline of the seed-001 classifier; ``sdnet`` rectangles are resized to the square.
- Every view returns float32 in [0, 1]. All but ``sdnet`` are histogram-equalised (skimage).

The public code of seed 001 differs from its paper in three ways that change the results; each
is an option here and the ``public_code`` entry of :data:`VARIANTS` selects all three: the lung
mask is *eroded* (not dilated), only non-zero pixels are equalised, and the region of interest is
the lungs' bounding rectangle instead of the centred square.

:func:`build_views` computes views for a whole manifest and caches them as PNG files keyed by the
SHA-1 of the image and mask file contents plus the view's parameters, so an unchanged re-run reads
the cache and does no image work.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from skimage import exposure
from tqdm.auto import tqdm

from cxrlib.data.images import read_image, read_mask, to_uint8
from cxrlib.data.manifest import data_root_of

__all__ = [
    "VIEWS", "VARIANTS", "lung_extent", "square_roi_box", "rect_roi_box", "sdnet_box",
    "crop_to_box", "equalize", "resize_image", "resize_mask", "dilate_mask", "exp1_view",
    "exp2_view", "exp3_view", "sdnet_view", "make_view", "parse_view_name", "view_box",
    "BOX_COLUMNS",
    "mask_file_name", "BuiltViews", "build_views", "views_figure",
]

#: The views :func:`build_views` knows, in the study's order.
VIEWS = ("exp1", "exp2", "exp3", "sdnet")

#: Keyword options of each view for the paper's description and for the public code's behaviour.
VARIANTS: dict[str, dict[str, dict]] = {
    "paper": {"exp1": {}, "exp2": {"box": "square"},
              "exp3": {"box": "square", "mask_op": "dilate", "equalize_on": "lung"},
              "sdnet": {}},
    "public_code": {"exp1": {}, "exp2": {"box": "rect"},
                    "exp3": {"box": "rect", "mask_op": "erode", "equalize_on": "nonzero"},
                    "sdnet": {}},
}

#: Bumped whenever a view's pixels change for the same parameters, to invalidate old caches.
CACHE_VERSION = 1

Box = tuple[int, int, int, int]
#: The columns of ``views.csv`` that hold each view's box of the original image (:func:`view_box`).
BOX_COLUMNS = ("box_row0", "box_row1", "box_col0", "box_col1")


# --------------------------------------------------------------------------------------------
# Boxes


def _check_mask(mask: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D array (H, W), got shape {mask.shape}")
    if image is not None and np.shape(image) != mask.shape:
        raise ValueError(f"image {np.shape(image)} and mask {mask.shape} have different shapes")
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        raise ValueError("the lung mask is empty: no region of interest can be found")
    return mask


def lung_extent(mask: np.ndarray) -> Box:
    """Tight box around the mask, from its row and column projections (seed 001, Fig. 2).

    The row sums and column sums of the mask are non-zero exactly on the lungs' vertical and
    horizontal extents; their first and last non-zero positions are the four boundary points.

    Returns ``(row0, row1, col0, col1)``, half-open. Raises ``ValueError`` on an empty mask.
    """
    mask = _check_mask(mask)
    rows = np.flatnonzero(mask.sum(axis=1))
    cols = np.flatnonzero(mask.sum(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def square_roi_box(mask: np.ndarray) -> Box:
    """The square region of interest of seed 001 (experiments 2 and 3).

    The square is centred on the midpoints of the lungs' vertical and horizontal extents; its side
    is the longer extent. Along the longer extent it coincides with :func:`lung_extent`; along the
    shorter one it grows by ``(side - extent) // 2`` before and the rest after (so an odd
    difference puts the extra pixel below / to the right).

    Returns ``(row0, row1, col0, col1)`` with ``row1 - row0 == col1 - col0``; the box may extend
    past the image borders (see :func:`crop_to_box`).
    """
    r0, r1, c0, c1 = lung_extent(mask)
    height, width = r1 - r0, c1 - c0
    side = max(height, width)
    r0 -= (side - height) // 2
    c0 -= (side - width) // 2
    return r0, r0 + side, c0, c0 + side


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def rect_roi_box(mask: np.ndarray, margin: float = 0.0) -> Box:
    """Smallest rectangle around the lungs, widened by ``margin`` x its extent on every side and
    clipped to the image.

    ``margin`` is a fraction (0.025 = 2.5%): ``round(margin * height)`` rows are added above and
    below, ``round(margin * width)`` columns left and right (rounding half up).
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    mask = _check_mask(mask)
    r0, r1, c0, c1 = lung_extent(mask)
    dr = _round_half_up(margin * (r1 - r0))
    dc = _round_half_up(margin * (c1 - c0))
    h, w = mask.shape
    return max(0, r0 - dr), min(h, r1 + dr), max(0, c0 - dc), min(w, c1 + dc)


def sdnet_box(mask: np.ndarray, margin: float = 0.025) -> Box:
    """COVID-SDNet's segmentation-based cropping box (seed 000): the lungs' bounding rectangle plus
    2.5% of its extent on each side, clipped to the image. See :func:`rect_roi_box`."""
    return rect_roi_box(mask, margin=margin)


def crop_to_box(array: np.ndarray, box: Box, fill=0) -> np.ndarray:
    """``array[row0:row1, col0:col1]`` where the box may leave the array: the outside part is
    filled with ``fill``. Returns an array of shape (row1 - row0, col1 - col0), same dtype."""
    array = np.asarray(array)
    r0, r1, c0, c1 = (int(v) for v in box)
    if r1 <= r0 or c1 <= c0:
        raise ValueError(f"empty box {box}")
    h, w = array.shape[:2]
    out = np.full((r1 - r0, c1 - c0) + array.shape[2:], fill, dtype=array.dtype)
    sr0, sr1, sc0, sc1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    if sr1 > sr0 and sc1 > sc0:
        out[sr0 - r0:sr1 - r0, sc0 - c0:sc1 - c0] = array[sr0:sr1, sc0:sc1]
    return out


# --------------------------------------------------------------------------------------------
# Pixel operations


def _equalize_hist(image: np.ndarray, sample: np.ndarray, nbins: int) -> np.ndarray:
    """``skimage.exposure.equalize_hist`` of ``image`` with the histogram of ``sample``, float32.

    The cumulative histogram is skimage's; the piecewise-linear map through its bin centres is
    evaluated with arithmetic bin indices instead of ``np.interp``'s binary search (the bins are
    uniform), which is ~4x faster and gives np.interp's values: the index is corrected to the
    interval ``centres[j] <= x < centres[j + 1]`` that np.interp would find.
    """
    cdf, centres = exposure.cumulative_distribution(sample, nbins)
    cdf, centres = cdf.astype(np.float64), centres.astype(np.float64)  # as np.interp computes
    x = image.ravel().astype(np.float64)
    last = centres.size - 1
    if last < 1:
        return np.interp(x, centres, cdf).reshape(image.shape).astype(np.float32)
    step = (centres[-1] - centres[0]) / last
    j = np.clip(((x - centres[0]) / step).astype(np.intp), 0, last - 1)
    j -= (x < centres[j]) & (j > 0)
    j += (x >= centres[j + 1]) & (j < last - 1)
    slopes = (cdf[1:] - cdf[:-1]) / (centres[1:] - centres[:-1])
    out = slopes[j] * (x - centres[j]) + cdf[j]
    out[x <= centres[0]] = cdf[0]
    out[x >= centres[-1]] = cdf[-1]
    return out.reshape(image.shape).astype(np.float32)


def equalize(image: np.ndarray, region: np.ndarray | None = None, nbins: int = 256) -> np.ndarray:
    """Histogram equalisation (``skimage.exposure.equalize_hist``), float32 in [0, 1].

    With ``region`` (bool, same shape) the histogram is taken from the region's pixels only and
    the pixels outside it are set to 0, so they neither influence nor receive the mapping.
    An image or region with a single grey level is returned as 0 outside / 1 inside.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"image must be a 2-D array (H, W), got shape {image.shape}")
    if region is None:  # the whole image: no masking or copying needed
        if image.size == 0 or image.min() == image.max():
            return np.ones(image.shape, dtype=np.float32)
        return _equalize_hist(image, image, nbins)
    region = np.asarray(region, dtype=bool)
    if region.shape != image.shape:
        raise ValueError(f"image {image.shape} and region {region.shape} have different shapes")
    out = np.zeros(image.shape, dtype=np.float32)
    if not region.any():
        return out
    values = image[region]
    if values.min() == values.max():
        out[region] = 1.0
        return out
    out[region] = _equalize_hist(values, values, nbins)
    return out


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a float image (H, W) to ``shape`` (rows, cols) with Pillow's bilinear filter, which
    widens its support when shrinking (anti-aliased) and is ~10x faster than scikit-image on large
    radiographs. Returns float32."""
    image = np.asarray(image, dtype=np.float32)
    shape = (int(shape[0]), int(shape[1]))
    if image.shape == shape:
        return image
    resized = Image.fromarray(image).resize((shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a bool mask (H, W) to ``shape`` by bilinear area weighting, then >= 0.5."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == tuple(shape):
        return mask
    return resize_image(mask.astype(np.float32), shape) >= 0.5


def dilate_mask(mask: np.ndarray, radius: float, footprint: str = "square") -> np.ndarray:
    """Grow a bool mask (H, W) by ``radius`` pixels.

    ``footprint``: ``"square"``, a (2 r + 1)-pixel square with r = ``int(radius)`` (the 5x5
    kernel of seed 001's exp3 is ``radius=2``), or ``"disk"``, every pixel within Euclidean
    distance ``radius`` (fractional radii allowed). ``radius=0`` returns a copy of the mask.
    Returns bool (H, W).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D array (H, W), got shape {mask.shape}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0 pixels, got {radius}")
    if footprint == "square":
        r = int(radius)
        structure = np.ones((2 * r + 1,) * 2, dtype=bool)
    elif footprint == "disk":
        r = int(np.ceil(radius))
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        structure = yy ** 2 + xx ** 2 <= radius ** 2
    else:
        raise ValueError(f"footprint must be 'square' or 'disk', got {footprint!r}")
    if r == 0:
        return mask.copy()
    return ndimage.binary_dilation(mask, structure=structure)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"image must be a 2-D array (H, W), got shape {image.shape}")
    return image


def _check_size(size: int | None) -> None:
    if size is not None and (int(size) != size or size < 1):
        raise ValueError(f"size must be a positive integer or None, got {size!r}")


# --------------------------------------------------------------------------------------------
# The views


def exp1_view(image: np.ndarray, mask: np.ndarray | None = None,
              size: int | None = None) -> np.ndarray:
    """Experiment 1 of seed 001: the raw image, histogram-equalised. The mask is not used.

    With ``size``: the shorter side is resized to ``size`` (aspect ratio kept) and the centre
    ``size x size`` square is kept, then equalised. Returns float32 in [0, 1].
    """
    image = _check_image(image)
    _check_size(size)
    if size is not None:
        new, r0, c0 = _exp1_geometry(image.shape, size)
        image = resize_image(image, new)
        image = image[r0:r0 + size, c0:c0 + size]
    return equalize(image)


def _exp1_geometry(shape: tuple[int, int], size: int) -> tuple[tuple[int, int], int, int]:
    """exp1's resize and crop: the resized shape (shorter side ``size``, aspect kept, rounding
    half up) and the top-left corner of the centre ``size x size`` square in it."""
    h, w = (int(v) for v in shape)
    scale = size / min(h, w)
    new = (max(size, _round_half_up(h * scale)), max(size, _round_half_up(w * scale)))
    return new, (new[0] - size) // 2, (new[1] - size) // 2


def _roi_box(mask: np.ndarray, box: str) -> Box:
    if box == "square":
        return square_roi_box(mask)
    if box == "rect":
        return rect_roi_box(mask)
    raise ValueError(f"box must be 'square' or 'rect', got {box!r}")


def exp2_view(image: np.ndarray, mask: np.ndarray, size: int | None = None,
              box: str = "square") -> np.ndarray:
    """Experiment 2 of seed 001: the lung region of interest of the unmasked image, equalised.

    ``box="square"`` (the paper) uses :func:`square_roi_box`, padded with black where it leaves
    the image; ``box="rect"`` (the public code) uses the lungs' bounding rectangle. With ``size``
    the crop is resized to ``size x size`` before equalisation. Returns float32 in [0, 1].
    """
    image = _check_image(image)
    mask = _check_mask(mask, image)
    _check_size(size)
    crop = crop_to_box(image, _roi_box(mask, box), fill=0.0)
    if size is not None:
        crop = resize_image(crop, (size, size))
    return equalize(crop)


def exp3_view(image: np.ndarray, mask: np.ndarray, size: int | None = None, box: str = "square",
              mask_op: str = "dilate", kernel: int = 5, equalize_on: str = "lung") -> np.ndarray:
    """Experiment 3 of seed 001: the region of interest, masked, equalised inside the lung only.

    Steps: crop image and mask with the box of :func:`exp2_view`; resize both to ``size`` (when
    given); grow the mask with a ``kernel x kernel`` square (``mask_op="dilate"``, the paper) or
    shrink it (``"erode"``, the public code); multiply the image by it; equalise with the
    histogram of the lung (``equalize_on="lung"``: every pixel of the processed mask) or of the
    non-zero pixels of the masked image (``"nonzero"``, the public code). Pixels outside are 0.

    Returns float32 in [0, 1].
    """
    image = _check_image(image)
    mask = _check_mask(mask, image)
    _check_size(size)
    if kernel < 1:
        raise ValueError(f"kernel must be >= 1, got {kernel}")
    roi = _roi_box(mask, box)
    crop = crop_to_box(image, roi, fill=0.0)
    lung = crop_to_box(mask, roi, fill=False)
    if size is not None:
        crop = resize_image(crop, (size, size))
        lung = resize_mask(lung, (size, size))
    footprint = np.ones((kernel, kernel), dtype=bool)
    if mask_op == "dilate":
        lung = ndimage.binary_dilation(lung, structure=footprint)
    elif mask_op == "erode":
        lung = ndimage.binary_erosion(lung, structure=footprint)
    else:
        raise ValueError(f"mask_op must be 'dilate' or 'erode', got {mask_op!r}")
    masked = crop * lung
    if equalize_on == "lung":
        region = lung
    elif equalize_on == "nonzero":
        region = masked > 0
    else:
        raise ValueError(f"equalize_on must be 'lung' or 'nonzero', got {equalize_on!r}")
    return equalize(masked, region=region)


def sdnet_view(image: np.ndarray, mask: np.ndarray, size: int | None = None,
               margin: float = 0.025, histogram_equalization: bool = False) -> np.ndarray:
    """COVID-SDNet segmentation-based cropping (seed 000): crop :func:`sdnet_box` from the
    unmasked image and resize it to ``size x size`` when given (aspect ratio not kept, as a
    network input). Returns float32 in [0, 1].

    Seed 000 does not equalise the crop; ``histogram_equalization=True`` does, like the other
    views, when only the crop should differ between views.
    """
    image = _check_image(image)
    mask = _check_mask(mask, image)
    _check_size(size)
    crop = crop_to_box(image, sdnet_box(mask, margin=margin))
    if size is not None:
        crop = resize_image(crop, (size, size))
    return equalize(crop) if histogram_equalization else np.clip(crop, 0.0, 1.0)


_VIEW_FUNCTIONS = {"exp1": exp1_view, "exp2": exp2_view, "exp3": exp3_view, "sdnet": sdnet_view}


def _view_options(view: str, variant: str | dict) -> dict:
    if view not in _VIEW_FUNCTIONS:
        raise ValueError(f"unknown view {view!r}; choose from {list(VIEWS)}")
    if isinstance(variant, dict):
        return dict(variant.get(view, {}))
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {list(VARIANTS)} "
                         "or pass a dict")
    return dict(VARIANTS[variant][view])


def parse_view_name(view: str) -> tuple[str, str]:
    """A name of ``views.csv`` split into view and variant: ``exp3_public_code`` -> (``exp3``,
    ``public_code``), ``exp3`` -> (``exp3``, ``paper``)."""
    view = str(view)
    for variant in VARIANTS:
        if view.endswith("_" + variant):
            return view[:-len(variant) - 1], variant
    return view, "paper"


def view_box(view: str, image_shape: tuple[int, int], mask: np.ndarray | None = None,
             size: int | None = None, variant: str | dict = "paper") -> Box:
    """The box of the original image, ``(row0, row1, col0, col1)`` half-open, that a view shows.

    Parameters
    ----------
    view : ``exp1``, ``exp2``, ``exp3`` or ``sdnet``; a name of ``views.csv`` with a variant
        suffix (``exp3_public_code``) sets ``variant``.
    image_shape : (H, W) of the original image.
    mask : bool (H, W), the lung mask the view is cut around (not needed for ``exp1``).
    size : the view's side in pixels (``exp1`` keeps the centre square of the image resized to
        ``size``, mapped back here to whole pixels of the original; None: the whole image).
    variant : as for :func:`make_view`.

    Returns the box; like :func:`square_roi_box` it may leave the image (padding).
    :func:`build_views` writes it beside each view, so that later steps (Grad-CAM's maps in the
    image's frame) read it instead of recomputing it.
    """
    base, suffix_variant = parse_view_name(view)
    if suffix_variant != "paper":
        variant = suffix_variant
    if base not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    h, w = (int(v) for v in image_shape)
    if base == "exp1":
        if size is None:
            return 0, h, 0, w
        side = min(h, w)
        new, r0, c0 = _exp1_geometry((h, w), size)
        scale = size / side
        r0, c0 = int(round(r0 / scale)), int(round(c0 / scale))
        return r0, r0 + side, c0, c0 + side
    if mask is None:
        raise ValueError(f"view {view!r} is cut around the lungs: pass the lung mask it is "
                         "built with")
    mask = _check_mask(mask)
    if mask.shape != (h, w):
        raise ValueError(f"lung mask {mask.shape} differs from the image shape {(h, w)}")
    options = _view_options(base, variant)
    if base == "sdnet":
        return sdnet_box(mask, margin=options.get("margin", 0.025))
    return _roi_box(mask, options.get("box", "square"))


def make_view(view: str, image: np.ndarray, mask: np.ndarray | None, size: int | None = None,
              variant: str | dict = "paper") -> np.ndarray:
    """One view by name (``exp1``, ``exp2``, ``exp3``, ``sdnet``) with the options of ``variant``
    (a name in :data:`VARIANTS`, or a dict ``{view: {option: value}}``)."""
    options = _view_options(view, variant)
    return _VIEW_FUNCTIONS[view](image, mask, size=size, **options)


# --------------------------------------------------------------------------------------------
# The cache


def mask_file_name(image_id: str) -> str:
    """File name of an image's predicted mask inside a masks folder: ``<image_id>.png`` with any
    character other than letters, digits, ``.``, ``_``, ``-`` percent-encoded (so two ids never
    share a file)."""
    name = quote(str(image_id), safe="")
    if name in ("", ".", ".."):
        raise ValueError(f"image_id {image_id!r} cannot name a file")
    return f"{name}.png"


def _file_sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _write_png_atomic(image: np.ndarray, path: Path) -> None:
    """Write a [0, 1] float image as 8-bit PNG; the file appears only when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(to_uint8(image)).save(tmp, format="PNG")
    os.replace(tmp, path)


def _write_text_atomic(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class BuiltViews:
    """What :func:`build_views` made.

    Attributes ----------
    table : one row per (image, view): ``image_id``, ``view``, ``path`` (absolute PNG path),
        ``cached`` and the crop box (:data:`BOX_COLUMNS`).
    n_computed, n_cached : views computed now / read from the cache.
    skipped : ``(image_id, view, reason)`` of the views left out for a bad mask.
    cache_dir : where the PNGs are.
    """

    table: pd.DataFrame
    n_computed: int = 0
    n_cached: int = 0
    skipped: list = field(default_factory=list)
    cache_dir: str = ""


def build_views(
    manifest: pd.DataFrame,
    masks_dir: str | Path | None,
    views: tuple[str, ...] | list[str] = VIEWS,
    *,
    size: int,
    cache_dir: str | Path,
    data_root: str | Path | None = None,
    variant: str | dict = "paper",
    on_bad_mask: str = "raise",
    progress: bool = True,
) -> BuiltViews:
    """Compute (or read from the cache) the views of every manifest row, as PNG files.

    Parameters
    ----------
    manifest : validated manifest; ``path`` (and ``lung_mask_path`` when ``masks_dir`` is None)
        are relative to ``data_root``.
    masks_dir : folder of lung masks named by :func:`mask_file_name` (what
        :func:`cxrlib.preprocess.segmentation.segment_manifest` writes), or None to use the
        manifest's ``lung_mask_path`` (ground-truth masks).
    views : names among :data:`VIEWS`. ``exp1`` needs no mask.
    size : side of the square output images, in pixels.
    cache_dir : where the PNGs go: ``<cache_dir>/<view>/<key>.png``, the key being the SHA-1 of
        the image bytes, the mask bytes, the view, ``size``, the view's options and
        :data:`CACHE_VERSION`.
    data_root : image root; default ``manifest.attrs['data_root']``.
    variant : ``"paper"``, ``"public_code"`` or a dict of options per view (see :data:`VARIANTS`).
    on_bad_mask : ``"raise"`` (default) stops with an error naming the image when its mask is
        missing, empty or of another shape; ``"skip"`` leaves that image's masked views out,
        lists them in ``skipped`` and warns.
    progress : show a progress bar.

    Returns ------- :class:`BuiltViews`, whose ``table`` has one row per (image, view):
    ``image_id``, ``view``, ``path`` (absolute PNG path, 8-bit, ``size x size``), ``cached`` (True
    when the file already existed) and the box of the original image the view shows
    (:data:`BOX_COLUMNS`, :func:`view_box`; kept in the cache beside the PNG as
    ``<key>.box.json``). ``view`` is the view's name when its options are the paper's, else
    ``<name>_<variant>`` (``exp3_public_code``; ``exp3_custom`` for a dict), so both variants can
    sit in one table.
    """
    views = list(views)
    for view in views:
        _view_options(view, variant)  # validates names early
    suffix = f"_{variant if isinstance(variant, str) else 'custom'}"
    if on_bad_mask not in ("raise", "skip"):
        raise ValueError(f"on_bad_mask must be 'raise' or 'skip', got {on_bad_mask!r}")
    _check_size(size)
    root = data_root_of(manifest, data_root)
    cache_dir = Path(cache_dir).resolve()
    masks_dir = Path(masks_dir) if masks_dir is not None else None
    need_mask = any(v != "exp1" for v in views)

    rows, skipped = [], []
    n_computed = n_cached = 0
    for rec in tqdm(manifest.itertuples(index=False), total=len(manifest), desc="views",
                    disable=not progress):
        image_id = str(rec.image_id)
        image_path = root / rec.path
        if not image_path.is_file():
            raise FileNotFoundError(f"image of {image_id!r} not found: {image_path}")
        image_hash = _file_sha1(image_path)

        mask_path, mask_hash, mask_problem = None, "", ""
        if need_mask:
            if masks_dir is not None:
                mask_path = masks_dir / mask_file_name(image_id)
            elif isinstance(rec.lung_mask_path, str) and rec.lung_mask_path:
                mask_path = root / rec.lung_mask_path
            if mask_path is None or not mask_path.is_file():
                mask_problem = f"no lung mask (looked for {mask_path})" if mask_path else \
                    "no lung_mask_path in the manifest"
            else:
                mask_hash = _file_sha1(mask_path)

        image = mask = None
        for view in views:
            options = _view_options(view, variant)
            label = view if options == VARIANTS["paper"][view] else view + suffix
            uses_mask = view != "exp1"
            if uses_mask and mask_problem:
                if on_bad_mask == "raise":
                    raise FileNotFoundError(f"view {view!r} of image {image_id!r}: {mask_problem}")
                skipped.append((image_id, label, mask_problem))
                continue
            key_source = json.dumps({
                "image": image_hash, "mask": mask_hash if uses_mask else "", "view": view,
                "size": int(size), "options": options, "version": CACHE_VERSION,
            }, sort_keys=True)
            key = hashlib.sha1(key_source.encode()).hexdigest()
            out_path = cache_dir / label / f"{key}.png"
            box_path = out_path.with_suffix(".box.json")
            if out_path.is_file() and box_path.is_file():
                box = tuple(json.loads(box_path.read_text())["box"])
                rows.append((image_id, label, str(out_path), True, *box))
                n_cached += 1
                continue
            if image is None:
                image = read_image(image_path)
            if uses_mask and mask is None:
                mask = read_mask(mask_path)
            try:
                box = view_box(view, image.shape, mask if uses_mask else None, size=size,
                               variant=variant)
                cached = out_path.is_file()  # a cache written before the boxes were kept
                if not cached:
                    pixels = make_view(view, image, mask if uses_mask else None, size=size,
                                       variant=variant)
            except ValueError as exc:
                if on_bad_mask == "raise":
                    raise ValueError(f"view {view!r} of image {image_id!r} "
                                     f"(mask {mask_path}): {exc}") from exc
                skipped.append((image_id, label, str(exc)))
                continue
            if not cached:
                _write_png_atomic(pixels, out_path)
            _write_text_atomic(json.dumps({"box": [int(v) for v in box]}), box_path)
            rows.append((image_id, label, str(out_path), cached, *box))
            n_cached += cached
            n_computed += not cached

    if skipped:
        warnings.warn(f"{len(skipped)} view(s) skipped for a bad lung mask, e.g. "
                      f"{skipped[0][0]!r} ({skipped[0][2]}); see BuiltViews.skipped", stacklevel=2)
    table = pd.DataFrame(rows, columns=["image_id", "view", "path", "cached", *BOX_COLUMNS])
    return BuiltViews(table, n_computed=n_computed, n_cached=n_cached, skipped=skipped,
                      cache_dir=str(cache_dir))


def views_figure(
    rows: pd.DataFrame,
    views_table: pd.DataFrame,
    views: tuple[str, ...] | list[str] = VIEWS,
    data_root: str | Path | None = None,
    masks_dir: str | Path | None = None,
    label_columns: tuple[str, ...] = ("label", "source"),
    title: str = "",
):
    """Figure: one row per image - optionally the image, its true and predicted lung masks - then
    the chosen views read from the PNGs of a :func:`build_views` table.

    Parameters
    ----------
    rows : manifest rows to show (``image_id``, ``path``, optional ``lung_mask_path`` and the
        ``label_columns``, written at the left of each row).
    views_table : ``image_id``, ``view``, ``path`` (what :func:`build_views` returns; tables of
        several variants may be concatenated). A missing view leaves a grey panel.
    views : column order, names as in ``views_table['view']`` (e.g. ``exp3_public_code``).
    data_root : with it, the image and its true mask (when the manifest has one) come first.
    masks_dir : with it (and ``data_root``), the predicted mask (:func:`mask_file_name`) too.

    Returns a matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if rows.empty:
        raise ValueError("no images to show")
    lookup = {(str(i), v): p for i, v, p in
              views_table[["image_id", "view", "path"]].itertuples(index=False)}
    columns: list[str] = []
    if data_root is not None:
        columns.append("image")
        if "lung_mask_path" in rows.columns and rows["lung_mask_path"].notna().any():
            columns.append("true mask")
        if masks_dir is not None:
            columns.append("predicted mask")
    columns += list(views)
    fig, axes = plt.subplots(len(rows), len(columns), squeeze=False,
                             figsize=(1.8 * len(columns), 1.9 * len(rows)),
                             layout="constrained")
    for i, rec in enumerate(rows.to_dict("records")):
        image_id = str(rec["image_id"])
        for j, column in enumerate(columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(column, fontsize=8)
            if column == "image":
                panel = read_image(Path(data_root) / rec["path"])
            elif column == "true mask":
                truth = rec.get("lung_mask_path")
                panel = read_mask(Path(data_root) / truth) if isinstance(truth, str) and truth \
                    else None
            elif column == "predicted mask":
                path = Path(masks_dir) / mask_file_name(image_id)
                panel = read_mask(path) if path.is_file() else None
            else:
                path = lookup.get((image_id, column))
                panel = read_image(path) if path is not None else None
            if panel is None:
                ax.set_facecolor("#eeeeee")
                continue
            ax.imshow(panel, cmap="gray", vmin=0, vmax=1)
        labels = [str(rec[c]) for c in label_columns if c in rec]
        axes[i, 0].set_ylabel("\n".join(labels) or image_id, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
