"""Acquisition: framing and positioning, support devices, sensor, display mapping, burned-in
marks and collimation.

The order of :func:`cxrlib.data.synthetic.cohort.render_case` follows the physics: anatomy, lesions
and devices add up to a projected attenuation map (``density``); the sensor blurs it and adds
quantum noise (:func:`sensor`); the source's processing maps it to display grey levels
(:func:`display`, MONOCHROME2: more attenuation is brighter); finally the source burns in a
laterality marker and text (:func:`burn_in`) and collimation borders (:func:`collimate`).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from .anatomy import Thorax, splat
from .frame import PixelFrame, box_blur

#: Support devices that can be drawn, in drawing order.
DEVICES = ("ecg", "cvc", "ett", "ngt")
#: Image corners where a source burns in its marker and text: top/bottom, left/right.
CORNERS = ("tl", "tr", "bl", "br")
#: Entries of the tone-curve lookup table of :func:`display` (about 14 bits).
LUT_SIZE = 16384

# ------------------------------------------------------------------------------------------
# sensor properties (CR: storage-phosphor plates, blurrier, noisier, with a narrower dynamic
# range; DX: flat panels). latitude scales the attenuation contrast the detector records.
# ------------------------------------------------------------------------------------------
#: Density of soft tissue behind the chest, about mid-grey after display.
MID_DENSITY = 0.7
SENSORS = {
    "CR": dict(blur_cm=0.1, noise=0.011, grain_px=0.9, latitude=0.88),
    "DX": dict(blur_cm=0.06, noise=0.005, grain_px=0.5, latitude=1.0),
}


def image_shape(size: int, aspect: float) -> tuple[int, int]:
    """(height, width) with the long side ``size`` px and height / width = ``aspect``."""
    if aspect >= 1.0:
        return int(size), max(8, int(round(size / aspect)))
    return max(8, int(round(size * aspect))), int(size)


def view_frame(thorax: Thorax, shape: tuple, margin_side: float, margin_top: float,
               margin_bottom: float, shift: tuple, angle_deg: float) -> PixelFrame:
    """The pixel grid of an image framing the thorax.

    The field must hold the rib cage widened by ``margin_side`` and the lungs from
    ``margin_top`` x H above the apex to ``margin_bottom`` x H below the costophrenic angles
    (H: lung height); the tighter of the two fits sets the scale, and the loose direction shows
    more of the body. ``shift`` (fractions of the image width and height) and ``angle_deg``
    (in-plane rotation) are the positioning jitter.
    """
    h, w = shape
    H = thorax.height
    half_w = max(thorax.width) * margin_side + 0.5
    y_top = -margin_top * H
    y_bot = max(thorax.cp_y) + margin_bottom * H
    px_per_cm = min(w / (2.0 * half_w), h / (y_bot - y_top))
    cx = -shift[0] * w / px_per_cm
    cy = 0.5 * (y_top + y_bot) - shift[1] * h / px_per_cm
    return PixelFrame.build(shape, px_per_cm, (cx, cy), np.deg2rad(angle_deg))


# ------------------------------------------------------------------------------------------
# support devices
# ------------------------------------------------------------------------------------------

def _polyline_points(xy: np.ndarray, step_px: float, frame: PixelFrame):
    """Dense samples (row, col) along a polyline given in cm, spaced ``step_px`` pixels."""
    rows, cols = frame.to_pixels(xy[:, 0], xy[:, 1])
    seg = np.hypot(np.diff(rows), np.diff(cols))
    t = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(t[-1] / step_px), 2)
    ts = np.linspace(0.0, t[-1], n)
    return np.interp(ts, t, rows), np.interp(ts, t, cols)


def _curve(rng, pts: list, wiggle_cm: float, n: int = 40) -> np.ndarray:
    """Smooth curve (n, 2) through control points with a random transverse wiggle, cm."""
    pts = np.asarray(pts, dtype=float)
    t = np.linspace(0, 1, len(pts))
    ts = np.linspace(0, 1, n)
    xy = np.stack([np.interp(ts, t, pts[:, 0]), np.interp(ts, t, pts[:, 1])], axis=1)
    xy = ndi.gaussian_filter1d(xy, 3.0, axis=0, mode="nearest")
    freq = rng.uniform(1.0, 2.5)
    phase = rng.uniform(0, 2 * np.pi)
    d = np.gradient(xy, axis=0)
    normal = (np.stack([-d[:, 1], d[:, 0]], axis=1)
              / np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)[:, None])
    return xy + normal * (wiggle_cm * np.sin(2 * np.pi * freq * ts + phase))[:, None]


def _parallel_wires(xy: np.ndarray, calibre_cm: float, weight: float, frame: PixelFrame):
    """Points (rows, cols, weights) drawing a tube along the polyline ``xy`` (cm): one wire
    per 0.8 px of calibre, so that a wide tube is as wide as it should be."""
    r, c = _polyline_points(xy, 0.5, frame)
    dr, dc = np.gradient(r), np.gradient(c)
    norm = np.maximum(np.hypot(dr, dc), 1e-9)
    n_par = max(1, int(round(calibre_cm * frame.px_per_cm / 0.8)))
    offsets = (np.arange(n_par) - (n_par - 1) / 2) * 0.8
    rows = np.concatenate([r + off * dc / norm for off in offsets])
    cols = np.concatenate([c - off * dr / norm for off in offsets])
    return rows, cols, np.full(rows.size, 0.5 * weight)


def _electrode(out: np.ndarray, row: float, col: float, radius_px: float) -> None:
    """Add an ECG electrode (ring with a central stud) centred at (row, col), in place."""
    h, w = out.shape
    r0, r1 = max(int(row - radius_px) - 2, 0), min(int(row + radius_px) + 3, h)
    c0, c1 = max(int(col - radius_px) - 2, 0), min(int(col + radius_px) + 3, w)
    if r0 >= r1 or c0 >= c1:
        return
    rr = np.arange(r0, r1, dtype=np.float32)[:, None] - np.float32(row)
    cc = np.arange(c0, c1, dtype=np.float32)[None, :] - np.float32(col)
    d = np.sqrt(rr * rr + cc * cc)
    ring = np.clip(1.0 - np.abs(d - radius_px), 0.0, 1.0)
    stud = np.clip(0.35 * radius_px - d + 0.5, 0.0, 1.0)
    out[r0:r1, c0:c1] += 0.25 * ring + 0.6 * stud


def device_density(frame: PixelFrame, thorax: Thorax, devices: tuple,
                   rng: np.random.Generator) -> np.ndarray:
    """Radio-opaque support devices as an attenuation map (float32, frame shape).

    ``devices`` holds names from :data:`DEVICES`: ``ecg`` (3-5 electrodes with leads), ``cvc``
    (central venous catheter from a subclavian or jugular vein into the superior vena cava),
    ``ett`` (endotracheal tube ending above the carina), ``ngt`` (nasogastric tube down the
    oesophagus into the stomach).
    """
    unknown = set(devices) - set(DEVICES)
    if unknown:
        raise ValueError(f"unknown device(s) {sorted(unknown)}; known are {list(DEVICES)}")
    H, W = thorax.height, thorax.subject.half_width
    out = np.zeros(frame.shape, np.float32)
    tubes = []  # (polyline in cm, calibre in cm, attenuation)
    if "ecg" in devices:
        for _ in range(rng.integers(3, 6)):
            ex = rng.choice([-1, 1]) * rng.uniform(0.3, 1.0) * W
            ey = rng.uniform(0.05, 1.05) * H
            row, col = frame.to_pixels(ex, ey)
            _electrode(out, float(row), float(col), max(0.9 * frame.px_per_cm, 1.5))
            end = (np.sign(ex) * rng.uniform(1.2, 2.0) * W, rng.uniform(-0.4, 1.4) * H)
            mid = ((ex + end[0]) / 2 + rng.normal(0, 3), (ey + end[1]) / 2 + rng.normal(0, 3))
            tubes.append((_curve(rng, [(ex, ey), mid, end], 0.8), 0.1, 0.35))
    if "cvc" in devices:
        sign = rng.choice([-1, 1])
        start = (sign * rng.uniform(0.9, 1.4) * W, rng.uniform(0.0, 0.12) * H)
        svc = (-0.13 * W - 1.0, rng.uniform(0.3, 0.45) * H)
        path = [start, (sign * 0.4 * W, 0.12 * H), (-0.1 * W - 1.0, 0.2 * H), svc]
        tubes.append((_curve(rng, path, 0.2), 0.25, 0.5))
    if "ett" in devices:
        tip = thorax.carina_y - rng.uniform(2.0, 6.0)
        tubes.append((_curve(rng, [(-0.2, -0.7 * H), (-0.3, -0.2 * H), (-0.3, tip)], 0.1),
                      0.5, 0.25))
        tubes.append((_curve(rng, [(0.1, -0.7 * H), (0.0, tip)], 0.05), 0.12, 0.6))  # stripe
    if "ngt" in devices:
        stomach = (0.45 * thorax.width[1], thorax.dome_y[1] + rng.uniform(0.08, 0.2) * H)
        path = [(0.4, -0.7 * H), (0.6, 0.3 * H), (1.2, 0.8 * H), stomach,
                (stomach[0] - rng.uniform(2, 5), stomach[1] + 2.0)]
        tubes.append((_curve(rng, path, 0.3), 0.35, 0.45))
    if tubes:
        rows, cols, weights = zip(*(_parallel_wires(xy, cal, att, frame) for xy, cal, att in tubes))
        out += splat(frame.shape, np.concatenate(rows), np.concatenate(cols),
                     np.concatenate(weights))
    return np.minimum(out, 1.2)


# ------------------------------------------------------------------------------------------
# sensor and display
# ------------------------------------------------------------------------------------------

@lru_cache(maxsize=4)
def _noise_bank(side: int, grain_px: float) -> np.ndarray:
    """A fixed square of unit-variance noise (float32, ``side`` px), white or blurred by
    ``grain_px`` (CR grain); images take random crops of it, which is much cheaper than
    drawing fresh normals per pixel and identical in every process."""
    rng = np.random.default_rng(np.random.SeedSequence(20200526, spawn_key=(side,)))
    bank = rng.standard_normal((side, side), dtype=np.float32)
    if grain_px > 0.55:
        bank = ndi.gaussian_filter(bank, grain_px, truncate=2.5, mode="wrap")
    bank /= bank.std()
    bank.setflags(write=False)
    return bank


def noise_field(shape: tuple, grain_px: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise of ``shape`` (float32): a random crop, flip and sign of a bank."""
    h, w = shape
    side = max(512, int(np.ceil(1.5 * max(h, w) / 256.0)) * 256)
    bank = _noise_bank(side, float(grain_px))
    r0 = int(rng.integers(0, side - h + 1))
    c0 = int(rng.integers(0, side - w + 1))
    crop = bank[r0:r0 + h, c0:c0 + w]
    if rng.random() < 0.5:
        crop = crop[::-1]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return crop * np.float32(rng.choice([-1.0, 1.0]))


def sensor(density: np.ndarray, sensor_name: str, px_per_cm: float, noise_level: float,
           rng: np.random.Generator, prior_blur_px: float = 0.0) -> np.ndarray:
    """Detector blur and quantum noise applied to a density map (float32, same shape).

    Noise grows with the attenuation (fewer photons behind dense tissue); CR noise is coarser
    (grain), the CR image blurrier and its contrast lower (``latitude``) than DX.
    ``prior_blur_px`` is blur the map already has (e.g. from upsampling), subtracted in
    quadrature from the detector's.
    """
    try:
        props = SENSORS[sensor_name]
    except KeyError:
        raise ValueError(f"sensor must be one of {sorted(SENSORS)}, got {sensor_name!r}") from None
    sigma = np.sqrt(max(max(props["blur_cm"] * px_per_cm, 0.5) ** 2 - prior_blur_px ** 2, 0.0))
    img = ndi.gaussian_filter(density, sigma, truncate=3.0) if sigma >= 0.3 else density.copy()
    if props["latitude"] != 1.0:  # contrast reduced around soft-tissue density
        img = (np.float32(MID_DENSITY)
               + np.float32(props["latitude"]) * (img - np.float32(MID_DENSITY)))
    level = np.float32(props["noise"] * noise_level)
    img += (noise_field(density.shape, props["grain_px"], rng) * level
            * (0.5 + np.clip(img, 0.0, 1.5)))
    return img


def _sample(img: np.ndarray, step: int = 3) -> np.ndarray:
    return img[::step, ::step].ravel()


def display(density: np.ndarray, px_per_cm: float, black: float, white_percentile: float,
            compress: float, compress_cm: float, unsharp: float, unsharp_cm: float,
            contrast: float, gamma: float, equalize: float, output: tuple) -> np.ndarray:
    """Map attenuation to display grey levels in [0, 1] (float32), as a source's processing does.

    Parameters
    ----------
    density : float32 (H, W) attenuation after the sensor.
    px_per_cm : image scale (kernel sizes are given in cm).
    black : density mapped to 0 (air is 0, aerated lung about 0.3-0.5).
    white_percentile : percentile of the image's density mapped to 1.
    compress : dynamic-range compression: share of the large-scale variation (box kernel of
        ``compress_cm``) removed, which brings lungs and mediastinum closer.
    unsharp, unsharp_cm : edge enhancement amount and box-kernel size.
    contrast : slope of a sigmoid tone curve (about 1: nearly linear).
    gamma : power applied after the tone curve (> 1 darker).
    equalize : share of histogram equalisation mixed in.
    output : (low, high) grey levels of the result's black and white.
    """
    lo = black
    hi = max(float(np.percentile(_sample(density), white_percentile)), lo + 0.1)
    v = (density - np.float32(lo)) * np.float32(1.0 / max(hi - lo, 1e-6))
    if compress > 0:
        large = box_blur(v, compress_cm * px_per_cm)
        v = v - np.float32(compress) * (large - np.float32(large.mean()))
    if unsharp > 0:
        size = max(int(round(unsharp_cm * px_per_cm)), 3)
        v = v + np.float32(unsharp) * (v - ndi.uniform_filter(v, size=size, mode="nearest"))
    # the rest is a pointwise, monotone tone curve: apply it through a lookup table
    v_lo, v_hi = float(v.min()), float(v.max()) + 1e-6
    x = np.linspace(v_lo, v_hi, LUT_SIZE)
    s0, s1 = 1.0 / (1.0 + np.exp(contrast * 0.5)), 1.0 / (1.0 + np.exp(-contrast * 0.5))
    y = np.clip((1.0 / (1.0 + np.exp(-contrast * (x - 0.5))) - s0) / (s1 - s0), 0.0, 1.0) ** gamma
    index = ((v - np.float32(v_lo)) * np.float32((LUT_SIZE - 1) / (v_hi - v_lo))).astype(np.intp)
    if equalize > 0:
        # cumulative histogram of the toned image, over the same table
        hist = np.bincount(_sample(index), minlength=LUT_SIZE)
        cdf = np.cumsum(hist) / hist.sum()
        y = (1.0 - equalize) * y + equalize * cdf
    out_lo, out_hi = output
    table = (out_lo + (out_hi - out_lo) * y).astype(np.float32)
    return table[index]


# ------------------------------------------------------------------------------------------
# burned-in marks and collimation
# ------------------------------------------------------------------------------------------

@lru_cache(maxsize=256)
def text_alpha(text: str, height_px: int) -> np.ndarray:
    """Anti-aliased alpha mask (float32 in [0, 1]) of ``text`` about ``height_px`` tall.

    Rendered with Pillow's built-in font (no font file needed), cached.
    """
    height_px = max(int(height_px), 5)
    font = ImageFont.load_default(size=height_px)
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (max(right - left, 1) + 2, max(bottom - top, 1) + 2), 0)
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), text, fill=255, font=font)
    alpha = np.asarray(canvas, dtype=np.float32) / 255.0
    alpha.setflags(write=False)
    return alpha


def _paste(img: np.ndarray, alpha: np.ndarray, corner: str, pad: tuple, level: float,
           box_level: float | None) -> None:
    h, w = img.shape
    ah, aw = alpha.shape
    ah, aw = min(ah, h - 2), min(aw, w - 2)
    alpha = alpha[:ah, :aw]
    r0 = pad[0] if corner[0] == "t" else h - pad[0] - ah
    c0 = pad[1] if corner[1] == "l" else w - pad[1] - aw
    r0, c0 = int(np.clip(r0, 0, h - ah)), int(np.clip(c0, 0, w - aw))
    region = img[r0:r0 + ah, c0:c0 + aw]
    if box_level is not None:
        b = max(1, ah // 6)
        rb0, cb0 = max(r0 - b, 0), max(c0 - b, 0)
        img[rb0:r0 + ah + b, cb0:c0 + aw + b] = np.float32(box_level)
        region = img[r0:r0 + ah, c0:c0 + aw]
    region *= 1.0 - alpha
    region += alpha * np.float32(level)


def burn_in(img: np.ndarray, marker: str, marker_corner: str, marker_boxed: bool, text: str,
            text_corner: str, rng: np.random.Generator) -> None:
    """Burn a laterality ``marker`` letter and a line of ``text`` into ``img`` (in place).

    Empty strings draw nothing; corners are "tl", "tr", "bl", "br".
    """
    for corner in (marker_corner if marker else "tl", text_corner if text else "tl"):
        if corner not in CORNERS:
            raise ValueError(f"corner must be one of {list(CORNERS)}, got {corner!r}")
    h, w = img.shape
    side = min(h, w)
    if marker:
        size = max(int(round(side * rng.uniform(0.045, 0.07))), 6)
        pad = (int(side * rng.uniform(0.03, 0.08)), int(side * rng.uniform(0.03, 0.08)))
        _paste(img, text_alpha(marker, size), marker_corner, pad, rng.uniform(0.9, 1.0),
               rng.uniform(0.0, 0.15) if marker_boxed else None)
    if text:
        size = max(int(round(side * rng.uniform(0.028, 0.04))), 5)
        pad = (int(side * rng.uniform(0.02, 0.05)), int(side * rng.uniform(0.02, 0.05)))
        _paste(img, text_alpha(text, size), text_corner, pad, rng.uniform(0.85, 1.0), None)


def collimation_mask(shape: tuple, widths_px: tuple, tilt: float) -> np.ndarray:
    """Bool mask of the collimated border: ``widths_px`` = (top, bottom, left, right) in pixels,
    each edge tilted by ``tilt`` (radians)."""
    h, w = shape
    r = np.arange(h, dtype=np.float32)[:, None]
    c = np.arange(w, dtype=np.float32)[None, :]
    t = np.float32(np.tan(tilt))
    top, bottom, left, right = widths_px
    return ((r < top + t * (c - w / 2)) | (r > h - 1 - bottom + t * (c - w / 2))
            | (c < left - t * (r - h / 2)) | (c > w - 1 - right - t * (r - h / 2)))


def collimate(img: np.ndarray, border: np.ndarray, kind: str, rng: np.random.Generator) -> None:
    """Paint the collimated ``border`` (bool mask) of ``img`` in place: "white" is the unexposed
    plate (bright, slightly noisy), "black" a shutter applied by the processing."""
    if kind == "white":
        level = rng.uniform(0.85, 1.0)
        img[border] = np.clip(level + rng.normal(0, 0.01, int(border.sum())),
                              0, 1).astype(np.float32)
    elif kind == "black":
        img[border] = np.float32(rng.uniform(0.0, 0.04))
    elif kind != "none":
        raise ValueError(f"collimation must be 'white', 'black' or 'none', got {kind!r}")
