"""DICOM radiographs in, 16-bit MONOCHROME2 PNGs out, and only allow-listed tags read.

The display pipeline is the one the papers describe (seed 001, section "Image pre-processing"):

1. stored values -> modality LUT / RescaleSlope + RescaleIntercept
   (:func:`pydicom.pixels.apply_modality_lut`);
2. the VOI LUT, else WindowCenter/WindowWidth, when present
   (:func:`pydicom.pixels.apply_voi`, :func:`pydicom.pixels.apply_windowing`); the VOI output
   range is then mapped linearly onto 0..65535. Without VOI tags the image's own min..max is
   stretched onto 0..65535;
3. MONOCHROME1 is inverted so that every image is MONOCHROME2 (bone bright);
4. the result is kept as uint16 and written as an uncompressed-precision 16-bit PNG in a cache
   keyed by the file's content (:func:`dicom_to_cached_png`).

Header reading (:func:`read_dicom_header`) asks pydicom for an allow-list of tags only
(``HEADER_KEYWORDS``); patient names, birth dates, accession numbers or institutions are never
read. ``PatientID`` is read only to be replaced at once by its keyed pseudonym
(:mod:`cxrlib.data.pseudonym`), and series/study descriptions only to infer the projection; neither
raw value is kept.

Compressed transfer syntaxes decode through pydicom's plugins (pillow, ``pylibjpeg`` with
``pylibjpeg-libjpeg`` and ``pylibjpeg-openjpeg``); when a decoder is missing the error names the
transfer syntax and the packages to install.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from cxrlib.data.pixel_checks import DEGENERATE, DegenerateImageError, check_pixels
from cxrlib.data.pseudonym import pseudonymize

#: Modalities imported as chest radiographs.
RADIOGRAPH_MODALITIES = ("CR", "DX")
#: The only tags ever read from a DICOM file (besides the pixel data).
HEADER_KEYWORDS = (
    "Modality", "SOPClassUID", "ViewPosition", "PatientSex", "PatientAge", "StudyDate",
    "PhotometricInterpretation", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel",
    "BitsStored", "PixelRepresentation", "SeriesDescription", "StudyDescription", "PatientID",
)
#: Bumped whenever the pixel pipeline changes, so that cached PNGs are rebuilt.
PIPELINE_VERSION = "1"
#: Packages that bring a decoder, per family of transfer syntaxes (named in errors).
_DECODER_PACKAGES = {
    "JPEG-LS": "pylibjpeg pylibjpeg-libjpeg",
    "JPEG 2000": "pylibjpeg pylibjpeg-openjpeg",
    "High-Throughput JPEG 2000": "pylibjpeg pylibjpeg-openjpeg",
    "JPEG": "pylibjpeg pylibjpeg-libjpeg",
    "RLE": "pylibjpeg pylibjpeg-rle",
}
_SOP_CLASS_BY_MODALITY = {
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_VIEW_POSITIONS = {
    "AP": "AP", "PA": "PA", "LL": "LAT", "RL": "LAT", "LAT": "LAT", "LATERAL": "LAT", "L": "LAT",
}
_DESCRIPTION_TOKENS = {
    "PA": "PA", "AP": "AP", "PORTATIL": "AP", "PORTABLE": "AP", "SUPINE": "AP", "SUPINO": "AP",
    "LAT": "LAT", "LATERAL": "LAT", "LL": "LAT", "RL": "LAT",
}


class DicomError(ValueError):
    """A DICOM file cannot be read or decoded; the message names the file and the reason."""


class DegenerateDicomError(DicomError, DegenerateImageError):
    """A DICOM file decodes to no image (RescaleSlope 0 or NaN, NaN/inf values, a constant or
    near-constant image: :mod:`cxrlib.data.pixel_checks`); both a :class:`DicomError` and a
    :class:`cxrlib.data.pixel_checks.DegenerateImageError`."""


@dataclass(frozen=True)
class DicomHeader:
    """The allow-listed facts of one DICOM file (no identifying value).

    Attributes
    ----------
    modality : ``Modality`` (e.g. ``"DX"``) or ``None``.
    sop_class : name of the SOP class (e.g. ``"Secondary Capture Image Storage"``) or ``None``.
    view_position : raw ``ViewPosition`` code or ``None``.
    projection : ``"AP"``, ``"PA"``, ``"LAT"`` or ``None`` (from ViewPosition, else the
        series/study description when it names exactly one projection).
    sex : ``"M"``, ``"F"`` or ``None``.
    age : age in years (float) or ``None``.
    study_date : ``YYYY-MM-DD`` or ``None``.
    photometric : ``PhotometricInterpretation`` or ``None``.
    rows, columns, frames, samples_per_pixel, bits_stored : image geometry (``None`` if absent).
    transfer_syntax : name of the transfer syntax.
    has_pixel_data : whether the file holds pixel data.
    patient_pseudonym : keyed pseudonym of ``PatientID`` when a key was given, else ``None``.
    """

    modality: str | None
    sop_class: str | None
    view_position: str | None
    projection: str | None
    sex: str | None
    age: float | None
    study_date: str | None
    photometric: str | None
    rows: int | None
    columns: int | None
    frames: int
    samples_per_pixel: int
    bits_stored: int | None
    transfer_syntax: str
    has_pixel_data: bool
    patient_pseudonym: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- value parsers
def parse_dicom_age(value) -> float | None:
    """DICOM age string (``"065Y"``, ``"006M"``, ``"003W"``, ``"010D"``) -> years, else ``None``.

    A bare number is read as years. Ages outside 0-120 years are ``None``.
    """
    if value is None:
        return None
    text = str(value).strip().upper()
    match = re.fullmatch(r"(\d{1,3})\s*([YMWD]?)", text)
    if not match:
        return None
    number, unit = int(match.group(1)), match.group(2) or "Y"
    years = {"Y": number, "M": number / 12, "W": number * 7 / 365.25, "D": number / 365.25}[unit]
    return round(float(years), 2) if 0 <= years <= 120 else None


def parse_dicom_date(value) -> str | None:
    """DICOM date ``YYYYMMDD`` (or ISO ``YYYY-MM-DD``) -> ``YYYY-MM-DD``; else ``None``."""
    if value is None:
        return None
    text = str(value).strip()
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, fmt).strftime("%Y-%m-%d")
        except ValueError:
            continue
    return None


def parse_sex(value) -> str | None:
    """``M``/``F`` from DICOM codes or words (``Male``, ``FEMALE``...); else ``None``."""
    if value is None:
        return None
    text = str(value).strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(text)


def projection_from_view_position(value) -> str | None:
    """``ViewPosition`` code -> ``AP``/``PA``/``LAT``; unknown codes (``LLD``) -> ``None``."""
    if value is None:
        return None
    return _VIEW_POSITIONS.get(str(value).strip().upper())


def projection_from_description(text) -> str | None:
    """Projection named in a free-text description (``"RX TORAX AP"`` -> ``AP``,
    ``"PORTATIL"`` -> ``AP``, ``"TORAX PA"`` -> ``PA``); ``None`` if none or several are named
    (``"TORAX PA Y LAT"`` describes a study of two views)."""
    if text is None:
        return None
    tokens = re.split(r"[^A-Z0-9]+", str(text).upper())
    found = {_DESCRIPTION_TOKENS[t] for t in tokens if t in _DESCRIPTION_TOKENS}
    return found.pop() if len(found) == 1 else None


# --------------------------------------------------------------------------- header
def _get(ds: Dataset, keyword: str):
    value = ds.get(keyword, None)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


def header_from_dataset(ds: Dataset, pseudonym_key: bytes | None = None,
                        namespace: str = "dicom") -> DicomHeader:
    """The allow-listed :class:`DicomHeader` of a dataset already read by pydicom.

    With ``pseudonym_key``, ``PatientID`` is replaced by its pseudonym in ``namespace`` (see
    :func:`cxrlib.data.pseudonym.pseudonymize`); the raw id is never returned.
    """
    raw_patient = _get(ds, "PatientID")
    pseudonym = (pseudonymize(str(raw_patient), pseudonym_key, namespace)
                 if pseudonym_key is not None and raw_patient is not None else None)
    view = _get(ds, "ViewPosition")
    projection = projection_from_view_position(view)
    if projection is None and view is None:
        projection = projection_from_description(_get(ds, "SeriesDescription"))
        if projection is None:
            projection = projection_from_description(_get(ds, "StudyDescription"))
    sop = _get(ds, "SOPClassUID")
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID", None) if meta is not None else None
    frames = _get(ds, "NumberOfFrames")
    return DicomHeader(
        modality=str(_get(ds, "Modality")).strip().upper() if _get(ds, "Modality") else None,
        sop_class=UID(str(sop)).name if sop else None,
        view_position=str(view).strip().upper() if view is not None else None,
        projection=projection,
        sex=parse_sex(_get(ds, "PatientSex")),
        age=parse_dicom_age(_get(ds, "PatientAge")),
        study_date=parse_dicom_date(_get(ds, "StudyDate")),
        photometric=str(_get(ds, "PhotometricInterpretation")).strip()
        if _get(ds, "PhotometricInterpretation") else None,
        rows=int(ds.Rows) if _get(ds, "Rows") is not None else None,
        columns=int(ds.Columns) if _get(ds, "Columns") is not None else None,
        frames=int(frames) if frames is not None else 1,
        samples_per_pixel=int(_get(ds, "SamplesPerPixel") or 1),
        bits_stored=int(ds.BitsStored) if _get(ds, "BitsStored") is not None else None,
        transfer_syntax=UID(str(ts)).name if ts else "unknown (no file meta)",
        has_pixel_data="PixelData" in ds,
        patient_pseudonym=pseudonym,
    )


def _dcmread(path: Path, **kwargs) -> Dataset:
    """pydicom's read; a bare data set (no preamble, no file meta) is read with ``force`` and
    given the transfer syntax it was read in, so that its pixel data decodes."""
    if not path.is_file():
        raise DicomError(f"DICOM file not found: {path}")
    bare = not _has_preamble(path) and _is_bare_dataset(path)
    try:
        ds = pydicom.dcmread(path, force=bare, **kwargs)
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, OSError, ValueError...
        raise DicomError(f"cannot read DICOM {path}: {type(exc).__name__}: {exc}") from exc
    if bare and "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else
                                          ExplicitVRBigEndian)
    return ds


def read_dicom_header(path: str | Path, pseudonym_key: bytes | None = None,
                      namespace: str = "dicom") -> DicomHeader:
    """Read only the allow-listed tags of a DICOM file (the pixel data is not loaded).

    ``pseudonym_key`` and ``namespace``: see :func:`header_from_dataset`.

    Raises
    ------
    DicomError if the file is missing or is not DICOM.
    """
    ds = _dcmread(Path(path), defer_size=1024, specific_tags=[*HEADER_KEYWORDS, "PixelData"])
    return header_from_dataset(ds, pseudonym_key, namespace)


def exclusion_reason(header: DicomHeader) -> str | None:
    """Why a DICOM file is not imported as a chest radiograph, or ``None`` if it can be.

    Flags: no pixel data, a non-radiograph modality (CT, secondary capture, photographs...),
    several frames, colour samples. A lateral view is *not* an exclusion here: it is imported
    with ``projection = LAT`` and removed by the frontal-only filter of :mod:`cxrlib.data.qc`.
    """
    if not header.has_pixel_data:
        return "no pixel data (7FE0,0010) in the DICOM file"
    if header.sop_class and "Secondary Capture" in header.sop_class:
        return f"secondary capture ({header.sop_class}), not a radiograph"
    if header.modality is not None and header.modality not in RADIOGRAPH_MODALITIES:
        return f"modality {header.modality!r} is not a radiograph (expected CR or DX)"
    if header.frames > 1:
        return f"multi-frame DICOM ({header.frames} frames), not a single radiograph"
    if header.samples_per_pixel != 1 or (
        header.photometric and not header.photometric.startswith("MONOCHROME")
    ):
        return (f"colour DICOM ({header.photometric}, {header.samples_per_pixel} samples per "
                "pixel), not a grayscale radiograph")
    return None


# --------------------------------------------------------------------------- pixels
def _decoder_check(ds: Dataset, path: Path) -> None:
    """Raise a DicomError naming the transfer syntax and the package when no decoder works."""
    ts = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    if ts is None:
        return  # pydicom falls back on the dataset's own encoding
    ts = UID(str(ts))
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise DicomError(
            f"{path}: transfer syntax {ts.name!r} ({ts}) has no pixel decoder in pydicom; "
            "convert the file to an uncompressed syntax (e.g. dcmtk `dcmdjpeg`/`dcmconv`)"
        ) from None
    if not decoder.is_available:
        family = next((k for k in _DECODER_PACKAGES if ts.name.startswith(k)), None)
        packages = _DECODER_PACKAGES.get(family, "python-gdcm")
        raise DicomError(
            f"{path}: no decoder installed for transfer syntax {ts.name!r} ({ts}); "
            f"install one with `pip install {packages}` "
            f"(pydicom reports: {'; '.join(decoder.missing_dependencies) or 'no plugin'})"
        )


def _voi_kind(ds: Dataset) -> str | None:
    """Which VOI transform pydicom's apply_voi_lut would apply: ``"lut"``, ``"window"``, None."""
    seq = ds.get("VOILUTSequence", None)
    if seq and seq[0].get("LUTDescriptor", None) is not None and seq[0].get("LUTData", None):
        return "lut"
    if ds.get("WindowCenter", None) is not None and ds.get("WindowWidth", None) is not None:
        return "window"
    return None


def _window_output_range(ds: Dataset) -> tuple[float, float]:
    """Output range of pydicom's apply_windowing (PS3.3 C.11.2.1.2): the stored range, rescaled."""
    bits = int(ds.get("BitsStored", 16) or 16)
    if ds.get("ModalityLUTSequence", None):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0) or 0) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope", None), ds.get("RescaleIntercept", None)
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


def _stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly onto 0..65535 (uint16), clipping outside values."""
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint16)
    scaled = (np.asarray(values, dtype=np.float64) - lo) * (65535.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 65535).astype(np.uint16)


def to_display_uint16(stored: np.ndarray, ds: Dataset, apply_voi_tags: bool = True) -> np.ndarray:
    """Stored pixel values -> MONOCHROME2 display values, uint16 (H, W).

    Parameters
    ----------
    stored : (H, W) array of stored values (any integer dtype, as ``ds.pixel_array`` returns).
    ds : dataset holding the grayscale pixel module (PhotometricInterpretation, BitsStored,
        PixelRepresentation) and, optionally, the modality LUT (RescaleSlope/Intercept or a
        ModalityLUTSequence) and the VOI module (VOILUTSequence or WindowCenter/WindowWidth).
    apply_voi_tags : apply the VOI LUT / window when present (the papers' choice). If false, or
        without VOI tags, the modality values' own min..max is stretched onto 0..65535.

    Returns
    -------
    uint16 array (H, W), 0 = black, 65535 = white, bone bright (MONOCHROME1 inverted).
    """
    if stored.ndim != 2:
        raise DicomError(f"expected one grayscale frame (H, W), got an array of shape "
                         f"{stored.shape}")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"photometric interpretation {photometric!r} is not grayscale")
    values = apply_modality_lut(stored, ds)
    kind = _voi_kind(ds) if apply_voi_tags else None
    out = None
    if kind == "window":
        try:
            out = _stretch(apply_windowing(values, ds), *_window_output_range(ds))
        except (ValueError, TypeError, AttributeError) as exc:  # e.g. WindowWidth < 1
            warnings.warn(f"ignoring an invalid VOI window ({exc}); stretching min..max instead",
                          stacklevel=2)
    elif kind == "lut":
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        lut_input = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
        out = _stretch(apply_voi(lut_input, ds), 0.0, float(2**depth - 1))
    if out is None:
        out = _stretch(values, float(np.min(values)), float(np.max(values)))
    if photometric == "MONOCHROME1":
        out = np.uint16(65535) - out
    return out


def _check(values: np.ndarray, step: str, full_scale: float | None) -> None:
    """:func:`cxrlib.data.pixel_checks.check_pixels` raising :class:`DegenerateDicomError`."""
    try:
        check_pixels(values, step, full_scale)
    except DegenerateImageError as exc:
        raise DegenerateDicomError(str(exc).split(": ", 1)[1] + f" ({step})") from None


def _check_stored(stored: np.ndarray, ds: Dataset) -> None:
    """Stored values that decode to no image: a RescaleSlope of 0, NaN or inf (every pixel
    would map to the intercept), a RescaleIntercept of NaN or inf, or stored values that are
    constant or near-constant (:mod:`cxrlib.data.pixel_checks`, full scale ``2**BitsStored - 1``)."""
    for keyword, name in (("RescaleSlope", "rescale slope"),
                          ("RescaleIntercept", "rescale intercept")):
        raw = ds.get(keyword, None)
        if raw is None or not str(raw).strip():
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise DegenerateDicomError(f"{DEGENERATE}: {name} {raw!r} is not a number") from None
        if not np.isfinite(value) or (keyword == "RescaleSlope" and value == 0):
            raise DegenerateDicomError(f"{DEGENERATE}: {name} {value:g}")
    bits = int(ds.get("BitsStored", 16) or 16)
    _check(stored, "stored values", float(2**bits - 1))


def read_dicom(path: str | Path, apply_voi_tags: bool = True) -> tuple[np.ndarray, DicomHeader]:
    """Decode a DICOM radiograph to MONOCHROME2 uint16 (H, W) with its allow-listed header.

    Raises
    ------
    DicomError naming the file: not DICOM, truncated, no pixel data, several frames, colour,
    or a compressed transfer syntax without an installed decoder (the message names the
    transfer syntax and the package to install). :class:`DegenerateDicomError` (a DicomError)
    when the pixels hold no image: ``degenerate pixel data: rescale slope 0``, ``...: constant
    image``, NaN/inf values, a near-constant image (:mod:`cxrlib.data.pixel_checks`).
    """
    path = Path(path)
    ds = _dcmread(path)
    header = header_from_dataset(ds)
    if not header.has_pixel_data:
        raise DicomError(f"{path}: no pixel data (7FE0,0010)")
    if header.frames > 1 or header.samples_per_pixel != 1:
        raise DicomError(f"{path}: expected a single grayscale frame, got {header.frames} "
                         f"frame(s) of {header.samples_per_pixel} sample(s) per pixel "
                         f"({header.photometric})")
    _decoder_check(ds, path)
    try:
        stored = ds.pixel_array
    except Exception as exc:  # truncated or inconsistent pixel data
        raise DicomError(f"{path}: cannot decode pixel data "
                         f"({header.transfer_syntax}): {exc}") from exc
    try:
        _check_stored(stored, ds)
        display = to_display_uint16(stored, ds, apply_voi_tags)
        _check(display, "after the display pipeline", 65535.0)
    except DicomError as exc:  # keep the type: a DegenerateDicomError stays one
        raise type(exc)(f"{path}: {exc}") from None
    return display, header


def dataset_from_tags(tags: dict) -> Dataset:
    """A pydicom Dataset holding ``tags`` (keyword -> value), e.g. read from a JSON sidecar.

    Used to run :func:`to_display_uint16` on pixel data that arrives outside DICOM (the BIMCV
    PNGs carry their window and photometric tags in a sidecar). Defaults: MONOCHROME2,
    16 bits stored, unsigned.
    """
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored = 16
    ds.PixelRepresentation = 0
    for keyword, value in tags.items():
        if value is None:
            continue
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"unknown DICOM keyword {keyword!r}")
        setattr(ds, keyword, _coerce(value, dictionary_VR(keyword)))
    return ds


def _coerce(value, vr: str):
    """Text from a sidecar (``"12"``, ``"2047.5"``) -> the number a numeric VR holds."""
    if isinstance(value, (list, tuple)):
        return [_coerce(v, vr) for v in value]
    try:
        if vr in ("US", "SS", "UL", "SL", "IS"):
            return int(float(value))
        if vr in ("DS", "FD", "FL"):
            return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number (VR {vr})") from None
    return value


# --------------------------------------------------------------------------- cache
def write_png16(image: np.ndarray, path: str | Path, compress_level: int = 1) -> Path:
    """Write a uint16 (H, W) image as a 16-bit grayscale PNG, atomically (temp file + rename).

    ``compress_level`` is zlib's 0-9 (1: fast, files ~10% larger than 6). PNG is lossless at
    any level.
    """
    image = np.asarray(image)
    if image.dtype != np.uint16 or image.ndim != 2:
        raise ValueError(f"write_png16 expects a uint16 (H, W) array, got {image.dtype} "
                         f"{image.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.png")
    os.close(fd)
    try:
        Image.fromarray(image).save(tmp, format="PNG", compress_level=compress_level)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_png_path(cache_dir: str | Path, content_key: str, kind: str = "dicom") -> Path:
    """``<cache_dir>/<kind>/<key[:2]>/<key>.png``: where a derived PNG keyed by content lives."""
    return Path(cache_dir) / kind / content_key[:2] / f"{content_key}.png"


def dicom_to_cached_png(
    path: str | Path, cache_dir: str | Path, apply_voi_tags: bool = True
) -> tuple[Path, DicomHeader]:
    """Decode ``path`` (:func:`read_dicom`) into a 16-bit PNG in ``cache_dir``, once.

    The cache key is the SHA-256 of the file's bytes plus the pipeline version and options, so
    the same file is converted once however often it is imported, and an edited file gets a new
    entry. The PNG holds pixels only (no text chunks, no tags).

    Returns
    -------
    (PNG path, header). Raises :class:`DicomError` as :func:`read_dicom` does.
    """
    path = Path(path)
    if not path.is_file():
        raise DicomError(f"DICOM file not found: {path}")
    key = hashlib.sha256(
        f"{file_sha256(path)}|v{PIPELINE_VERSION}|voi={int(apply_voi_tags)}".encode()
    ).hexdigest()
    out = cached_png_path(cache_dir, key)
    if out.is_file():
        return out, read_dicom_header(path)
    image, header = read_dicom(path, apply_voi_tags)
    return write_png16(image, out), header


# --------------------------------------------------------------------------- writing
def write_dicom(
    pixels_uint16: np.ndarray,
    path: str | Path,
    tags: dict,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    *,
    bits_stored: int | None = None,
    transfer_syntax: str | None = None,
) -> Path:
    """Write a DICOM file (tests and the synthetic generator).

    Parameters
    ----------
    pixels_uint16 : (H, W) uint16 grayscale; (F, H, W) uint16 for a multi-frame file; (H, W, 3)
        uint8 with ``photometric="RGB"``.
    path : output file (parent folders are created).
    tags : DICOM keyword -> value (``{"Modality": "DX", "ViewPosition": "PA",
        "PatientSex": "F", "PatientAge": "054Y", "StudyDate": "20200401",
        "RescaleSlope": 1, "RescaleIntercept": 0, ...}``). Unknown keywords raise ValueError.
        Defaults: Modality DX, the SOP class of the modality, deterministic UIDs.
    photometric : ``MONOCHROME2`` (bright = dense), ``MONOCHROME1`` (inverted) or ``RGB``.
    window : ``(WindowCenter, WindowWidth)`` in modality units, or ``None`` for none.
    bits_stored : bits used of each 16-bit value (default 16; 8 for RGB).
    transfer_syntax : a transfer syntax UID to compress to (e.g. ``pydicom.uid.RLELossless``,
        ``JPEG2000Lossless``); default uncompressed explicit VR little endian.

    Returns
    -------
    The path written.
    """
    pixels = np.asarray(pixels_uint16)
    if photometric == "RGB":
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise ValueError(f"RGB pixels must be uint8 (H, W, 3), got {pixels.dtype} "
                             f"{pixels.shape}")
        bits = 8
    elif photometric in ("MONOCHROME1", "MONOCHROME2"):
        if pixels.dtype != np.uint16 or pixels.ndim not in (2, 3):
            raise ValueError(f"grayscale pixels must be uint16 (H, W) or (F, H, W), got "
                             f"{pixels.dtype} {pixels.shape}")
        bits = int(bits_stored or 16)
        if int(pixels.max(initial=0)) >= 2**bits:
            raise ValueError(f"pixel values up to {int(pixels.max())} do not fit in "
                             f"{bits} bits stored")
    else:
        raise ValueError(f"photometric must be MONOCHROME1, MONOCHROME2 or RGB, not "
                         f"{photometric!r}")
    for keyword in tags:
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"unknown DICOM keyword {keyword!r} in tags")
    path = Path(path)
    entropy = [hashlib.sha256(pixels.tobytes()).hexdigest(), path.name,
               repr(sorted((k, str(v)) for k, v in tags.items()))]

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    modality = str(tags.get("Modality", "DX"))
    ds.Modality = modality
    ds.SOPClassUID = _SOP_CLASS_BY_MODALITY.get(modality, _SECONDARY_CAPTURE)
    ds.StudyInstanceUID = generate_uid(entropy_srcs=entropy + ["study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=entropy + ["series"])
    ds.set_pixel_data(pixels, photometric, bits, generate_instance_uid=False)
    ds.SOPInstanceUID = generate_uid(entropy_srcs=entropy + ["instance"])
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    if transfer_syntax is not None:
        ds.compress(transfer_syntax, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _has_preamble(path: Path) -> bool:
    """``DICM`` at byte 128: a DICOM Part 10 file."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _is_bare_dataset(path: Path) -> bool:
    """A data set written without preamble and file meta (older files): it starts with an
    element of group 0002 or 0008 and pydicom, forced, finds SOPClassUID or Modality in it."""
    try:
        with open(path, "rb") as f:
            if f.read(2) not in (b"\x02\x00", b"\x08\x00"):
                return False
        ds = pydicom.dcmread(path, force=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # whatever pydicom makes of bytes that are not DICOM
        return False
    return "SOPClassUID" in ds or "Modality" in ds


def has_dicom_content(path: str | Path) -> bool:
    """True if the file's bytes are DICOM, whatever its name: ``DICM`` at byte 128 (a Part 10
    file), or a bare data set (no preamble, no file meta) that pydicom reads."""
    path = Path(path)
    return _has_preamble(path) or _is_bare_dataset(path)


def is_dicom_file(path: str | Path) -> bool:
    """True if ``path`` ends in .dcm/.dicom or holds DICOM (:func:`has_dicom_content`)."""
    path = Path(path)
    return path.suffix.lower() in (".dcm", ".dicom") or has_dicom_content(path)


def iter_dicom_files(root: str | Path, pattern: str = "**/*") -> Iterable[Path]:
    """DICOM files under ``root`` (by extension or content, :func:`is_dicom_file`), sorted."""
    for p in sorted(Path(root).glob(pattern)):
        if p.is_file() and is_dicom_file(p):
            yield p
