"""What the two NLM tuberculosis sets (Shenzhen and Montgomery) share.

Layout read::

    ROOT/**/CXR_png/<PREFIX>_0001_0.png        label digit: _0 normal, _1 tuberculosis
    ROOT/**/ClinicalReadings/<stem>.txt        sex and age (and the reading)
    ROOT/**/ManualMask/{leftMask,rightMask}/<stem>.png   (Montgomery)

Mapping
-------
- label: ``_0`` -> control; ``_1`` (tuberculosis) -> pneumonia, as seed 001 did when it put
  both sets in its control and pneumonia classes (its Table III); other stems are dropped;
- sex and age from the clinical reading: ``Male 35yrs`` / ``Patient's Sex: M`` and
  ``Patient's Age: 035Y`` (months and days are converted to years);
- projection PA and the sensor stated by the source paper (Shenzhen DX, Montgomery CR);
- patient: one per image (the stem without its label digit): the sets give no patient id and
  hold one radiograph per person;
- every file in ``CXR_png`` is a candidate: images by suffix (any image extension, any case)
  or content; other files (``Thumbs.db``) are reported, not skipped; readings are decoded by
  :func:`cxrlib.data.importers.common.read_text_file` and their encodings noted in the sidecar.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from PIL import Image

from cxrlib.data.dicom import cached_png_path, parse_sex
from cxrlib.data.images import read_mask
from cxrlib.data.importers.common import (
    DEFAULT_CACHE_DIRNAME,
    ImportOptions,
    ImportResult,
    encoding_summary,
    finish_import,
    link_reason,
    may_be_image,
    non_image_reason,
    read_text_file,
    relpath,
)

_SEX_PATTERNS = (re.compile(r"sex\s*:\s*([mf])\b", re.I), re.compile(r"\b(male|female)\b", re.I))
_AGE_PATTERNS = (
    re.compile(r"age\s*:\s*0*(\d{1,3})\s*([ymwd])?", re.I),
    re.compile(r"\b(\d{1,3})\s*(yrs?|years?|y|months?|mths?|days?)\b", re.I),
)
_UNIT_YEARS = {"y": 1.0, "m": 1 / 12, "w": 7 / 365.25, "d": 1 / 365.25}


def parse_clinical_reading(text: str) -> tuple[str | None, float | None]:
    """``(sex, age in years)`` from an NLM clinical-reading text; unknown parts are ``None``.

    >>> parse_clinical_reading("Male 35yrs\\nnormal")
    ('M', 35.0)
    >>> parse_clinical_reading("Patient's Sex: F\\nPatient's Age: 045Y\\n")
    ('F', 45.0)
    """
    sex = None
    for pattern in _SEX_PATTERNS:
        match = pattern.search(text)
        if match:
            sex = parse_sex(match.group(1))
            break
    age = None
    for pattern in _AGE_PATTERNS:
        match = pattern.search(text)
        if match:
            unit = (match.group(2) or "y")[0].lower()
            years = int(match.group(1)) * _UNIT_YEARS.get(unit, 1.0)
            age = round(years, 2) if 0 <= years <= 120 else None
            break
    return sex, age


def join_masks(paths: list[Path], cache_dir: Path) -> Path:
    """Union of binary masks (e.g. left and right lung) as one 0/255 PNG in the cache."""
    key = hashlib.sha256(b"".join(p.read_bytes() for p in paths) + b"|union").hexdigest()
    out = cached_png_path(cache_dir, key, kind="lung_masks")
    if not out.is_file():
        masks = [read_mask(p) for p in paths]
        if len({m.shape for m in masks}) != 1:
            raise ValueError(f"masks of different shapes: {[str(p) for p in paths]}")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.logical_or.reduce(masks).astype(np.uint8) * 255).save(out)
    return out


def import_nlm_tb(root: str | Path, options: ImportOptions | None, source: str, sensor: str,
                  with_masks: bool) -> ImportResult:
    """Import one NLM tuberculosis set (see the module docstring)."""
    options = options or ImportOptions()
    root = Path(root).resolve()
    cache_dir = Path(options.cache_dir) if options.cache_dir else root / DEFAULT_CACHE_DIRNAME
    images, records = {}, []
    for path in sorted(p for p in root.glob("**/CXR_png/*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(root).as_posix()  # a link keeps its own name
        if may_be_image(path) and path.stem not in images:
            images[path.stem] = rel
            continue
        reason = (f"another image of stem {path.stem} is imported: {images[path.stem]}"
                  if path.stem in images else link_reason(path) or non_image_reason(path))
        records.append({"image_id": f"{source}/{rel}", "path": rel, "drop_reason": reason})
    readings = {p.stem: relpath(p, root) for p in sorted(root.glob("**/ClinicalReadings/*.txt"))}
    mask_dirs = {side: sorted(root.glob(f"**/ManualMask/{side}Mask")) for side in
                 ("left", "right")} if with_masks else {}
    mask_dirs = {side: dirs[0] for side, dirs in mask_dirs.items() if dirs}
    if not images and not readings:
        raise FileNotFoundError(f"{source}: no CXR_png/*.png nor ClinicalReadings/*.txt "
                                f"under {root}")
    encodings = []
    for stem in sorted(set(images) | set(readings)):
        rel = images.get(stem, f"CXR_png/{stem}.png")
        match = re.fullmatch(r"(.+)_([01])", stem)
        rec = {"image_id": f"{source}/{Path(rel).name}", "path": rel, "projection": "PA",
               "sensor": sensor, "patient_raw": match.group(1) if match else stem}
        if match:
            rec["label"] = "control" if match.group(2) == "0" else "pneumonia"
        else:
            rec["drop_reason"] = f"file stem {stem!r} does not end in _0 or _1 (label unknown)"
        if stem in readings:
            text, encoding = read_text_file(root / readings[stem])
            encodings.append(encoding)
            rec["sex"], rec["age"] = parse_clinical_reading(text)
        if len(mask_dirs) == 2:
            sides = [mask_dirs[side] / f"{stem}.png" for side in ("left", "right")]
            if all(p.is_file() for p in sides):
                rec["lung_mask_path"] = relpath(join_masks(sides, cache_dir), root)
        records.append(rec)
    texts = {"ClinicalReadings (*.txt)": encoding_summary(encodings)} if encodings else {}
    return finish_import(records, root, source, options,
                         meta={"importer": source, "label_rule": "_0 control, _1 pneumonia "
                                                                 "(tuberculosis)",
                               "metadata_encodings": texts})
