"""NIH ChestX-ray8/14: ``Data_Entry_2017.csv`` and the PNGs (in ``images/`` or the
``images_001/images/`` ... folders of the Kaggle release; found by file name anywhere under ROOT).

Header read: ``Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,
View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]``.

Mapping (seed 001's choice)
---------------------------
- label: ``No Finding`` -> control; ``Pneumonia`` alone -> pneumonia; every other label set,
  including pneumonia with comorbidities (``Pneumonia|Effusion``), is dropped;
- sex ``M``/``F``; age ``Patient Age`` (years, or a DICOM age string such as ``058Y`` in early
  releases; values above 120 are errors of the release and stay empty);
- projection ``View Position`` (PA/AP); sensor DX for every image (the release is digital
  radiography, per the source paper); patient ``Patient ID``; no study date.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrlib.data.dicom import parse_dicom_age, parse_sex, projection_from_view_position
from cxrlib.data.importers.common import (
    ImportOptions,
    ImportResult,
    file_index,
    find_first,
    finish_import,
    read_table,
    text_encodings,
)

SOURCE = "nih"
REQUIRED = ("Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender",
            "View Position")


def findings_to_label(findings) -> tuple[str | None, str | None]:
    """``(label, None)`` or ``(None, reason)`` for a ``|``-joined ``Finding Labels`` value."""
    if findings is None or pd.isna(findings):
        return None, "Finding Labels is blank"
    labels = sorted({f.strip() for f in str(findings).split("|") if f.strip()})
    if labels == ["No Finding"]:
        return "control", None
    if labels == ["Pneumonia"]:
        return "pneumonia", None
    return None, (f"Finding Labels {str(findings)!r} not used (control = 'No Finding', "
                  "pneumonia = 'Pneumonia' alone)")


def import_nih(root: str | Path, options: ImportOptions | None = None) -> ImportResult:
    """Import NIH ChestX-ray8/14 from ``root`` (see the module docstring)."""
    options = options or ImportOptions()
    root = Path(root).resolve()
    csv = find_first(root, ("Data_Entry_2017.csv", "Data_Entry_2017*.csv", "**/Data_Entry_*.csv"),
                     "nih")
    table = read_table(csv, "nih", required=REQUIRED)
    files = file_index(root)
    records = []
    for values in table.to_dict("records"):
        name = str(values["Image Index"]).strip()
        rel = files.get(name, f"images/{name}")
        label, reason = findings_to_label(values["Finding Labels"])
        records.append({
            "image_id": f"{SOURCE}/{name}", "path": rel, "patient_raw": values["Patient ID"],
            "label": label, "drop_reason": reason, "sex": parse_sex(values["Patient Gender"]),
            "age": parse_dicom_age(values["Patient Age"]),
            "projection": projection_from_view_position(values["View Position"]),
            "sensor": "DX",
        })
    return finish_import(records, root, SOURCE, options, scan=(".",),
                         meta={"importer": "nih", "metadata_encodings": text_encodings(table)})
