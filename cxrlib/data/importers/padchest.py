"""PadChest (Alicante): the labels CSV and 16-bit PNGs in numbered folders.

Layout read::

    ROOT/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv[.gz]
         ImageID, ImageDir, StudyDate_DICOM, PatientID, PatientBirth, PatientSex_DICOM,
         ViewPosition_DICOM, Projection, MethodProjection, Modality_DICOM,
         Manufacturer_DICOM, Labels, ReportID, ...
    ROOT/<ImageDir>/<ImageID>        (else found by file name anywhere under ROOT)

Mapping
-------
- label from ``Labels`` (a Python-style list of report labels): exactly ``['normal']`` ->
  control; any label containing ``pneumonia`` -> pneumonia; others dropped (unparseable lists
  too);
- projection ``Projection``: PA; AP and AP_horizontal (supine) -> AP; L -> LAT; COSTAL (rib
  views) and EXCLUDE are dropped; UNK and others empty;
- sensor ``Modality_DICOM`` (CR/DX); sex ``PatientSex_DICOM``; study date ``StudyDate_DICOM``;
- age = study year - ``PatientBirth`` (a birth *year*; the result may be one year too high).
  The birth year is used for this subtraction only and never written;
- patient ``PatientID``. The PNGs are used as distributed.
"""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlib.data.dicom import parse_dicom_date, parse_sex
from cxrlib.data.importers.common import (
    ImportOptions,
    ImportResult,
    file_index,
    find_first,
    finish_import,
    read_table,
    text_encodings,
)

SOURCE = "padchest"
REQUIRED = ("ImageID", "ImageDir", "StudyDate_DICOM", "PatientID", "PatientBirth",
            "PatientSex_DICOM", "Projection", "Modality_DICOM", "Labels")
_PROJECTIONS = {"PA": "PA", "AP": "AP", "AP_HORIZONTAL": "AP", "L": "LAT"}
_DROPPED_PROJECTIONS = ("COSTAL", "EXCLUDE")


def labels_to_label(labels) -> tuple[str | None, str | None]:
    """``(label, None)`` or ``(None, reason)`` for a PadChest ``Labels`` value."""
    if labels is None or pd.isna(labels):
        return None, "Labels is blank"
    try:
        values = ast.literal_eval(str(labels))
    except (ValueError, SyntaxError):
        return None, f"Labels {str(labels)[:60]!r} is not a list"
    if not isinstance(values, (list, tuple)):
        return None, f"Labels {str(labels)[:60]!r} is not a list"
    values = [str(v).strip().lower() for v in values if str(v).strip()]
    if any("pneumonia" in v for v in values):
        return "pneumonia", None
    if values == ["normal"]:
        return "control", None
    return None, f"Labels {values} not used (control = ['normal'], pneumonia = any *pneumonia*)"


def age_from_birth_year(study_date: str | None, birth_year) -> float:
    """Study year minus birth year, in years (NaN when either is unknown or out of 0-120)."""
    if study_date is None or birth_year is None or pd.isna(birth_year):
        return np.nan
    try:
        age = int(study_date[:4]) - int(float(birth_year))
    except ValueError:
        return np.nan
    return float(age) if 0 <= age <= 120 else np.nan


def import_padchest(root: str | Path, options: ImportOptions | None = None) -> ImportResult:
    """Import PadChest from ``root`` (see the module docstring)."""
    options = options or ImportOptions()
    root = Path(root).resolve()
    csv = find_first(root, ("PADCHEST_chest_x_ray_images_labels_160K*.csv",
                            "PADCHEST_chest_x_ray_images_labels_160K*.csv.gz"), "padchest")
    table = read_table(csv, "padchest", required=REQUIRED)
    files: dict[str, str] | None = None
    records = []
    for values in table.to_dict("records"):
        name = str(values["ImageID"]).strip()
        image_dir = str(values["ImageDir"]).strip() if pd.notna(values["ImageDir"]) else ""
        rel = f"{image_dir}/{name}" if image_dir else name
        if not (root / rel).is_file():
            files = files if files is not None else file_index(root)
            rel = files.get(name, rel)
        label, reason = labels_to_label(values["Labels"])
        projection_raw = str(values["Projection"]).strip().upper() \
            if pd.notna(values["Projection"]) else ""
        if projection_raw in _DROPPED_PROJECTIONS:
            reason = f"Projection {projection_raw} is not a chest PA/AP/lateral view"
        study_date = parse_dicom_date(values["StudyDate_DICOM"])
        modality = str(values["Modality_DICOM"]).strip().upper() \
            if pd.notna(values["Modality_DICOM"]) else ""
        records.append({
            "image_id": f"{SOURCE}/{name}", "path": rel, "patient_raw": values["PatientID"],
            "label": label, "drop_reason": reason, "sex": parse_sex(values["PatientSex_DICOM"]),
            "age": age_from_birth_year(study_date, values["PatientBirth"]),
            "projection": _PROJECTIONS.get(projection_raw), "study_date": study_date,
            "sensor": modality if modality in ("CR", "DX") else None,
        })
    return finish_import(records, root, SOURCE, options, scan=(".",),
                         meta={"importer": "padchest",
                               "metadata_encodings": text_encodings(table)})
