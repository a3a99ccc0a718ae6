"""The pixel grid of one image and its map to the patient frame (centimetres).

A :class:`PixelFrame` holds, for every pixel centre, the patient coordinates ``X`` (cm, to the
image right = the patient's left) and ``Y`` (cm, downwards), plus the inverse map used to draw
curves given in centimetres. The map is a similarity transform: scale ``px_per_cm``, rotation
``angle`` (radians, positive = patient turned clockwise on the image) and the patient point
``centre`` that lands on the image centre. Anatomy is evaluated on these arrays, optionally on a
sub-box of the image (:meth:`PixelFrame.box`) to save time for small structures, or on the
half-resolution grid (:meth:`PixelFrame.coarsen`, :func:`upsample2`, :func:`downsample2`).

Also here, the grid helpers shared by anatomy, lesions and display: :func:`smooth_noise`
(random blobby fields) and :func:`box_blur` (cheap wide blurs).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi


@lru_cache(maxsize=16)
def _centred_index_grids(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of pixel centres from the image centre, float32 (H, 1), (1, W)."""
    rows = np.arange(height, dtype=np.float32)[:, None] + np.float32(0.5 - height / 2)
    cols = np.arange(width, dtype=np.float32)[None, :] + np.float32(0.5 - width / 2)
    rows.setflags(write=False)
    cols.setflags(write=False)
    return rows, cols


@dataclass(frozen=True)
class PixelFrame:
    """Pixel grid <-> patient frame of one image.

    Attributes
    ----------
    shape : (height, width) in pixels.
    px_per_cm : pixels per centimetre in the image plane.
    centre : (x, y) patient point (cm) at the image centre.
    angle : in-plane rotation, radians.
    X, Y : float32 (height, width) patient coordinates of the pixel centres, cm.
    """

    shape: tuple
    px_per_cm: float
    centre: tuple
    angle: float
    X: np.ndarray
    Y: np.ndarray

    @classmethod
    def build(cls, shape: tuple, px_per_cm: float, centre: tuple, angle: float) -> "PixelFrame":
        """Grid of ``shape`` pixels showing the patient point ``centre`` at the image centre."""
        h, w = int(shape[0]), int(shape[1])
        if h < 8 or w < 8:
            raise ValueError(f"image shape must be at least 8x8 pixels, got {shape}")
        rows, cols = _centred_index_grids(h, w)
        ca, sa = np.float32(np.cos(angle) / px_per_cm), np.float32(np.sin(angle) / px_per_cm)
        X = np.float32(centre[0]) + (ca * cols - sa * rows)
        Y = np.float32(centre[1]) + (sa * cols + ca * rows)
        return cls((h, w), float(px_per_cm), (float(centre[0]), float(centre[1])), float(angle),
                   X, Y)

    def to_pixels(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) float pixel coordinates (0 = centre of the first pixel) of points in cm."""
        h, w = self.shape
        dx = np.asarray(x, dtype=np.float64) - self.centre[0]
        dy = np.asarray(y, dtype=np.float64) - self.centre[1]
        ca, sa = np.cos(self.angle), np.sin(self.angle)
        col = (ca * dx + sa * dy) * self.px_per_cm + w / 2 - 0.5
        row = (-sa * dx + ca * dy) * self.px_per_cm + h / 2 - 0.5
        return row, col

    def to_patient(self, row, col) -> tuple[np.ndarray, np.ndarray]:
        """Patient coordinates (x, y) in cm of (float) pixel coordinates (row, col)."""
        h, w = self.shape
        dc = (np.asarray(col, dtype=np.float64) - (w / 2 - 0.5)) / self.px_per_cm
        dr = (np.asarray(row, dtype=np.float64) - (h / 2 - 0.5)) / self.px_per_cm
        ca, sa = np.cos(self.angle), np.sin(self.angle)
        return self.centre[0] + ca * dc - sa * dr, self.centre[1] + sa * dc + ca * dr

    def coarsen(self) -> "PixelFrame":
        """The frame at half resolution: coarse pixel (j, k) covers fine pixels 2j..2j+1 and
        2k..2k+1 (the last coarse row/column overhangs an odd fine size by one pixel).
        See :func:`upsample2` for the way back."""
        h, w = self.shape
        hh, hw = (h + 1) // 2, (w + 1) // 2
        cx, cy = self.to_patient(hh - 0.5, hw - 0.5)
        return PixelFrame.build((hh, hw), self.px_per_cm / 2.0, (float(cx), float(cy)), self.angle)

    def box(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice] | None:
        """Pixel slices covering the patient rectangle [x0, x1] x [y0, y1] (cm), or None if the
        rectangle is outside the image."""
        xs = np.array([x0, x1, x0, x1])
        ys = np.array([y0, y0, y1, y1])
        r, c = self.to_pixels(xs, ys)
        h, w = self.shape
        r0, r1 = max(int(np.floor(r.min())) - 1, 0), min(int(np.ceil(r.max())) + 2, h)
        c0, c1 = max(int(np.floor(c.min())) - 1, 0), min(int(np.ceil(c.max())) + 2, w)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)


def downsample2(fine: np.ndarray) -> np.ndarray:
    """2x2 block means (float32), the grid of :meth:`PixelFrame.coarsen`: an odd last row or
    column is paired with itself. :func:`upsample2` goes back."""
    a = np.asarray(fine, dtype=np.float32)
    h, w = a.shape
    if h % 2:
        a = np.concatenate([a, a[-1:]], axis=0)
    if w % 2:
        a = np.concatenate([a, a[:, -1:]], axis=1)
    return (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) * np.float32(0.25)


def box_blur(img: np.ndarray, size_px: float) -> np.ndarray:
    """Two passes of a ``size_px`` box filter: a cheap tent-shaped blur (float32).

    Kernels of 4 px or more run at half resolution (:func:`downsample2`, :func:`upsample2`),
    which looks the same and costs a quarter.
    """
    img = np.asarray(img, dtype=np.float32)
    if size_px >= 4.0:
        return upsample2(box_blur(downsample2(img), size_px / 2.0), img.shape)
    size = max(int(round(size_px)), 1)
    if size == 1:
        return img
    return ndi.uniform_filter(ndi.uniform_filter(img, size, mode="nearest"), size, mode="nearest")


def upsample2(coarse: np.ndarray, shape: tuple) -> np.ndarray:
    """Bilinear 2x upsampling of an image of :meth:`PixelFrame.coarsen` back to ``shape``.

    Fine pixel ``2j`` lies a quarter coarse pixel before coarse pixel ``j``, ``2j + 1`` a
    quarter after; edges are replicated. float32 in, float32 out.
    """
    a = np.asarray(coarse, dtype=np.float32)
    h, w = shape
    if a.shape != ((h + 1) // 2, (w + 1) // 2):
        raise ValueError(f"coarse shape {a.shape} does not match fine shape {shape}")
    q, t = np.float32(0.25), np.float32(0.75)
    up = np.empty((2 * a.shape[0], a.shape[1]), np.float32)
    prev = np.concatenate([a[:1], a[:-1]], axis=0)
    nxt = np.concatenate([a[1:], a[-1:]], axis=0)
    up[0::2] = t * a + q * prev
    up[1::2] = t * a + q * nxt
    out = np.empty((up.shape[0], 2 * a.shape[1]), np.float32)
    prev = np.concatenate([up[:, :1], up[:, :-1]], axis=1)
    nxt = np.concatenate([up[:, 1:], up[:, -1:]], axis=1)
    out[:, 0::2] = t * up + q * prev
    out[:, 1::2] = t * up + q * nxt
    return out[:h, :w]


def smooth_noise(shape: tuple, cell_px: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random field of ``shape`` (float32, about zero mean and unit sd) with blobs about
    ``cell_px`` pixels wide: normals on a coarse grid, lightly smoothed, upsampled bilinearly."""
    h, w = shape
    step = max(float(cell_px), 1.0)
    gh, gw = int(np.ceil(h / step)) + 2, int(np.ceil(w / step)) + 2
    coarse = ndi.gaussian_filter(rng.standard_normal((gh, gw), dtype=np.float32), 0.6, mode="wrap")
    coarse /= np.float32(max(float(coarse.std()), 1e-6))
    r = (np.arange(h, dtype=np.float32) + 0.5) / np.float32(step) + 0.5
    c = (np.arange(w, dtype=np.float32) + 0.5) / np.float32(step) + 0.5
    r0, c0 = r.astype(np.intp), c.astype(np.intp)
    fr, fc = (r - r0)[:, None], (c - c0)[None, :]
    cols = coarse[:, c0] * (1 - fc) + coarse[:, c0 + 1] * fc  # along x first: (gh, w)
    return cols[r0] * (1 - fr) + cols[r0 + 1] * fr
