"""Lesions and their RALE-like extent score.

Scoring (public, used on the rendered masks)
--------------------------------------------
Tabik et al. (2020, seed 000) grade COVID-19 severity with a RALE-derived score: each lung is
split into four parts and scores the number of parts involved (0-4); the total (0-8) gives
Normal-PCR+ (0), mild (1-2), moderate (3-5) and severe (6-8). Here, from a lung mask alone:

1. **Left and right lung.** The mask's columns are counted; inside the middle third of the
   mask's horizontal extent, the column with the fewest lung pixels (the middle of the run of
   minima: the mediastinum) splits the lungs. Pixels left of it in the image are the patient's
   RIGHT lung (standard radiographic display), the others the LEFT lung.
2. **Four parts per lung.** Each lung is split at its median row (upper / lower: each half holds
   half of that lung's pixels) and at its median column (lateral / medial; the median column
   itself is medial). Parts are numbered 1-4 for the right lung and 5-8 for the left lung, in
   the order of :data:`PART_NAMES`.
3. **Involved.** A part is involved when lesion pixels cover at least ``min_fraction`` of its
   pixels (default 0.1). Lesion pixels outside the lung mask are ignored.

Lesion generators
-----------------
- :func:`covid_lesions`: COVID-19 ground-glass opacity progressing to consolidation, bilateral,
  peripheral and lower-zone predominant, placed in exactly the parts that give a target RALE
  score (every chosen part covered at about 20-85% and at least 1.5 x ``min_fraction``, the
  others untouched), so that the score of the rendered masks equals the target.
- :func:`pneumonia_lesions`: bacterial lobar pneumonia, a dense consolidation of one lobe
  (mostly unilateral) with air bronchograms; :func:`effusion_region` blunts a costophrenic angle.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .frame import box_blur
from .frame import smooth_noise as random_field

#: Names of the four parts of each lung, in part-number order (1-4 right lung, 5-8 left lung).
PART_NAMES = ("upper lateral", "upper medial", "lower lateral", "lower medial")
#: RALE total -> COVIDGR severity level.
SEVERITY_BANDS = (("normal_pcr_pos", 0, 0), ("mild", 1, 2), ("moderate", 3, 5), ("severe", 6, 8))
#: Default share of a part that a lesion must cover for the part to count as involved.
MIN_FRACTION = 0.1
#: Lobes a lobar pneumonia can take, per lung side (0 right, 1 left).
LOBES = {0: ("lower", "middle", "upper"), 1: ("lower", "lingula", "upper")}


def _check_mask(mask, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1, 255)).all():
            raise ValueError(f"{name} must be boolean or hold only 0/1/255, got values "
                             f"{np.unique(arr)[:6].tolist()}")
        arr = arr > 0
    return arr


def split_column(lung_mask: np.ndarray) -> int:
    """Column separating the right lung (columns < result) from the left lung (step 1 above)."""
    lung = _check_mask(lung_mask, "lung_mask")
    counts = lung.sum(axis=0)
    cols = np.flatnonzero(counts)
    if cols.size == 0:
        raise ValueError("lung_mask is empty: no lung pixel to score")
    c0, c1 = int(cols[0]), int(cols[-1])
    lo = c0 + (c1 - c0) // 3
    hi = max(c0 + (2 * (c1 - c0)) // 3, lo)
    middle = counts[lo:hi + 1]
    minima = np.flatnonzero(middle == middle.min())
    return int(lo + minima[(minima.size - 1) // 2])


def _median_index(counts: np.ndarray) -> float:
    """Median of the indices of pixels counted per index (``np.median`` of the expanded list)."""
    cum = np.cumsum(counts)
    n = int(cum[-1])
    lo = int(np.searchsorted(cum, (n - 1) // 2 + 1))
    hi = int(np.searchsorted(cum, n // 2 + 1))
    return 0.5 * (lo + hi)


def lung_parts(lung_mask: np.ndarray) -> np.ndarray:
    """Label each lung pixel with its part (module docstring, steps 1-2).

    Parameters
    ----------
    lung_mask : (H, W) bool (or 0/1/255) mask of both lungs.

    Returns
    -------
    int8 (H, W): 0 outside the lungs, 1-4 the right lung's parts, 5-8 the left lung's, each
    in the order of :data:`PART_NAMES`.
    """
    lung = _check_mask(lung_mask, "lung_mask")
    split = split_column(lung)
    parts = np.zeros(lung.shape, np.int8)
    rows = np.arange(lung.shape[0])[:, None]
    for side, cols in ((0, slice(0, split)), (1, slice(split, lung.shape[1]))):
        block = lung[:, cols]
        if not block.any():
            continue
        lower = rows >= _median_index(block.sum(axis=1))
        col_index = np.arange(block.shape[1])[None, :]
        c_med = _median_index(block.sum(axis=0))
        medial = col_index >= c_med if side == 0 else col_index <= c_med
        label = (4 * side + 1 + 2 * lower + medial).astype(np.int8)
        parts[:, cols] = np.where(block, label, np.int8(0))
    return parts


class RaleScore(NamedTuple):
    """RALE-like extent score of one image.

    total : 0-8. right, left : 0-4 per lung (patient's sides). involved : bool (2, 4), rows
    right/left lung, columns in :data:`PART_NAMES` order. fraction : float (2, 4), lesion
    cover of each part.
    """

    total: int
    right: int
    left: int
    involved: np.ndarray
    fraction: np.ndarray


def rale_score(lung_mask, lesion_mask, min_fraction: float = MIN_FRACTION,
               parts: np.ndarray | None = None) -> RaleScore:
    """Score lesion extent per lung part from masks (see the module docstring).

    Parameters
    ----------
    lung_mask, lesion_mask : (H, W) bool or 0/1/255 arrays of the same shape.
    min_fraction : share of a part's pixels a lesion must cover for the part to be involved,
        in (0, 1].
    parts : ``lung_parts(lung_mask)`` if already computed.

    Returns
    -------
    :class:`RaleScore`.
    """
    lung = _check_mask(lung_mask, "lung_mask")
    lesion = _check_mask(lesion_mask, "lesion_mask")
    if lung.shape != lesion.shape:
        raise ValueError(f"lung_mask {lung.shape} and lesion_mask {lesion.shape} differ in shape")
    if not 0.0 < float(min_fraction) <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
    parts = lung_parts(lung) if parts is None else parts
    area = np.bincount(parts.ravel(), minlength=9)[1:9].reshape(2, 4).astype(float)
    hit = np.bincount(parts[lesion].ravel(), minlength=9)[1:9].reshape(2, 4).astype(float)
    fraction = np.divide(hit, area, out=np.zeros_like(hit), where=area > 0)
    involved = (fraction >= float(min_fraction)) & (area > 0)
    right, left = (int(v) for v in involved.sum(axis=1))
    return RaleScore(total=right + left, right=right, left=left, involved=involved,
                     fraction=fraction)


def severity_from_rale(score):
    """COVIDGR severity level of a RALE total (0 normal_pcr_pos, 1-2 mild, 3-5 moderate,
    6-8 severe). Accepts an int or an array-like of ints (returns an object array)."""
    arr = np.asarray(score)
    if arr.dtype.kind not in "iuf" or np.any(arr != np.round(arr)) or np.any((arr < 0) | (arr > 8)):
        raise ValueError(f"RALE scores must be integers in 0..8, got {score!r}")
    names = np.array(["normal_pcr_pos", "mild", "mild", "moderate", "moderate", "moderate",
                      "severe", "severe", "severe"], dtype=object)
    if arr.ndim == 0:
        return str(names[int(arr)])
    return names[arr.astype(int)]


def rale_range(severity: str) -> tuple[int, int]:
    """(lowest, highest) RALE total of a severity level."""
    for name, lo, hi in SEVERITY_BANDS:
        if name == severity:
            return lo, hi
    raise ValueError(f"unknown severity {severity!r}; known are {[b[0] for b in SEVERITY_BANDS]}")


# ------------------------------------------------------------------------------------------
# random fields
# ------------------------------------------------------------------------------------------

def smooth_noise(shape: tuple, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random field (float32, ``shape``, about zero mean, unit sd) with about ``cells``
    blobs across the long side."""
    return random_field(shape, max(shape) / max(cells, 1), rng)


# ------------------------------------------------------------------------------------------
# COVID-19
# ------------------------------------------------------------------------------------------

#: Preference for a part when COVID-19 lesions are placed (peripheral, lower zones first).
COVID_PART_WEIGHTS = np.array([2.0, 0.8, 5.0, 2.5])


def choose_parts(n_parts: int, rng: np.random.Generator,
                 available: np.ndarray | None = None) -> np.ndarray:
    """Pick ``n_parts`` of the 8 lung parts for COVID-19 lesions (bool (2, 4)).

    Lower and lateral parts are preferred (:data:`COVID_PART_WEIGHTS`), and after each pick the
    other lung is favoured, so that the disease is mostly bilateral.
    """
    if not 0 <= n_parts <= 8:
        raise ValueError(f"n_parts must be in 0..8, got {n_parts}")
    weights = np.tile(COVID_PART_WEIGHTS, (2, 1)).astype(float)
    if available is not None:
        weights = weights * available
    if n_parts > int((weights > 0).sum()):
        raise ValueError(f"cannot involve {n_parts} parts: only {int((weights > 0).sum())} exist")
    chosen = np.zeros((2, 4), bool)
    for _ in range(n_parts):
        w = np.where(chosen, 0.0, weights)
        if chosen.any():
            per_side = chosen.sum(axis=1)
            w = w * np.where(per_side < per_side[::-1], 1.8, 1.0)[:, None]
        flat = rng.choice(8, p=(w / w.sum()).ravel())
        chosen.flat[flat] = True
    return chosen


def covid_lesions(lung_mask: np.ndarray, fields: dict, target_rale: int, severity_level: float,
                  px_per_cm: float, rng: np.random.Generator, min_fraction: float = MIN_FRACTION,
                  parts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """COVID-19 opacities giving exactly ``target_rale`` involved parts.

    Parameters
    ----------
    lung_mask : (H, W) bool, the final visible lung fields.
    fields : anatomy fields ``lateralness``, ``height`` and ``air`` (float32 (H, W)).
    target_rale : 0-8, number of lung parts to involve.
    severity_level : 0..1, how dense (ground glass -> consolidation) and extensive the lesions are.
    px_per_cm : image scale.
    rng : the image's generator.
    min_fraction : involvement threshold the placement must exceed (with margin).
    parts : ``lung_parts(lung_mask)`` if already computed.

    Returns
    -------
    lesion_mask : (H, W) bool, inside ``lung_mask``.
    opacity : (H, W) float32 >= 0, added attenuation (about 0.15-0.3 ground glass; consolidation
        up to about 0.25 at the apices and 0.55 at the bases).
    """
    shape = lung_mask.shape
    if target_rale == 0:
        return np.zeros(shape, bool), np.zeros(shape, np.float32)
    parts = lung_parts(lung_mask) if parts is None else parts
    area = np.bincount(parts.ravel(), minlength=9)[1:9].reshape(2, 4)
    chosen = choose_parts(int(target_rale), rng, available=area >= 4)
    chosen_labels = np.flatnonzero(chosen.ravel()) + 1
    in_chosen = np.isin(parts, chosen_labels)
    # where lesions grow: a smooth random field weighted to the periphery and the lower zones
    periphery = np.exp(-(1.0 - fields["lateralness"]) / np.float32(0.6))
    lower = 0.35 + fields["height"]
    fine = smooth_noise(shape, 22, rng)
    noise = smooth_noise(shape, 9, rng) + 0.6 * fine
    score = np.exp(np.float32(0.8) * noise) * periphery * lower
    # one threshold per part (its target cover), unreachable in the parts left clear; the
    # thresholds are blended smoothly across part borders so that lesions have no straight
    # edges, and clipped to the chosen parts at the end
    base_cover = 0.25 + 0.45 * severity_level
    never = float(score.max()) * 2.0 + 1.0
    thresholds = np.full(9, never, np.float32)
    for label in chosen_labels:
        cover = float(np.clip(base_cover + rng.uniform(-0.12, 0.15),
                              max(2.0 * min_fraction, 0.2), 0.85))
        thresholds[label] = np.quantile(score[parts == label], 1.0 - cover)
    weight = box_blur(lung_mask.astype(np.float32), 1.2 * px_per_cm)
    blended = box_blur(np.where(lung_mask, thresholds[parts], np.float32(0)), 1.2 * px_per_cm)
    threshold = blended / np.maximum(weight, np.float32(1e-6))
    lesion = (score >= threshold) & in_chosen
    covered = np.bincount(parts[lesion], minlength=9)
    for label in chosen_labels:  # guarantee the cover of every chosen part
        wanted = int(np.ceil(1.5 * min_fraction * area.flat[label - 1]))
        if covered[label] < wanted:  # add the part's highest-scoring pixels
            part = parts == label
            lesion |= part & (score >= np.sort(score[part])[-wanted])
    # density: ground glass everywhere in the lesion, consolidation in its densest core; the
    # dependent lower zones consolidate most, and peripheral opacities reach the chest wall
    # and the diaphragm (they efface the lung border, as on real films: silhouette sign)
    soft = box_blur(lesion.astype(np.float32), 0.6 * px_per_cm)
    texture = 0.75 + 0.25 * fine
    ggo = np.float32(0.14 + 0.14 * severity_level) * texture
    core_thr = np.float32(np.quantile(score[lesion], 0.55))
    core = np.clip((score - core_thr) / np.float32(max(float(score[lesion].std()), 1e-6)), 0.0, 1.0)
    basal = np.float32(0.6) + np.float32(0.8) * np.clip(fields["height"], 0.0, 1.0) ** 2
    consolidation = np.float32(0.4 * severity_level ** 1.2) * basal * box_blur(
        (core * lesion).astype(np.float32), 0.5 * px_per_cm)
    opacity = (soft * ggo + consolidation) * (0.7 + 0.3 * np.clip(fields["air"] * 2.0, 0.0, 1.0))
    return lesion, opacity.astype(np.float32)


# ------------------------------------------------------------------------------------------
# bacterial pneumonia and effusion
# ------------------------------------------------------------------------------------------

def lobe_region(fields: dict, side: int, lobe: str, noise: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """Approximate frontal projection of a lobe (bool (H, W)) from the lung fields.

    ``lower``: below an oblique upper margin; ``upper``: above the horizontal fissure (right)
    or the mid lung (left); ``middle`` (right) / ``lingula`` (left): the medial mid-lower lung
    next to the heart border. ``noise`` (unit-sd smooth field) makes the margins irregular,
    except the fissures.
    """
    if lobe not in LOBES[side]:
        raise ValueError(f"lobe {lobe!r} is not a lobe of side {side}; choose from {LOBES[side]}")
    h, lat = fields["height"], fields["lateralness"]
    on_side = fields["side"] == side
    if lobe == "lower":
        top = rng.uniform(0.42, 0.6)
        region = h + 0.06 * noise > top + 0.15 * (1.0 - lat) - 0.05
    elif lobe == "upper":  # the horizontal fissure gives a sharp lower margin
        fissure = rng.uniform(0.38, 0.48)
        region = (h < fissure) & (lat + 0.22 * noise > rng.uniform(0.0, 0.25))
    else:
        fissure = rng.uniform(0.4, 0.5)
        region = ((h > fissure) & (h + 0.06 * noise < 0.92)
                  & (lat + 0.22 * noise < rng.uniform(0.5, 0.65)))
    return region & on_side


def pneumonia_lesions(lung_mask: np.ndarray, fields: dict, side: int, lobe: str, bilateral: bool,
                      px_per_cm: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Lobar consolidation on ``side`` (0 right, 1 left) in ``lobe``, optionally with a smaller
    focus in the other lower lobe.

    The lobe is filled from its inside out: a pixel is consolidated where the lobe's blurred
    indicator (1 deep inside, 0.5 at its margin) plus a random field passes a threshold, so the
    margins are irregular and the core solid. Returns the lesion mask (bool, inside
    ``lung_mask``) and the added attenuation (float32), dense (about 0.35-0.6) with faint air
    bronchograms drawn from the ``vessels`` field.
    """
    shape = lung_mask.shape
    noise = smooth_noise(shape, 12, rng)
    region = lobe_region(fields, side, lobe, noise, rng) & lung_mask
    extent = np.float32(rng.uniform(0.45, 0.7))  # higher: smaller, patchier consolidation
    if bilateral:
        other = lobe_region(fields, 1 - side, "lower", -noise, rng) & lung_mask
        region = region.astype(np.float32) + np.float32(0.75) * other
    filled = box_blur(region.astype(np.float32), 1.0 * px_per_cm)
    lesion = (filled + np.float32(0.25) * noise > extent) & (region > 0) & lung_mask
    soft = box_blur(lesion.astype(np.float32), 0.8 * px_per_cm)
    dense = np.float32(rng.uniform(0.35, 0.6)) * (0.88 + 0.12 * noise)
    bronchi = np.float32(rng.uniform(0.0, 0.2)) * fields.get("vessels", np.zeros(shape, np.float32))
    # a consolidated lobe is airless up to the pleura: it stays dense at the lung border
    opacity = soft * dense * (0.75 + 0.25 * np.clip(fields["air"] * 2.0, 0.0, 1.0)) - bronchi * soft
    return lesion, np.maximum(opacity, 0.0).astype(np.float32)


def effusion_region(fields: dict, x: np.ndarray, side: int, depth: float) -> np.ndarray:
    """Pleural fluid at the base of lung ``side`` (0 right, 1 left): bool (H, W).

    A meniscus rising laterally, ``depth`` (fraction of the lung height, about 0.05-0.3) deep at
    the lateral wall; ``x`` is the patient x coordinate of each pixel (cm, > 0 on the left).
    """
    h, lat = fields["height"], fields["lateralness"]
    on_side = x > 0 if side == 1 else x < 0
    return (fields["air"] > 0) & on_side & (h > 1.0 - depth * (0.3 + 0.7 * lat ** 2))
