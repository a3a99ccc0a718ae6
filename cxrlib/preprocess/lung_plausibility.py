"""Anatomical plausibility of a lung mask: the segmentation quality control (QC).

Seed 003 flagged a segmentation when both lungs were not found or when they covered less than 30%
of the image. That misses masks that run into the neck, the shoulders or the axillae, or that
cover one lung and a strip of background, so the QC here adds shape checks. Each check is a rule:
a function of the bool mask (H, W) returning a :class:`Check` - the failure reason ("" when the
rule passes) and a soft score in [0, 1]. :func:`plausibility` runs them all and returns the QC
columns of :func:`cxrlib.preprocess.segmentation.segment_manifest`.

The rules (name: the general phrase of the reason, then what is measured):

1. ``no_lung_pair``: "no lung pair found" - exactly two 8-connected regions, each covering at least
   ``min_region_fraction`` of the image (seed 003);
2. ``low_fraction``: "lungs under 20% of the image" - the lungs' share of the pixels is at least
   ``min_lung_fraction`` (seed 003's rule, at 30% there; a parameter, default 20%);
3. ``size_mismatch``: "lungs of very different size" - smaller / larger area;
4. ``not_side_by_side``: "lungs not side by side" - centroids apart horizontally, rows shared, and
   no wide empty gap between the lungs (one lung plus a strip of background at the image edge);
5. ``implausible_height``: "implausible lung height" - each lung's height against the image's
   height and against its own width;
6. ``top_edge``: "reaches the top edge or the neck" - a lung whose top is a wide front on the
   image's first row, or whose top rows lie over the neck (shifted toward the other lung) or
   form a narrow upward stalk;
7. ``bottom_edge``: "lower boundary outside the image" - a lung cut by the image's last row along
   much of its width (bases outside the image, or the mask running into the abdomen);
8. ``shoulders``: "lung widest at its top (shoulders or axillae)" - a lung is widest in its upper
   fifth, or its top rows lie lateral to it.

Rules 3 to 8 look at the two largest regions and are checked only when rule 1 passes (a missing
lung or merged lungs has no pair to measure).

Thresholds. Each rule's thresholds were set from true lung masks: the 12 radiologist masks of
``shared/real_sample`` (covid-chestxray-dataset, PA, 495 to 2828 px; "real" below) and 1540
synthetic masks (:func:`cxrlib.data.synthetic.generate_cohort`, "synthetic" below: ``arias`` 60 at
128 px seed 0, 60 at 256 px seed 1, 120 at 96 px seed 2, 480 at 128 px seed 5, 120 at 64 px
seed 7, 96 at 128 px seed 7, and the smoke profile's 2 x 120 at 128 px seed 0; ``covidgr`` 60 at
128 px seed 0, 40 at 256 px seed 3, 200 at 128 px seed 6, 64 at 128 px seed 0). Each threshold
lies beyond the most extreme true mask with a margin (the measured ranges are in each rule's
docstring), and no true mask fails rules 3 to 8. Real radiographs are often cropped through the
apices or the bases (2 of the 12 masks touch the bottom row, 1 the top row; synthetic ones too),
so touching an edge is not flagged by itself, only a lung cut along most of its width.
Rule 2 is seed 003's rule, but its default threshold is measured like the others
(:data:`MIN_LUNG_FRACTION`, 0.20): seed 003's 30% (:data:`SEED_003_MIN_LUNG_FRACTION`, pass it to
reproduce the paper) flags 4 of the 12 radiologist masks (their lungs cover 22.7% to 52.3% of
the image: framings that take in the neck or the abdomen) and synthetic ones (22.9% to 59.9%),
so a flag at 30% is no sign of a failed segmentation; every true mask passes at 0.20.

Score. Each measure has three values: ``ok`` (the true masks' side: score 1), ``fail`` (the
threshold: score 0.5) and ``zero`` (score 0), linear in between (:func:`soft_score`). A rule's
score is the lowest of its measures', and ``qc_plausibility`` the lowest over the rules (0 when no
lung pair is found): a mask passes the QC exactly when its plausibility is at least 0.5, and a
mask well inside the true masks' range scores 1.

Arrays: masks are bool (H, W), rows top to bottom. Reasons name the lungs by image side
("image-left lung": the patient's right lung in a standard frontal view).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

#: Seed 003's threshold on the lungs' share of the image.
SEED_003_MIN_LUNG_FRACTION = 0.30
#: The default threshold: under every true lung mask measured (22.7% real, 22.9% synthetic), as
#: the thresholds of rules 3 to 8 are. Seed 003's 0.30 flags a third of the real masks.
MIN_LUNG_FRACTION = 0.20

__all__ = [
    "RULES", "RULE_COLUMNS", "QC_COLUMNS", "Check", "Lung", "Lungs", "measure_lungs", "soft_score",
    "rule_phrase", "check_lung_pair", "check_lung_fraction", "check_size_ratio",
    "check_side_by_side", "check_height", "check_top_edge", "check_bottom_edge",
    "check_shoulders", "plausibility", "MIN_LUNG_FRACTION", "SEED_003_MIN_LUNG_FRACTION",
]

#: Rule name -> general phrase of its failure reason (``low_fraction``'s is formatted with the
#: threshold, see :func:`rule_phrase`).
RULES = {
    "no_lung_pair": "no lung pair found",
    "low_fraction": "lungs under {:.0%} of the image",
    "size_mismatch": "lungs of very different size",
    "not_side_by_side": "lungs not side by side",
    "implausible_height": "implausible lung height",
    "top_edge": "reaches the top edge or the neck",
    "bottom_edge": "lower boundary outside the image",
    "shoulders": "lung widest at its top (shoulders or axillae)",
}
#: One bool column per rule, true when the rule failed.
RULE_COLUMNS = [f"qc_rule_{name}" for name in RULES]
#: The columns of :func:`plausibility`, in order (seed 003's five first).
QC_COLUMNS = ["qc_lung_regions", "qc_lungs_found", "qc_lung_fraction", "qc_pass", "qc_reason",
              "qc_plausibility", *RULE_COLUMNS]

_EIGHT = np.ones((3, 3), dtype=bool)
_SIDES = ("image-left", "image-right")


def rule_phrase(name: str, min_lung_fraction: float = MIN_LUNG_FRACTION) -> str:
    """The general phrase of rule ``name``'s failure (what tables group by)."""
    return RULES[name].format(min_lung_fraction)


class Check(NamedTuple):
    """The result of one rule: ``reason`` ("" when it passes, else the rule's phrase, ": " and
    the details) and ``score`` in [0, 1] (below 0.5 exactly when it fails)."""

    reason: str
    score: float

    @property
    def failed(self) -> bool:
        return bool(self.reason)


def soft_score(value: float, ok: float, fail: float, zero: float) -> float:
    """Score of a measure in [0, 1]: 1 at ``ok`` and beyond, 0.5 at ``fail``, 0 at ``zero`` and
    beyond, linear in between. ``ok < fail < zero`` for an upper limit, ``ok > fail > zero`` for a
    lower one. A measure fails when its score is below 0.5."""
    if ok < fail:
        return float(np.interp(value, [ok, fail, zero], [1.0, 0.5, 0.0]))
    return float(np.interp(value, [zero, fail, ok], [0.0, 0.5, 1.0]))


def _combine(name: str, measures: list[tuple[float, str]], phrase: str | None = None) -> Check:
    """A rule's Check from (score, detail) pairs: the lowest score, the failed details."""
    score = min(s for s, _ in measures)
    details = [d for s, d in measures if s < 0.5]
    if not details:
        return Check("", score)
    return Check(f"{phrase or RULES[name]}: {', '.join(details)}", score)


# --------------------------------------------------------------------------------------------
# Measurements


@dataclass(frozen=True, eq=False)
class Lung:
    """One lung region of a mask, in pixels (rows down, columns right; bounds inclusive).

    ``widths``: float (height,), the region's pixels on each row from its top to its bottom;
    ``apex_x``: mean column of its pixels in its top 10% rows; ``top_contact`` and
    ``bottom_contact``: its pixels on the image's first and last rows.
    """

    area: int
    top: int
    bottom: int
    left: int
    right: int
    cy: float
    cx: float
    widths: np.ndarray
    apex_x: float
    top_contact: int
    bottom_contact: int

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1

    @property
    def width(self) -> int:
        return self.right - self.left + 1

    @property
    def max_width(self) -> float:
        """The most pixels on one row."""
        return float(self.widths.max())

    @property
    def widest_position(self) -> float:
        """Where the lung is widest, 0 at its top to 1 at its bottom: the mean row, over the rows
        within 2% of the widest, of the width profile smoothed over 5% of the height."""
        k = max(1, int(round(0.05 * self.height)))
        smooth = np.convolve(self.widths, np.ones(k) / k, mode="same")
        widest = np.flatnonzero(smooth >= 0.98 * smooth.max())
        return float(widest.mean() / max(self.height - 1, 1))

    @property
    def apex_width(self) -> float:
        """Mean width of the top 10% rows relative to :attr:`max_width`."""
        band = self.widths[:max(1, int(round(0.1 * self.height)))]
        return float(band.mean() / self.max_width)


@dataclass(frozen=True, eq=False)
class Lungs:
    """The regions of a lung mask (H, W): their count, their shares of the image (largest
    first), the lungs' share of the image, and the two largest regions, image-left first (None
    with fewer than two regions)."""

    shape: tuple[int, int]
    n_regions: int
    region_fractions: tuple[float, ...]
    fraction: float
    pair: tuple[Lung, Lung] | None


def _lung(region: np.ndarray, origin: tuple[int, int], shape: tuple[int, int]) -> Lung:
    """A :class:`Lung` from its bool bounding-box crop ``region`` at ``origin`` (row, column)."""
    rows = region.sum(axis=1).astype(float)
    cols = region.sum(axis=0).astype(float)
    area = float(rows.sum())
    r0, c0 = origin
    band = region[:max(1, int(round(0.1 * region.shape[0])))]
    band_cols = band.sum(axis=0)
    return Lung(
        area=int(area), top=r0, bottom=r0 + region.shape[0] - 1, left=c0,
        right=c0 + region.shape[1] - 1,
        cy=r0 + float(np.arange(region.shape[0]) @ rows) / area,
        cx=c0 + float(np.arange(region.shape[1]) @ cols) / area,
        widths=rows, apex_x=c0 + float(np.arange(region.shape[1]) @ band_cols) / band_cols.sum(),
        top_contact=int(region[0].sum()) if r0 == 0 else 0,
        bottom_contact=int(region[-1].sum()) if r0 + region.shape[0] == shape[0] else 0,
    )


def measure_lungs(mask: np.ndarray) -> Lungs:
    """Measure the 8-connected regions of a lung mask, bool (H, W) (any array, non-zero = lung)."""
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D array (H, W), got shape {mask.shape}")
    labels, n = ndimage.label(mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(sizes, kind="stable")[::-1]
    pair = None
    if n >= 2:
        slices = ndimage.find_objects(labels)
        lungs = []
        for k in order[:2]:
            sl = slices[k]
            lungs.append(_lung(labels[sl] == k + 1, (sl[0].start, sl[1].start), mask.shape))
        pair = tuple(sorted(lungs, key=lambda lung: lung.cx))
    return Lungs(shape=mask.shape, n_regions=int(n),
                 region_fractions=tuple(float(s) / mask.size for s in sizes[order]),
                 fraction=float(mask.mean()) if mask.size else 0.0, pair=pair)


def _lungs(mask_or_lungs) -> Lungs:
    return mask_or_lungs if isinstance(mask_or_lungs, Lungs) else measure_lungs(mask_or_lungs)


# --------------------------------------------------------------------------------------------
# The rules. Each takes a bool mask (H, W) or its measure_lungs(); rules 3 to 8 pass (score 1)
# when the mask has fewer than two regions: rule 1 reports those.


def check_lung_pair(mask, min_region_fraction: float = 0.05) -> Check:
    """Rule 1 (seed 003), "no lung pair found": exactly two regions, each at least
    ``min_region_fraction`` of the image. Score 1 or 0."""
    lungs = _lungs(mask)
    n = lungs.n_regions
    details = []
    if n == 0:
        details.append("no lung region")
    elif n == 1:
        details.append("one lung region only (a lung missing or both merged)")
    elif n > 2:
        details.append(f"{n} lung regions (expected 2)")
    small = sum(f < min_region_fraction for f in lungs.region_fractions)
    if n and small:
        details.append(f"{small} region(s) under {min_region_fraction:.0%} of the image")
    if not details:
        return Check("", 1.0)
    return Check(f"{RULES['no_lung_pair']}: {', '.join(details)}", 0.0)


def check_lung_fraction(mask, min_lung_fraction: float = MIN_LUNG_FRACTION) -> Check:
    """Rule 2 (seed 003), "lungs under 20% of the image": the lungs cover at least
    ``min_lung_fraction`` of the pixels (default :data:`MIN_LUNG_FRACTION`, under every true
    mask: the radiologist masks cover 22.7% to 52.3%; seed 003: 0.30). Score 1 from 1.2 times
    the threshold, 0 at half of it."""
    fraction = _lungs(mask).fraction
    if min_lung_fraction <= 0:
        return Check("", 1.0)
    score = soft_score(fraction, ok=1.2 * min_lung_fraction, fail=min_lung_fraction,
                       zero=0.5 * min_lung_fraction)
    if fraction >= min_lung_fraction:
        return Check("", max(score, 0.5))
    return Check(f"{rule_phrase('low_fraction', min_lung_fraction)}: "
                 f"{fraction:.1%} < {min_lung_fraction:.0%}", min(score, 0.49))


def check_size_ratio(mask, min_ratio: float = 0.35) -> Check:
    """Rule 3, "lungs of very different size": smaller / larger area of the two lungs at least
    ``min_ratio``. The right lung is larger than the left (the heart), so the pair is never equal.

    Measured ratio: 0.694 to 0.963 real, 0.606 to 1.0 synthetic; ``min_ratio`` 0.35 is about
    half the lowest. Score 1 from 0.55, 0 at 0.1.
    """
    pair = _lungs(mask).pair
    if pair is None:
        return Check("", 1.0)
    ratio = min(pair[0].area, pair[1].area) / max(pair[0].area, pair[1].area)
    return _combine("size_mismatch", [(soft_score(ratio, ok=0.55, fail=min_ratio, zero=0.1),
                                       f"ratio {ratio:.2f}")])


def check_side_by_side(mask, min_separation: float = 0.15, min_overlap: float = 0.5,
                       max_gap: float = 0.35) -> Check:
    """Rule 4, "lungs not side by side": the two lungs lie side by side across the mediastinum.

    - horizontal distance between the centroids / image width at least ``min_separation``
      (measured 0.325 to 0.502 real, 0.346 to 0.604 synthetic; score 1 from 0.25, 0 at 0.05):
      two regions one above the other (a lung and a blob over the neck) fail;
    - rows shared by the two lungs / the shorter lung's height at least ``min_overlap``
      (measured 0.952 to 1.0 real, 0.921 to 1.0 synthetic; score 1 from 0.8, 0 at 0);
    - empty columns between them (bounding boxes) / image width at most ``max_gap`` (measured
      -0.026 to 0.098 real, 0.052 to 0.164 synthetic; score 1 up to 0.2, 0 at 0.5): one lung
      plus a strip of background at the image edge fails.

    "One lung in each half of the image" is not required: a patient off centre moves both.
    """
    lungs = _lungs(mask)
    if lungs.pair is None:
        return Check("", 1.0)
    a, b = lungs.pair
    height, width = lungs.shape
    separation = (b.cx - a.cx) / width
    overlap = (min(a.bottom, b.bottom) - max(a.top, b.top) + 1) / min(a.height, b.height)
    gap = (b.left - a.right - 1) / width
    return _combine("not_side_by_side", [
        (soft_score(separation, ok=0.25, fail=min_separation, zero=0.05),
         f"centroids {separation:.0%} of the width apart"),
        (soft_score(overlap, ok=0.8, fail=min_overlap, zero=0.0),
         f"{max(overlap, 0.0):.0%} of the rows shared"),
        (soft_score(gap, ok=0.2, fail=max_gap, zero=0.5),
         f"{gap:.0%} of the width between them"),
    ])


def check_height(mask, min_height: float = 0.30, min_aspect: float = 0.8,
                 max_aspect: float = 4.0) -> Check:
    """Rule 5, "implausible lung height": each lung's vertical extent.

    - height / image height at least ``min_height`` (measured 0.549 to 1.0 real, 0.492 to 0.981
      synthetic; score 1 from 0.45, 0 at 0.1). No upper limit: a tightly cropped radiograph
      has lungs from its first to its last row;
    - height / width of its bounding box within [``min_aspect``, ``max_aspect``] (measured 1.146
      to 2.587 real, 1.340 to 3.059 synthetic; score 1 within [1.0, 3.2], 0 at 0.4 and 6.0):
      flat blobs and thin strips fail.
    """
    lungs = _lungs(mask)
    if lungs.pair is None:
        return Check("", 1.0)
    measures = []
    for side, lung in zip(_SIDES, lungs.pair):
        rel = lung.height / lungs.shape[0]
        aspect = lung.height / lung.width
        measures += [
            (soft_score(rel, ok=0.45, fail=min_height, zero=0.1),
             f"{side} lung {rel:.0%} of the image height"),
            (soft_score(aspect, ok=1.0, fail=min_aspect, zero=0.4),
             f"{side} lung height/width {aspect:.2f}"),
            (soft_score(aspect, ok=3.2, fail=max_aspect, zero=6.0),
             f"{side} lung height/width {aspect:.2f}"),
        ]
    return _combine("implausible_height", measures)


def _apex_shift(lung: Lung, other: Lung) -> float:
    """How far the lung's top rows lie toward the other lung, from its own centroid (0) to the
    other's (1); negative: lateral to it."""
    toward = np.sign(other.cx - lung.cx) or 1.0
    return float(toward * (lung.apex_x - lung.cx) / max(abs(other.cx - lung.cx), 1.0))


def check_top_edge(mask, max_top_contact: float = 0.9, max_apex_shift: float = 0.4,
                   min_apex_width: float = 0.12) -> Check:
    """Rule 6, "reaches the top edge or the neck": each lung's top is an apex inside the image.

    - its pixels on the image's first row / its widest row at most ``max_top_contact``
      (measured 0 to 0.244 real, 0 to 0.706 synthetic - cropped images cut the apices, so
      touching the edge alone is plausible; score 1 up to 0.75, 0 at 1.0): a lung cut at its
      widest, or a mask spilling into the shoulders up to the edge, fails;
    - the pixels of its top 10% rows centred toward the other lung by at most
      ``max_apex_shift`` of the distance between the centroids (apices lie a little medial:
      measured at most 0.267 real, 0.199 synthetic; score 1 up to 0.3, 0 at 0.7): a mask
      running up the neck, between the lungs, fails;
    - the mean width of its top 10% rows at least ``min_apex_width`` of its widest row
      (measured 0.270 to 0.516 real, 0.421 to 0.973 synthetic; score 1 from 0.22, 0 at 0.03):
      a narrow upward stalk fails.
    """
    lungs = _lungs(mask)
    if lungs.pair is None:
        return Check("", 1.0)
    measures = []
    for side, lung, other in ((_SIDES[0], *lungs.pair), (_SIDES[1], *lungs.pair[::-1])):
        contact = lung.top_contact / lung.max_width
        shift = _apex_shift(lung, other)
        apex = lung.apex_width
        measures += [
            (soft_score(contact, ok=0.75, fail=max_top_contact, zero=1.0),
             f"{side} lung on the first row along {contact:.0%} of its width"),
            (soft_score(shift, ok=0.3, fail=max_apex_shift, zero=0.7),
             f"{side} lung's top {shift:.0%} of the way to the other lung"),
            (soft_score(apex, ok=0.22, fail=min_apex_width, zero=0.03),
             f"{side} lung's top rows {apex:.0%} of its width"),
        ]
    return _combine("top_edge", measures)


def check_bottom_edge(mask, max_bottom_contact: float = 0.6) -> Check:
    """Rule 7, "lower boundary outside the image": each lung's pixels on the image's last row /
    its widest row at most ``max_bottom_contact``.

    Measured 0 to 0.149 real, 0 to 0.375 synthetic (a costophrenic angle or a base cut by the
    image edge is plausible, so touching the edge alone is not flagged); score 1 up to 0.45,
    0 at 1.0.
    """
    lungs = _lungs(mask)
    if lungs.pair is None:
        return Check("", 1.0)
    measures = []
    for side, lung in zip(_SIDES, lungs.pair):
        contact = lung.bottom_contact / lung.max_width
        measures.append((soft_score(contact, ok=0.45, fail=max_bottom_contact, zero=1.0),
                         f"{side} lung on the last row along {contact:.0%} of its width"))
    return _combine("bottom_edge", measures)


def check_shoulders(mask, min_widest_position: float = 0.2,
                    min_apex_shift: float = -0.15) -> Check:
    """Rule 8, "lung widest at its top (shoulders or axillae)": a lung is widest toward its base.

    - where it is widest (:attr:`Lung.widest_position`, 0 top to 1 bottom) at least
      ``min_widest_position`` (measured 0.391 to 0.915 real, 0.301 to 0.618 synthetic; score 1
      from 0.27, 0 at 0);
    - the pixels of its top 10% rows centred at most ``-min_apex_shift`` of the distance
      between the centroids lateral to its own centroid (true apices lie medial: shift at least
      0.055 real, 0.013 synthetic; score 1 from -0.05, 0 at -0.5).
    """
    lungs = _lungs(mask)
    if lungs.pair is None:
        return Check("", 1.0)
    measures = []
    for side, lung, other in ((_SIDES[0], *lungs.pair), (_SIDES[1], *lungs.pair[::-1])):
        position = lung.widest_position
        shift = _apex_shift(lung, other)
        measures += [
            (soft_score(position, ok=0.27, fail=min_widest_position, zero=0.0),
             f"{side} lung widest at {position:.0%} of its height"),
            (soft_score(shift, ok=-0.05, fail=min_apex_shift, zero=-0.5),
             f"{side} lung's top {-shift:.0%} of the lung spacing lateral to it"),
        ]
    return _combine("shoulders", measures)


# --------------------------------------------------------------------------------------------
# All rules


def plausibility(mask: np.ndarray, min_lung_fraction: float = MIN_LUNG_FRACTION,
                 min_region_fraction: float = 0.05) -> dict:
    """The segmentation QC of one lung mask, bool (H, W): every rule of this module.

    Returns a dict with the keys of :data:`QC_COLUMNS`: ``qc_lung_regions`` (int),
    ``qc_lungs_found`` (bool, rule 1 passes), ``qc_lung_fraction`` (float in [0, 1]), ``qc_pass``
    (bool, every rule passes), ``qc_reason`` ("" when it passes, else the failed rules' reasons
    joined by "; ", each its general phrase, ": " and details), ``qc_plausibility`` (float in
    [0, 1], the lowest rule score; at least 0.5 exactly when ``qc_pass``), and one bool
    ``qc_rule_<name>`` per rule of :data:`RULES`, true when that rule failed. Rules 3 to 8 are
    checked only when rule 1 passes.
    """
    lungs = measure_lungs(mask)
    checks = {"no_lung_pair": check_lung_pair(lungs, min_region_fraction),
              "low_fraction": check_lung_fraction(lungs, min_lung_fraction)}
    found = not checks["no_lung_pair"].failed
    if found:
        checks.update(size_mismatch=check_size_ratio(lungs),
                      not_side_by_side=check_side_by_side(lungs),
                      implausible_height=check_height(lungs),
                      top_edge=check_top_edge(lungs),
                      bottom_edge=check_bottom_edge(lungs),
                      shoulders=check_shoulders(lungs))
    reasons = [checks[name].reason for name in RULES if name in checks and checks[name].failed]
    return {
        "qc_lung_regions": lungs.n_regions,
        "qc_lungs_found": found,
        "qc_lung_fraction": lungs.fraction,
        "qc_pass": not reasons,
        "qc_reason": "; ".join(reasons),
        "qc_plausibility": min(c.score for c in checks.values()),
        **{f"qc_rule_{name}": name in checks and checks[name].failed for name in RULES},
    }
