"""Sampling a cohort's cases, rendering them, and writing images, masks and the manifest.

Determinism: case parameters come from ``SeedSequence(seed, spawn_key=(0,))``; the body of
patient ``p`` from ``SeedSequence(seed, spawn_key=(1, p))`` (shared by all the patient's
images) and everything drawn for image ``i`` from ``SeedSequence(seed, spawn_key=(2, i))``.
Which images are written as DICOM, and how (:func:`dicom_plan`), comes from
``SeedSequence(seed, spawn_key=(3,))``, so the share changes no case and no pixel.
An image therefore does not depend on the order of rendering nor on ``n_jobs``, and the same
arguments give byte-identical files.

The shortcut knob
-----------------
For each patient, with probability ``shortcut`` the acquisition profile is its own source's
(``synth_coupled`` true); otherwise it is that of a source of the preset drawn uniformly at
random, independently of the label. The profile (``synth_style``) sets everything that is not
the disease: tone curve, framing and image size, marker, text, collimation, bit depth, the
projection / sensor / sex / age mixes, and the rate of support devices. Only coupled patients
get more devices (and supine AP films) when they are sicker. At ``shortcut = 0`` all of these
are therefore independent of the label; at 1 they follow the sources, which carry the labels,
as in the papers' corpora.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from scipy import ndimage as ndi
from tqdm.auto import tqdm

from cxrlib import __version__
from cxrlib.data.dicom import write_dicom
from cxrlib.data.manifest import COLUMNS, read_sidecar, validate_manifest, write_manifest
from cxrlib.paths import data_dir
from cxrlib.profiles import get_profile
from . import acquisition as acq
from .anatomy import build_thorax, keep_two_lungs, pose_subject, render_anatomy, sample_subject
from .disease import (
    LOBES, MIN_FRACTION, covid_lesions, effusion_region, lung_parts, pneumonia_lesions,
    rale_range, rale_score,
)
from .frame import PixelFrame
from .presets import SOURCE_FLOOR, get_preset

#: Bump when the rendering changes, so that cached cohorts are regenerated.
GENERATOR_VERSION = 2

#: Share of a profile's cached cohort (:func:`default_cohort`) written as DICOM, so that every
#: study run reads some images through :mod:`cxrlib.data.dicom`.
DEFAULT_DICOM_SHARE = 0.15
#: The obviously fake institution written into the synthetic DICOMs' identifying tags.
FAKE_INSTITUTION = "FAKE Synthetic Teaching Hospital"

#: Images whose short side has at least this many pixels render anatomy at half resolution.
COARSE_FROM = 160
#: Blur (gaussian sigma, px) that 2x bilinear upsampling leaves, counted in the detector's.
UPSAMPLE_BLUR_PX = 0.6

#: Base device rates per projection (probability per image) before the acuity factor.
DEVICE_RATES = {
    "PA": {"ecg": 0.04, "cvc": 0.02, "ett": 0.0, "ngt": 0.01},
    "AP": {"ecg": 0.30, "cvc": 0.16, "ett": 0.05, "ngt": 0.07},
}
#: How much sicker patients get devices (used only for coupled patients).
ACUITY = {"control": 0.4, "pneumonia": 1.4, "normal_pcr_pos": 0.8, "mild": 1.0,
          "moderate": 1.7, "severe": 2.8}


# ------------------------------------------------------------------------------------------
# sampling the cases (metadata only)
# ------------------------------------------------------------------------------------------

def _largest_remainder(total: int, weights: np.ndarray, floor: int = 0) -> np.ndarray:
    """Integer counts summing to ``total``: ``floor`` each first (if it fits), the rest in
    proportion to ``weights`` by the largest-remainder rule."""
    weights = np.asarray(weights, dtype=float)
    k = weights.size
    floor = min(floor, total // k) if k else 0
    counts = np.full(k, floor, dtype=int)
    rest = total - counts.sum()
    share = weights / weights.sum() * rest
    counts += np.floor(share).astype(int)
    left = total - counts.sum()
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    counts[order[:left]] += 1
    return counts


def _fraction(name: str, value) -> float:
    """``value`` as a float in [0, 1], or a ValueError naming ``name``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _check_args(preset, n_images, seed, shortcut):
    preset = get_preset(preset)
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise ValueError(f"n_images must be an integer >= 1, got {n_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return preset, int(n_images), int(seed), _fraction("shortcut", shortcut)


def cell_counts(preset, n_images: int) -> pd.DataFrame:
    """Images per (label, source) cell: class shares, then floor + sqrt(size) within a class.

    Returns a DataFrame with columns ``label``, ``source``, ``n``.
    """
    preset = get_preset(preset)
    labels = list(preset.labels)
    per_class = _largest_remainder(n_images,
                                   np.array([preset.class_shares[lab] for lab in labels]))
    rows = []
    for label, n_class in zip(labels, per_class):
        srcs = [s for s in preset.sources if label in s.labels]
        counts = _largest_remainder(int(n_class), np.sqrt([s.images for s in srcs]), SOURCE_FLOOR)
        rows += [dict(label=label, source=s.name, n=int(c)) for s, c in zip(srcs, counts)]
    return pd.DataFrame(rows)


def _patient_sizes(n: int, mean: float, rng) -> list[int]:
    """Split ``n`` images into patients with a geometric number of images of mean ``mean``."""
    sizes = []
    p = 1.0 / max(mean, 1.0)
    while sum(sizes) < n:
        sizes.append(int(min(rng.geometric(p), n - sum(sizes))))
    return sizes


def sample_cases(preset: str = "arias", n_images: int = 120, seed: int = 0,
                 shortcut: float = 1.0) -> pd.DataFrame:
    """Draw the per-image case parameters of a cohort (metadata only, no rendering).

    Parameters
    ----------
    preset : "arias", "covidgr" or "lungseg" (see :mod:`cxrlib.data.synthetic.presets`).
    n_images : number of images, >= 1.
    seed : non-negative integer.
    shortcut : in [0, 1], coupling of everything but the disease to the source (module doc).

    Returns
    -------
    DataFrame, one row per image, with the manifest's metadata columns (``image_id``,
    ``patient_id``, ``study_date``, ``source``, ``label``, ``severity``, ``sex``, ``age``,
    ``projection``, ``sensor``; no paths) and the planted ground truth ``synth_*``: preset,
    shortcut, style (whose acquisition profile the image wears), coupled, patient / image
    index, visit, supine, bit depth, aspect, marker, marker corner, text, text corner,
    collimation, devices ("+"-joined or "none"), rale_target (covid19 and control), lobe and
    effusion (pneumonia). Rows of a patient are consecutive, in study-date order; patients are
    in random order, so that image ids do not reveal the label.
    """
    preset, n_images, seed, shortcut = _check_args(preset, n_images, seed, shortcut)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    cells = cell_counts(preset, n_images)
    # severities of all covid19 images, by the preset's shares, dealt out at random
    n_covid = int(cells.loc[cells["label"] == "covid19", "n"].sum())
    sev_names = list(preset.severity_shares)
    counts = _largest_remainder(n_covid, np.array([preset.severity_shares[s] for s in sev_names]))
    severities = list(rng.permutation(np.repeat(sev_names, counts)))
    patients = [(cell.label, preset.source(cell.source), size)
                for cell in cells.itertuples()
                for size in _patient_sizes(cell.n, preset.source(cell.source).images_per_patient,
                                           rng)]
    rows = []
    for p_index, k in enumerate(rng.permutation(len(patients))):
        label, src, size = patients[k]
        patient = _draw_patient(preset, label, src, shortcut, rng)
        sevs = (sorted((severities.pop() for _ in range(size)), key=sev_names.index)
                if label == "covid19" else [None] * size)  # progression over the visits
        day = patient.pop("start")
        for visit, sev in enumerate(sevs):
            rows.append(dict(patient_id=f"{preset.name}_p{p_index:05d}", study_date=day.isoformat(),
                             **patient, **_draw_image(label, sev, patient, rng),
                             synth_shortcut=shortcut, synth_patient_index=p_index,
                             synth_visit=visit))
            day += timedelta(days=int(rng.integers(2, 9)))
    df = pd.DataFrame(rows)
    df.insert(0, "image_id", [f"{preset.name}_{i:06d}" for i in range(len(df))])
    df["synth_image_index"] = np.arange(len(df))
    df["synth_rale_target"] = df["synth_rale_target"].astype("Int64")
    first = [c for c in COLUMNS if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def _draw_patient(preset, label: str, src, shortcut: float, rng) -> dict:
    """Patient-level draws: the acquisition profile (shortcut rule), sex, age, first study
    date and, for pneumonia, the lobe and effusion."""
    coupled = bool(rng.random() < shortcut)
    style_src = src if coupled else preset.sources[rng.integers(len(preset.sources))]
    male = style_src.male_fraction
    if coupled and label in style_src.male_fraction_by_label:
        male = style_src.male_fraction_by_label[label]
    y0, y1 = src.years
    start = date(y0, 1, 1) + timedelta(days=int(rng.integers(0, 365 * (y1 - y0 + 1) - 30)))
    if label == "covid19" and y0 == 2020:  # the first wave in Spain
        start = date(2020, 2, 26) + timedelta(days=int(rng.integers(0, 110)))
    side = int(rng.random() < 0.4)  # pneumonia: 60 % right lung
    lobe = f"{('right', 'left')[side]}_{rng.choice(LOBES[side], p=[0.6, 0.2, 0.2])}"
    if rng.random() < 0.15:
        lobe += f"+{('left', 'right')[side]}_lower"
    effusion = bool(rng.random() < 0.4)  # parapneumonic effusion: up to 40% of inpatients
    return dict(
        source=src.name, label=label, sex="M" if rng.random() < male else "F",
        age=float(np.clip(round(rng.normal(style_src.age_mean, style_src.age_sd)), style_src.min_age, 95)),
        start=start, synth_preset=preset.name, synth_style=style_src.name, synth_coupled=coupled,
        synth_lobe=lobe if label == "pneumonia" else "none",
        synth_effusion=effusion and label == "pneumonia",
    )


def _draw_image(label: str, severity: str | None, patient: dict, rng) -> dict:
    """Image-level draws: projection, sensor, supine, devices, style marks, RALE target."""
    preset = get_preset(patient["synth_preset"])
    style_src = preset.source(patient["synth_style"])
    style = style_src.style
    projection = "AP" if rng.random() < style_src.ap_fraction else "PA"
    acuity = ACUITY[severity or label] if patient["synth_coupled"] else 1.0
    supine = projection == "AP" and rng.random() < min(0.35 * acuity, 0.9)
    devices = [d for d, rate in DEVICE_RATES[projection].items()
               if rng.random() < min(rate * acuity, 0.9)]
    rale = 0 if label == "control" else None
    if label == "covid19":
        lo, hi = rale_range(severity)
        rale = int(rng.integers(lo, hi + 1))
    marker = style.marker if rng.random() < style.marker_prob else ""
    text = ""
    if style.text and rng.random() < style.text_prob:
        text = style.text[rng.integers(len(style.text))].format(proj=projection)
    return dict(
        severity=severity or "", projection=projection,
        sensor="DX" if rng.random() < style_src.dx_fraction else "CR",
        synth_supine=bool(supine),
        synth_bit_depth=16 if rng.random() < style.bit16 else 8,
        synth_aspect=round(float(rng.uniform(*style.aspect)), 4),
        synth_marker=marker, synth_marker_corner=style.marker_corner if marker else "none",
        synth_text=text, synth_text_corner=style.text_corner if text else "none",
        synth_collimation=style.collimation if rng.random() < style.collimation_prob else "none",
        synth_devices="+".join(devices) or "none", synth_rale_target=rale,
    )


# ------------------------------------------------------------------------------------------
# rendering one case
# ------------------------------------------------------------------------------------------

def _field(case, name, default=None):
    value = case.get(name, default) if hasattr(case, "get") else getattr(case, name, default)
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return default
    return value


def render_case(case, size: int = 256, seed: int = 0) -> dict:
    """Render one case (a row of :func:`sample_cases`) at ``size`` px (long side).

    Parameters
    ----------
    case : Series or dict with the columns of :func:`sample_cases`.
    size : long side of the image in pixels (>= 32); the short side follows the case's aspect.
    seed : the cohort seed the case was sampled with.

    Returns
    -------
    dict with ``image`` (float32 (H, W) in [0, 1], MONOCHROME2), ``lung_mask`` and
    ``lesion_mask`` (bool (H, W); lesions inside the lungs), ``rale`` (:class:`RaleScore` of
    the rendered masks), ``lung_fraction`` and ``lesion_fraction`` (lesion / lung pixels),
    ``px_per_cm``.

    Raises
    ------
    RuntimeError if a COVID-19 image's rendered RALE score misses its target (a bug).
    """
    _check_size(size)
    preset = get_preset(_field(case, "synth_preset"))
    style = preset.source(_field(case, "synth_style")).style
    label = _field(case, "label")
    rng_subject = np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(1, int(_field(case, "synth_patient_index")))))
    rng = np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(2, int(_field(case, "synth_image_index")))))
    subject = sample_subject(rng_subject, _field(case, "sex"), float(_field(case, "age")))
    subject = pose_subject(subject, rng, _field(case, "projection"),
                           bool(_field(case, "synth_supine", False)))
    thorax = build_thorax(subject)
    frame = _view(case, thorax, style, int(size), rng)
    coarse = min(frame.shape) >= COARSE_FROM
    layers = render_anatomy(thorax, frame, rng, coarse=coarse, fields=LESION_FIELDS.get(label, ()),
                            over_heart=preset.mask_over_heart)
    collimation = _field(case, "synth_collimation", "none")
    border = np.zeros(frame.shape, bool)
    if collimation != "none":
        widths = tuple(rng.uniform(*style.collimation_cm) * frame.px_per_cm
                       if rng.random() < 0.7 else 0.0 for _ in range(4))
        border = acq.collimation_mask(frame.shape, widths, rng.normal(0, 0.01))
    lung = layers["mask"] & ~border
    density = layers["density"]
    fluid = None
    if label == "pneumonia" and bool(_field(case, "synth_effusion", False)):
        fluid = _add_effusion(case, subject, frame, layers, density, rng)
    if collimation != "none":  # a cut can leave specks
        lung = keep_two_lungs(lung, frame.X > 0)
    lesion, parts = _add_lesions(case, frame, layers, lung, density, rng, subject.lung_air)
    if fluid is not None:  # pleural fluid is an opacity inside the lung outline
        lesion |= fluid & lung
    devices = tuple(d for d in str(_field(case, "synth_devices", "none")).split("+") if d != "none")
    if devices:
        density += acq.device_density(frame, thorax, devices, rng)
    signal = acq.sensor(density, _field(case, "sensor"), frame.px_per_cm, style.noise, rng,
                        prior_blur_px=UPSAMPLE_BLUR_PX if coarse else 0.0)
    image = _display(signal, style, frame.px_per_cm, rng)
    acq.burn_in(image, _field(case, "synth_marker", ""), _field(case, "synth_marker_corner", "tr"),
                style.marker_boxed, _field(case, "synth_text", ""),
                _field(case, "synth_text_corner", "tl"), rng)
    if border.any():
        acq.collimate(image, border, collimation, rng)
    np.clip(image, 0.0, 1.0, out=image)
    score = rale_score(lung, lesion, MIN_FRACTION, parts=parts)
    if label == "covid19" and score.total != int(_field(case, "synth_rale_target")):
        raise RuntimeError(
            f"case {_field(case, 'image_id')}: rendered RALE {score.total} differs from the "
            f"target {_field(case, 'synth_rale_target')}")
    n_lung = int(lung.sum())
    return dict(image=image, lung_mask=lung, lesion_mask=lesion, rale=score,
                lung_fraction=n_lung / lung.size,
                lesion_fraction=float(lesion.sum()) / max(n_lung, 1), px_per_cm=frame.px_per_cm)


#: Anatomy fields the lesion generators need, per label.
LESION_FIELDS = {"covid19": ("air", "lateralness", "height"),
                 "pneumonia": ("air", "lateralness", "height", "vessels")}


def _check_size(size) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an integer >= 32 pixels, got {size!r}")


def _view(case, thorax, style, size: int, rng) -> PixelFrame:
    """The image grid: the style's size, aspect and framing, with positioning jitter."""
    shape = acq.image_shape(size, float(_field(case, "synth_aspect", 1.0)))
    jitter = 2.5 if _field(case, "projection") == "AP" else 1.5  # degrees
    if rng.random() < style.tight_crop:  # cropped around the lungs, a costophrenic tip may go
        margins = rng.uniform(0.9, 1.0), rng.uniform(0.0, 0.05), rng.uniform(-0.03, 0.04)
    else:
        margins = (rng.uniform(*style.margin_side), rng.uniform(*style.margin_top),
                   rng.uniform(*style.margin_bottom))
    return acq.view_frame(
        thorax, shape, *margins, shift=tuple(np.clip(rng.normal(0, 0.025, 2), -0.06, 0.06)),
        angle_deg=float(np.clip(rng.normal(0, jitter), -3 * jitter, 3 * jitter)))


def _add_effusion(case, subject, frame, layers, density, rng) -> np.ndarray:
    """Add pleural fluid on the pneumonia's side to ``density`` (in place); return its region.

    The fluid replaces the air of the lung base, but the lung mask keeps the lung's outline
    (as radiologists draw it on a film with an effusion), so that a white base is still lung.
    """
    side = 0 if str(_field(case, "synth_lobe")).startswith("right") else 1
    fluid = effusion_region(layers, frame.X, side, rng.uniform(0.06, 0.35))
    soft = ndi.gaussian_filter(fluid.astype(np.float32), max(0.25 * frame.px_per_cm, 0.6))
    density += soft * (np.float32(subject.lung_air) * layers["air"] + 0.06)
    return fluid


def _add_lesions(case, frame, layers, lung, density, rng, lung_air: float):
    """Add the case's lesions to ``density`` (in place). Returns the lesion mask and the lung
    parts (None unless COVID-19).

    A lesion fills the air spaces: it adds at most the attenuation of the air it displaces
    (``lung_air`` x the air depth) plus a little for thickened interstitium, so that an airless
    lung is as dense as soft tissue (it effaces the heart and diaphragm borders), never denser.
    """
    label = _field(case, "label")
    ppc = frame.px_per_cm
    if label in ("covid19", "pneumonia"):
        ceiling = np.float32(lung_air) * layers["air"] + np.float32(0.06)
    if label == "covid19":
        target = int(_field(case, "synth_rale_target"))
        level = float(np.clip(target / 8.0 + rng.normal(0, 0.08), 0.05, 1.0))
        parts = lung_parts(lung)
        lesion, opacity = covid_lesions(lung, layers, target, level, ppc, rng, parts=parts)
        density += np.minimum(opacity, ceiling)
        return lesion, parts
    if label == "pneumonia":
        lobes = str(_field(case, "synth_lobe")).split("+")
        side_name, lobe = lobes[0].split("_")
        lesion, opacity = pneumonia_lesions(lung, layers, int(side_name == "left"), lobe,
                                            len(lobes) > 1, ppc, rng)
        density += np.minimum(opacity, ceiling)
        return lesion, None
    return np.zeros(lung.shape, bool), None


def _display(signal, style, px_per_cm: float, rng) -> np.ndarray:
    """The style's processing with this image's draws of its ranges."""
    return acq.display(
        signal, px_per_cm, black=rng.uniform(*style.black),
        white_percentile=rng.uniform(*style.white), compress=rng.uniform(*style.compress),
        compress_cm=style.compress_cm, unsharp=rng.uniform(*style.unsharp),
        unsharp_cm=style.unsharp_cm, contrast=rng.uniform(*style.contrast),
        gamma=rng.uniform(*style.gamma), equalize=rng.uniform(*style.equalize),
        output=(rng.uniform(*style.output_low), rng.uniform(*style.output_high)))


# ------------------------------------------------------------------------------------------
# writing a cohort
# ------------------------------------------------------------------------------------------

def to_bit_depth(image: np.ndarray, bits: int) -> np.ndarray:
    """float [0, 1] image -> uint8 (bits 8) or uint16 (bits 16), rounded."""
    if bits == 8:
        return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    if bits == 16:
        return np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16)
    raise ValueError(f"bit depth must be 8 or 16, got {bits!r}")


def _write_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def dicom_plan(n_images: int, dicom_share: float, seed: int) -> dict[int, dict]:
    """Which images of a cohort are written as DICOM, and how.

    Exactly ``round(dicom_share * n_images)`` images, drawn from their own random stream
    (``SeedSequence(seed, spawn_key=(3,))``, so the cases and their pixels do not change).
    The chosen images cycle, in random order, through the four encodings MONOCHROME2 /
    MONOCHROME1 x WindowCenter-WindowWidth / VOI LUT sequence (no window tags), so that any
    four DICOM images hold all of them.

    Returns
    -------
    dict image index -> ``{"photometric", "voi" ("window" | "lut"), "gain" (stored units per
    8-bit grey level: 4, 8 or 16), "offset" (fraction of the free stored range below the
    image, in [0, 1))}``.
    """
    dicom_share = _fraction("dicom_share", dicom_share)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
    chosen = rng.permutation(n_images)[:int(round(dicom_share * n_images))]
    kinds = [("MONOCHROME2", "window"), ("MONOCHROME1", "lut"), ("MONOCHROME1", "window"),
             ("MONOCHROME2", "lut")]
    return {int(i): dict(photometric=kinds[k % 4][0], voi=kinds[k % 4][1],
                         gain=int(rng.choice([4, 8, 16])), offset=float(rng.random()))
            for k, i in enumerate(chosen)}


def dicom_encoding(levels: np.ndarray, bits: int, photometric: str = "MONOCHROME2",
                   voi: str = "window", gain: int = 8, offset: float = 0.0) -> dict:
    """Stored DICOM values and VOI tags that :func:`cxrlib.data.dicom.read_dicom` decodes back to
    ``levels / (2**bits - 1)``.

    8-bit images are stored in 12 bits as ``start + level * gain`` (``start`` puts the image
    ``offset`` of the way up the free range); a window (``WindowCenter = start + span / 2 +
    0.5``, ``WindowWidth = span + 1``, ``span = 255 * gain``) or a linear VOI LUT maps that
    range back onto the full output, so they decode exactly. 16-bit images are stored as they
    are under a full-range window (exact), or rounded to 12 bits under a VOI LUT (error at most
    0.5 / 4095). MONOCHROME1 stores ``max - level``; the reader inverts it back.

    Parameters
    ----------
    levels : (H, W) uint8 or uint16 display values (MONOCHROME2), as the PNG would hold them.
    bits : 8 or 16, the bit depth of ``levels``.
    photometric : "MONOCHROME2" or "MONOCHROME1".
    voi : "window" (WindowCenter/WindowWidth) or "lut" (VOILUTSequence, no window tags).
    gain, offset : see :func:`dicom_plan` (8-bit images only).

    Returns
    -------
    dict with ``pixels`` (uint16 (H, W) stored values), ``bits_stored``, ``window``
    ((center, width) or None) and ``tags`` (RescaleSlope/Intercept, VOILUTSequence).
    """
    top = 2**bits - 1
    level = np.asarray(levels, dtype=np.int64)
    if photometric == "MONOCHROME1":
        level = top - level
    elif photometric != "MONOCHROME2":
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if bits == 8:
        span, bits_stored = 255 * int(gain), 12
        start = int(offset * (2**bits_stored - 1 - span))
        stored = start + level * int(gain)
    elif bits == 16 and voi == "window":
        span, bits_stored, start, stored = top, 16, 0, level
    elif bits == 16:
        span, bits_stored, start = 4095, 12, 0
        stored = np.round(level * (4095 / top)).astype(np.int64)
    else:
        raise ValueError(f"bit depth must be 8 or 16, got {bits!r}")
    tags = {"RescaleSlope": 1, "RescaleIntercept": 0}
    window = None
    if voi == "window":
        window = (start + span / 2 + 0.5, span + 1.0)
    elif voi == "lut":
        item = Dataset()
        item.LUTDescriptor = [span + 1, start, 16]
        item.LUTData = np.round(np.arange(span + 1) * (65535 / span)).astype(np.uint16).tolist()
        item["LUTData"].VR = "US"
        item.LUTExplanation = "linear"
        tags = {"VOILUTSequence": Sequence([item])}
    else:
        raise ValueError(f"voi must be 'window' or 'lut', got {voi!r}")
    return dict(pixels=stored.astype(np.uint16), bits_stored=bits_stored, window=window, tags=tags)


def fake_identifiers(case, seed: int) -> dict:
    """Obviously fake identifying DICOM tags of a synthetic image: PatientName, PatientID,
    PatientBirthDate (the case's age before its study date), AccessionNumber and
    InstitutionName. They exist only so that every run checks that identifying tags never
    leave the DICOM files (:mod:`cxrlib.data.dicom` never reads them)."""
    p, i = int(_field(case, "synth_patient_index")), int(_field(case, "synth_image_index"))
    year = int(str(_field(case, "study_date"))[:4]) - int(_field(case, "age"))
    return {"PatientName": f"FAKE^SYNTHETIC{p:05d}", "PatientID": f"FAKE-MRN-{seed}-{p:05d}",
            "PatientBirthDate": f"{year:04d}{p % 12 + 1:02d}{p % 28 + 1:02d}",
            "AccessionNumber": f"FAKEACC{seed}-{i:06d}", "InstitutionName": FAKE_INSTITUTION}


def _write_case_dicom(levels: np.ndarray, case, encoding: dict, path: Path, seed: int) -> None:
    """Write one rendered image as a CR/DX DICOM (per the case's sensor and projection)."""
    enc = dicom_encoding(levels, int(case["synth_bit_depth"]), **encoding)
    tags = {"Modality": case["sensor"], "ViewPosition": case["projection"],
            "BodyPartExamined": "CHEST", "PatientSex": case["sex"],
            "PatientAge": f"{int(case['age']):03d}Y",
            "StudyDate": str(case["study_date"]).replace("-", ""),
            **fake_identifiers(case, seed), **enc["tags"]}
    write_dicom(enc["pixels"], path, tags, photometric=encoding["photometric"],
                window=enc["window"], bits_stored=enc["bits_stored"])


def _render_and_write(cases: list[dict], out_dir: str, size: int, seed: int,
                      dicom: dict | None = None) -> list[dict]:
    """Render and write ``cases``; those whose image id is in ``dicom`` (id -> encoding of
    :func:`dicom_plan`) go to ``images/<id>.dcm`` instead of ``.png``."""
    out = Path(out_dir)
    dicom = dicom or {}
    results = []
    for case in cases:
        r = render_case(case, size, seed)
        iid = case["image_id"]
        levels = to_bit_depth(r["image"], int(case["synth_bit_depth"]))
        if iid in dicom:
            _write_case_dicom(levels, case, dicom[iid], out / "images" / f"{iid}.dcm", seed)
        else:
            _write_png(levels, out / "images" / f"{iid}.png")
        _write_png(r["lung_mask"].astype(np.uint8) * 255, out / "masks" / "lung" / f"{iid}.png")
        _write_png(r["lesion_mask"].astype(np.uint8) * 255, out / "masks" / "lesion" / f"{iid}.png")
        h, w = r["image"].shape
        results.append(dict(
            image_id=iid, synth_rale=r["rale"].total, synth_rale_right=r["rale"].right,
            synth_rale_left=r["rale"].left, synth_lesion_fraction=round(r["lesion_fraction"], 5),
            synth_lung_fraction=round(r["lung_fraction"], 5), synth_height=h, synth_width=w,
            synth_px_per_cm=round(r["px_per_cm"], 4)))
    return results


def generate_cohort(out_dir, preset: str = "arias", n_images: int = 120, size: int = 128,
                    seed: int = 0, shortcut: float = 1.0, n_jobs: int = 1,
                    progress: bool = True, dicom_share: float = 0.0) -> pd.DataFrame:
    """Generate a synthetic cohort into ``out_dir``.

    Writes ``images/<image_id>.png`` (8- or 16-bit grey, per the case's ``synth_bit_depth``),
    ``masks/lung/<image_id>.png`` and ``masks/lesion/<image_id>.png`` (0/255 uint8, same size
    as the image) and ``manifest.csv`` (+ ``manifest.meta.json`` with the generator's
    parameters under ``"generator"``). Paths in the manifest are relative to ``out_dir``.
    A ``dicom_share`` of the images is written as ``images/<image_id>.dcm`` instead
    (:func:`dicom_plan`, :func:`dicom_encoding`): CR or DX per the sensor, ViewPosition per the
    projection, MONOCHROME1 or 2, a window or a VOI LUT, and fake identifying tags
    (:func:`fake_identifiers`) that never reach the manifest. :func:`cxrlib.data.images.read_image`
    decodes them through :mod:`cxrlib.data.dicom` to the image the PNG would hold (exactly for
    8-bit images, within 0.5 / 4095 for 16-bit ones).

    Parameters
    ----------
    out_dir : folder to write into (created; existing files of the same names are replaced).
    preset, n_images, seed, shortcut : see :func:`sample_cases`.
    size : long side of the images in pixels (>= 32).
    n_jobs : worker processes (1: in this process; -1: all cores). The bytes do not depend on it.
    progress : show a progress bar.
    dicom_share : fraction of the images, in [0, 1], written as DICOM (0: none).

    Returns
    -------
    The validated manifest DataFrame, as :func:`cxrlib.data.manifest.load_manifest` would read it
    (``attrs`` ``data_root`` and ``meta`` set).
    """
    preset_obj, n_images, seed, shortcut = _check_args(preset, n_images, seed, shortcut)
    _check_size(size)
    if (isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0
            or n_jobs < -1):
        raise ValueError(f"n_jobs must be a positive integer or -1, got {n_jobs!r}")
    n_jobs = (os.cpu_count() or 1) if n_jobs == -1 else int(n_jobs)
    plan = dicom_plan(n_images, dicom_share, seed)
    out = Path(out_dir)
    for sub in ("images", "masks/lung", "masks/lesion"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    cases = sample_cases(preset_obj.name, n_images, seed, shortcut)
    dicom = {cases["image_id"].iat[i]: enc for i, enc in plan.items()}
    records = [
        {k: (None if v is pd.NA else v) for k, v in row.items()}
        for row in cases.to_dict(orient="records")
    ]
    chunk = 16
    chunks = [records[i:i + chunk] for i in range(0, len(records), chunk)]
    bar = tqdm(total=len(records), desc=f"synthetic {preset_obj.name}", disable=not progress,
               unit="img")
    results = []
    if n_jobs == 1:
        for part in chunks:
            results += _render_and_write(part, str(out), int(size), seed, dicom)
            bar.update(len(part))
    else:
        with ProcessPoolExecutor(max_workers=n_jobs) as pool:
            futures = [pool.submit(_render_and_write, part, str(out), int(size), seed, dicom)
                       for part in chunks]
            for fut, part in zip(futures, chunks):
                results += fut.result()
                bar.update(len(part))
    bar.close()
    computed = pd.DataFrame(results)
    df = cases.merge(computed, on="image_id", how="left", validate="one_to_one")
    suffix = np.where(df["image_id"].isin(list(dicom)), ".dcm", ".png")
    df.insert(1, "path", "images/" + df["image_id"] + suffix)
    df["lung_mask_path"] = "masks/lung/" + df["image_id"] + ".png"
    df["lesion_mask_path"] = "masks/lesion/" + df["image_id"] + ".png"
    meta = {"generator": generator_parameters(preset_obj.name, n_images, size, seed, shortcut,
                                              float(dicom_share))}
    csv = write_manifest(df, out / "manifest.csv", meta=meta)  # validates, files included
    clean = validate_manifest(df, check_files=False, origin=str(csv))
    clean.attrs.update(data_root=str(out.resolve()), meta=read_sidecar(csv))
    return clean


def generator_parameters(preset: str, n_images: int, size: int, seed: int, shortcut: float,
                         dicom_share: float = 0.0) -> dict:
    """Everything that determines a cohort's bytes, as stored in the manifest's sidecar."""
    return {"name": "cxrlib.data.synthetic", "preset": preset, "n_images": int(n_images),
            "size": int(size), "seed": int(seed), "shortcut": float(shortcut),
            "dicom_share": float(dicom_share),
            "min_fraction": MIN_FRACTION, "generator_version": GENERATOR_VERSION,
            "cxrlib_version": __version__}


def default_cohort(preset: str, profile, seed: int = 0, shortcut: float = 1.0,
                   progress: bool = True, dicom_share: float = DEFAULT_DICOM_SHARE) -> Path:
    """Manifest path of the cached cohort of a profile, generating it if missing or stale.

    The cohort has ``profile.n_arias``, ``profile.n_covidgr`` or (``lungseg``)
    ``profile.seg_synthetic_images`` images of ``profile.synth_size``
    px, ``dicom_share`` of them written as DICOM (see :func:`generate_cohort`), and lives in
    ``data_dir()/synthetic/<preset>-<profile>-s<seed>-sc<shortcut>``. It is
    written to a temporary sibling folder and renamed when complete, so an interrupted
    generation never looks complete; a folder whose recorded parameters differ (another
    generator version, a changed profile) is regenerated.
    """
    preset_obj, _, seed, shortcut = _check_args(preset, 1, seed, shortcut)
    prof = get_profile(profile)
    n = {"covidgr": prof.n_covidgr, "lungseg": prof.seg_synthetic_images}.get(preset_obj.name,
                                                                          prof.n_arias)
    folder = data_dir() / "synthetic" / f"{preset_obj.name}-{prof.name}-s{seed}-sc{shortcut}"
    csv = folder / "manifest.csv"
    wanted = generator_parameters(preset_obj.name, n, prof.synth_size, seed, shortcut,
                                  float(dicom_share))
    if csv.is_file() and read_sidecar(csv).get("generator") == json.loads(json.dumps(wanted)):
        return csv
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        generate_cohort(tmp, preset_obj.name, n, prof.synth_size, seed, shortcut, progress=progress,
                        dicom_share=dicom_share)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError:
        # another process finished the same cohort first: use theirs
        if not (csv.is_file()
                and read_sidecar(csv).get("generator") == json.loads(json.dumps(wanted))):
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return csv
