"""Domain randomisation of the U-Net's training images: what real radiographs vary in and the
synthetic cohort does not.

A U-Net trained on one generator learns that generator's grey levels, sharpness and framing.
Real radiographs come from many detectors and processing chains, so each training image is
redrawn with random acquisition changes before the U-Net's input normalisation
(:func:`cxrlib.preprocess.segmentation.normalise_unet_input`). Each change is a function
``(image, rng) -> image`` on a float image (S, S) in [0, 1], one draw per call:

- ``gamma``: a power curve, exponent log-uniform in [1/2, 2];
- ``window``: a window clipped from the grey levels (up to 15% of the range at either end),
  as a narrow display window or a saturated detector does;
- ``clahe``: contrast-limited adaptive histogram equalisation (scikit-image), as many
  vendors' processing does, mixed in at 30-100%;
- ``blur``: Gaussian blur, sigma 0.3-1.5 px (a soft detector, or an image downsampled by its
  source);
- ``sharpen``: unsharp masking, amount 0.3-1.5 (edge enhancement);
- ``noise``: Gaussian noise, sd 1-5% of the range (quantum noise at low dose);
- ``opacity``: one to three smooth opacities centred in the lungs (lower zones more often),
  brightened towards soft tissue: dense consolidation, which a radiologist's mask keeps as lung
  while a network trained on mostly aerated lungs learns "lung = dark";
- ``zoom_out``: the image shrunk to 65-95% and framed by a mirrored border, so that lungs
  fill less of the field (collimation that takes in the abdomen and shoulders);
- ``crop``: a crop of 75-95% of the field, resized back (apices or bases cut);
- ``rotation``: an in-plane rotation of up to 12 degrees.

The last three move the lungs, so they act on the mask as well: :func:`randomise` takes and
returns the pair. Each change is applied with probability ``p`` (independently), in the order
of :data:`CHANGES`.

Note on ``gamma`` and ``window``: the U-Net's input is histogram-equalised, which undoes any
increasing grey-level curve, so ``gamma`` changes the input only through quantisation and
``window`` only where it saturates. They are kept so that the benchmark's ablation measures
this instead of assuming it.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["CHANGES", "GEOMETRIC", "MASKED", "randomise", "check_changes"]


def _gamma(image, rng):
    return image ** np.float32(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))


def _window(image, rng):
    lo, hi = rng.uniform(0.0, 0.15), 1.0 - rng.uniform(0.0, 0.15)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def _clahe(image, rng):
    from skimage.exposure import equalize_adapthist

    mix = np.float32(rng.uniform(0.3, 1.0))
    local = equalize_adapthist(image, clip_limit=float(rng.uniform(0.01, 0.03))).astype(np.float32)
    return (1 - mix) * image + mix * local


def _blur(image, rng):
    return ndimage.gaussian_filter(image, rng.uniform(0.3, 1.5))


def _sharpen(image, rng):
    soft = ndimage.gaussian_filter(image, rng.uniform(1.0, 3.0))
    return np.clip(image + np.float32(rng.uniform(0.3, 1.5)) * (image - soft), 0.0, 1.0)


def _noise(image, rng):
    sd = rng.uniform(0.01, 0.05)
    return np.clip(image + rng.normal(0.0, sd, image.shape).astype(np.float32), 0.0, 1.0)


def _opacity(image, mask, rng):
    """1-3 smooth opacities in the lungs (centred in the lower zones more often), each raising
    the local mean grey level towards that of soft tissue (the image's 85th-97th percentile) by
    50-100%, the texture kept: dense consolidation or fluid, which stays lung in the mask."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return image
    size = max(image.shape)
    target = np.float32(np.percentile(image, rng.uniform(85, 97)))
    yy, xx = np.mgrid[:image.shape[0], :image.shape[1]].astype(np.float32)
    weight = (rows - rows.min() + 1.0) ** 2  # lower zones more often
    smooth = ndimage.gaussian_filter(image, size / 30)  # the ribs and vessels show through
    inside = ndimage.gaussian_filter(mask.astype(np.float32), size / 100)
    out = image.copy()
    for _ in range(int(rng.integers(1, 4))):
        k = rng.choice(rows.size, p=weight / weight.sum())
        radius = rng.uniform(0.08, 0.25) * size
        aspect = rng.uniform(0.6, 1.6)
        d2 = ((yy - rows[k]) / (radius * aspect)) ** 2 + ((xx - cols[k]) / radius) ** 2
        edge = ndimage.gaussian_filter(rng.normal(0, 1, image.shape).astype(np.float32), size / 25)
        blob = np.clip(1.5 - d2 - 0.6 * edge / max(float(edge.std()), 1e-6), 0.0, 1.0)
        out += (np.float32(rng.uniform(0.5, 1.0)) * blob * inside
                * np.clip(target - smooth, 0.0, None))
    return out


def _affine(image, mask, matrix, offset, mode):
    out = ndimage.affine_transform(image, matrix, offset=offset, order=1, mode=mode)
    m = ndimage.affine_transform(mask.astype(np.float32), matrix, offset=offset, order=1,
                                 mode="constant", cval=0.0) >= 0.5
    return out.astype(np.float32), m


def _zoom_about_centre(image, mask, scale, centre_shift, mode):
    """Output pixel p samples input (p - c) / scale + c + shift: scale < 1 zooms out."""
    c = (np.asarray(image.shape, float) - 1) / 2
    matrix = np.eye(2) / scale
    offset = c - matrix @ c + np.asarray(centre_shift, float)
    return _affine(image, mask, matrix, offset, mode)


def _zoom_out(image, mask, rng):
    return _zoom_about_centre(image, mask, rng.uniform(0.65, 0.95), (0.0, 0.0), "mirror")


def _crop(image, mask, rng):
    scale = 1.0 / rng.uniform(0.75, 0.95)
    room = (1 - 1 / scale) * np.asarray(image.shape) / 2
    shift = rng.uniform(-room, room)
    return _zoom_about_centre(image, mask, scale, shift, "nearest")


def _rotation(image, mask, rng):
    angle = np.deg2rad(rng.uniform(-12.0, 12.0))
    c = (np.asarray(image.shape, float) - 1) / 2
    matrix = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return _affine(image, mask, matrix, c - matrix @ c, "nearest")


#: Name -> change, in the order they are applied (grey-level changes, then geometry).
CHANGES = {"gamma": _gamma, "window": _window, "clahe": _clahe, "blur": _blur,
           "sharpen": _sharpen, "noise": _noise, "opacity": _opacity, "zoom_out": _zoom_out,
           "crop": _crop, "rotation": _rotation}
#: The changes that move the lungs (applied to image and mask together).
GEOMETRIC = ("zoom_out", "crop", "rotation")
#: The grey-level changes that need the mask (and leave it unchanged).
MASKED = ("opacity",)


def check_changes(names) -> tuple[str, ...]:
    """``names`` as a tuple in :data:`CHANGES` order; ValueError naming any unknown one."""
    names = tuple(names)
    unknown = [n for n in names if n not in CHANGES]
    if unknown:
        raise ValueError(f"unknown domain randomisation change(s) {unknown}; "
                         f"choose from {list(CHANGES)}")
    return tuple(n for n in CHANGES if n in names)


def randomise(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
              changes=tuple(CHANGES), p: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """One random redraw of a training pair.

    Parameters
    ----------
    image : float (S, S), any range: rescaled to [0, 1] (min to max) first.
    mask : bool (S, S), the lung mask, moved with the geometric changes.
    rng : the random generator (one draw per change).
    changes : names from :data:`CHANGES`.
    p : probability of applying each change.

    Returns
    -------
    image float32 (S, S) in [0, 1], mask bool (S, S).
    """
    image = np.asarray(image, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if image.ndim != 2 or image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must be the same 2-D shape")
    lo, hi = float(image.min()), float(image.max())
    image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    for name in check_changes(changes):
        if rng.random() >= p:
            continue
        if name in GEOMETRIC:
            image, mask = CHANGES[name](image, mask, rng)
        elif name in MASKED:
            image = CHANGES[name](image, mask, rng).astype(np.float32)
        else:
            image = CHANGES[name](image, rng).astype(np.float32)
    return np.clip(image, 0.0, 1.0), mask
