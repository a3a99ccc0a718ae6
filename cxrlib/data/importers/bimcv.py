"""BIMCV COVID-19+ (Valencia): BIDS-like folders of PNGs, each with a JSON sidecar of DICOM tags.

Layout read::

    ROOT/participants.tsv                      (optional: participant, ..., age, gender)
    ROOT/**/sub-S0001/ses-E0001/mod-rx/sub-S0001_ses-E0001[_acq-N]_run-1_bp-chest_vp-pa_cr.png
                                              (+ the same stem .json)

Mapping
-------
- label: ``covid19`` for every image (the release holds only PCR/serology-positive patients);
- patient: the ``sub-`` id; study: the ``ses-`` id (not exported: the manifest has no column);
- projection: the ``vp-`` token (``ap``/``pa``, ``ll`` = LAT), else sidecar ``00185101``
  ViewPosition, else the series description ``0008103E`` when it names one projection
  (``PORTATIL`` = AP, ``TORAX PA`` = PA), else empty;
- sensor: the ``_cr``/``_dx`` token, else sidecar ``00080060`` Modality;
- sex, age, study date: sidecar ``00100040``, ``00101010``, ``00080020``, else participants.tsv
  (``gender``; ``age`` only when it holds a single value);
- pixels: when the sidecar says MONOCHROME1 or carries a window (``00281050``/``00281051``),
  the PNG goes through the DICOM display pipeline (rescale ``00281052``/``00281053``, window,
  inversion) into the cache; otherwise the PNG is used as it is;
- dropped: body parts other than chest (``bp-`` token), sidecars without their PNG, sidecars
  that are not JSON, ``sub-*`` PNG or JSON files whose name is not a BIMCV name;
- text files (``participants.tsv``, the sidecars) are decoded by
  :func:`cxrlib.data.importers.common.read_text_file`; the encodings go to the sidecar.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrlib.data.dicom import (
    PIPELINE_VERSION,
    cached_png_path,
    dataset_from_tags,
    parse_dicom_age,
    parse_dicom_date,
    parse_sex,
    projection_from_description,
    projection_from_view_position,
    to_display_uint16,
    write_png16,
)
from cxrlib.data.importers.common import (
    DEFAULT_CACHE_DIRNAME,
    ImportOptions,
    ImportResult,
    encoding_summary,
    finish_import,
    read_text_file,
    relpath,
)

SOURCE = "bimcv"
_NAME = re.compile(r"^(?P<sub>sub-[^_]+)_(?P<ses>ses-[^_]+)(?P<rest>(?:_[^_]+)*)$")
_VP = {"ap": "AP", "pa": "PA", "ll": "LAT", "lat": "LAT", "rl": "LAT"}
#: Sidecar tags (hex key -> DICOM keyword) used by the pixel pipeline.
_PIXEL_TAGS = {
    "00280004": "PhotometricInterpretation", "00281050": "WindowCenter",
    "00281051": "WindowWidth", "00281052": "RescaleIntercept", "00281053": "RescaleSlope",
    "00280101": "BitsStored", "00281056": "VOILUTFunction",
}


def sidecar_value(sidecar: dict, tag: str):
    """First value of ``tag`` (8 hex digits) in a BIMCV sidecar, in the DICOM JSON model
    (``{"00080060": {"vr": "CS", "Value": ["CR"]}}``) or flat (``{"00080060": "CR"}``)."""
    value = sidecar.get(tag, sidecar.get(tag.upper(), sidecar.get(tag.lower())))
    if isinstance(value, dict):
        value = value.get("Value")
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, dict):  # PN values: {"Alphabetic": ...}; never used here
        return None
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


def parse_name_tokens(stem: str) -> dict | None:
    """``sub-S1_ses-E1_run-1_bp-chest_vp-pa_cr`` -> ``{"sub": "sub-S1", "ses": "ses-E1",
    "run": "1", "bp": "chest", "vp": "pa", "sensor": "cr"}``; ``None`` if not a BIMCV name."""
    match = _NAME.match(stem)
    if not match:
        return None
    tokens = {"sub": match.group("sub"), "ses": match.group("ses")}
    for token in match.group("rest").strip("_").split("_"):
        if "-" in token:
            k, v = token.split("-", 1)
            tokens[k] = v
        elif token.lower() in ("cr", "dx"):
            tokens["sensor"] = token.lower()
    return tokens


def _participants(root: Path) -> pd.DataFrame:
    """participants.tsv as sex and age per ``sub-`` id; ``attrs["encoding"]`` holds the
    encoding read (no attrs without the file)."""
    hits = sorted(root.glob("**/participants.tsv"))
    if not hits:
        return pd.DataFrame(columns=["sex", "age"])
    text, encoding = read_text_file(hits[0])
    df = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)
    if "participant" not in df:
        raise ValueError(f"bimcv: {hits[0]} lacks the 'participant' column; it has {list(df)}")

    def one_age(text: str) -> float:
        try:
            values = ast.literal_eval(text) if text.strip().startswith("[") else [text]
        except (ValueError, SyntaxError):
            return np.nan
        ages = {parse_dicom_age(v) for v in values} - {None}
        return ages.pop() if len(ages) == 1 else np.nan

    out = pd.DataFrame(index=df["participant"].str.strip())
    out["sex"] = [parse_sex(v) for v in df.get("gender", pd.Series([""] * len(df)))]
    out["age"] = [one_age(v) for v in df.get("age", pd.Series([""] * len(df)))]
    out.attrs["encoding"] = encoding
    return out


def _read_sidecar(path: Path) -> tuple[dict, str | None, str | None]:
    """``(tags, encoding, None)``, ``({}, None, None)`` without a sidecar, or
    ``({}, encoding, reason)`` when it is not a JSON object."""
    if not path.is_file():
        return {}, None, None
    text, encoding = read_text_file(path)
    try:
        tags = json.loads(text)
    except json.JSONDecodeError as exc:
        return {}, encoding, f"sidecar {path.name} is not valid JSON: {exc}"
    if not isinstance(tags, dict):
        return {}, encoding, f"sidecar {path.name} is not a JSON object"
    return tags, encoding, None


def _needs_display_pipeline(sidecar: dict) -> bool:
    photometric = sidecar_value(sidecar, "00280004")
    has_window = (sidecar_value(sidecar, "00281050") is not None
                  and sidecar_value(sidecar, "00281051") is not None)
    return has_window or str(photometric or "").strip() == "MONOCHROME1"


def display_png(png: Path, sidecar: dict, cache_dir: Path) -> Path:
    """Run a BIMCV PNG through the DICOM display pipeline with its sidecar tags, once.

    Returns the cached 16-bit MONOCHROME2 PNG (keyed by the PNG's bytes and the tags used).
    """
    tags = {kw: sidecar_value(sidecar, tag) for tag, kw in _PIXEL_TAGS.items()}
    tags = {k: v for k, v in tags.items() if v is not None}
    key = hashlib.sha256(png.read_bytes() + json.dumps(tags, sort_keys=True, default=str).encode()
                         + f"|bimcv|v{PIPELINE_VERSION}".encode()).hexdigest()
    out = cached_png_path(cache_dir, key, kind="bimcv")
    if not out.is_file():
        stored = np.asarray(Image.open(png))
        if stored.ndim != 2:
            raise ValueError(f"bimcv: {png} is not a grayscale PNG (shape {stored.shape})")
        write_png16(to_display_uint16(stored, dataset_from_tags(tags)), out)
    return out


def import_bimcv(root: str | Path, options: ImportOptions | None = None) -> ImportResult:
    """Import BIMCV COVID-19+ from ``root`` (see the module docstring for the mapping)."""
    options = options or ImportOptions()
    root = Path(root).resolve()
    cache_dir = Path(options.cache_dir) if options.cache_dir else root / DEFAULT_CACHE_DIRNAME
    participants = _participants(root)
    stems: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != DEFAULT_CACHE_DIRNAME)
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in (".png", ".json") and stem.startswith("sub-"):
                stems.setdefault(str(Path(dirpath, stem)), Path(dirpath, stem))
    records, encodings = [], []
    for base in stems.values():
        tokens = parse_name_tokens(base.name)
        png, side = base.with_suffix(".png"), base.with_suffix(".json")
        rel_png = relpath(png, root)
        if tokens is None:
            records.append({"image_id": f"{SOURCE}/{rel_png}", "path": rel_png,
                            "drop_reason": f"file name {base.name!r} is not a BIMCV "
                                           f"sub-*_ses-* name"})
            continue
        sidecar, encoding, sidecar_error = _read_sidecar(side)
        if encoding:
            encodings.append(encoding)
        rec = {"image_id": f"{SOURCE}/{rel_png}", "path": rel_png, "patient_raw": tokens["sub"],
               "label": "covid19"}
        if sidecar_error:
            rec["drop_reason"] = sidecar_error
        elif tokens.get("bp", "chest").lower() != "chest":
            rec["drop_reason"] = f"body part {tokens['bp']!r} is not chest"
        projection = _VP.get(tokens.get("vp", "").lower())
        if projection is None:
            projection = projection_from_view_position(sidecar_value(sidecar, "00185101"))
        if projection is None:
            projection = projection_from_description(sidecar_value(sidecar, "0008103E"))
        rec["projection"] = projection
        sensor = tokens.get("sensor") or sidecar_value(sidecar, "00080060")
        rec["sensor"] = str(sensor).upper() if sensor and str(sensor).upper() in ("CR", "DX") \
            else None
        rec["sex"] = parse_sex(sidecar_value(sidecar, "00100040"))
        rec["age"] = parse_dicom_age(sidecar_value(sidecar, "00101010"))
        rec["study_date"] = parse_dicom_date(sidecar_value(sidecar, "00080020"))
        if tokens["sub"] in participants.index:
            known = participants.loc[tokens["sub"]]
            if rec["sex"] is None:
                rec["sex"] = known["sex"]
            if rec["age"] is None and pd.notna(known["age"]):
                rec["age"] = known["age"]
        if png.is_file() and "drop_reason" not in rec and _needs_display_pipeline(sidecar):
            try:
                rec["path"] = relpath(display_png(png, sidecar, cache_dir), root)
            except (ValueError, OSError) as exc:
                rec["drop_reason"] = f"cannot apply the sidecar's display tags: {exc}"
        records.append(rec)
    texts = {"participants.tsv": participants.attrs.get("encoding"),
             "sidecars (*.json)": encoding_summary(encodings) if encodings else None}
    return finish_import(records, root, SOURCE, options,
                         meta={"importer": "bimcv", "label_rule": "all images covid19",
                               "metadata_encodings": {k: v for k, v in texts.items() if v}})
