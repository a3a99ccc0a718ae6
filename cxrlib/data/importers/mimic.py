"""MIMIC-CXR-JPG: the metadata table joined with the CheXpert and/or NegBio label tables.

Layout read::

    ROOT/mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id,subject_id,study_id,ViewPosition,StudyDate,...
    ROOT/mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id,study_id,<CheXpert label columns>
    ROOT/mimic-cxr-2.0.0-negbio.csv[.gz]     same columns, NegBio labeller
    ROOT/files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg

Mapping
-------
- label per study with the CheXpert rule (``cxrlib.data.importers.chexpert.chexpert_label``:
  Pneumonia = 1 -> pneumonia, else No Finding = 1 -> control). When both label tables are
  present, seed 001's rule applies: a study is kept only when the two labellers agree;
- projection ``ViewPosition``: PA, AP; LATERAL/LL -> LAT; others (``AP AXIAL``, ``LAO``...)
  empty; study date ``StudyDate`` (MIMIC's shifted dates, kept as they are for same-day
  grouping);
- patient ``subject_id``; sex, age and sensor: empty (not released).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrlib.data.dicom import parse_dicom_date, projection_from_view_position
from cxrlib.data.importers.chexpert import chexpert_label
from cxrlib.data.importers.common import (
    ImportOptions,
    ImportResult,
    find_first,
    finish_import,
    read_table,
    text_encodings,
)

SOURCE = "mimic"
PREFIX = "mimic-cxr-2.0.0-"
_KEYS = ("subject_id", "study_id")


def _study_labels(table: pd.DataFrame) -> dict[tuple[str, str], tuple[str | None, str | None]]:
    return {(str(r["subject_id"]), str(r["study_id"])): chexpert_label(r["Pneumonia"],
                                                                      r["No Finding"])
            for r in table.to_dict("records")}


def import_mimic(root: str | Path, options: ImportOptions | None = None) -> ImportResult:
    """Import MIMIC-CXR-JPG from ``root`` (see the module docstring)."""
    options = options or ImportOptions()
    root = Path(root).resolve()
    metadata = read_table(find_first(root, (f"{PREFIX}metadata.csv", f"{PREFIX}metadata.csv.gz"),
                                     "mimic"), "mimic",
                          required=("dicom_id", *_KEYS, "ViewPosition", "StudyDate"))
    labellers, encodings = {}, text_encodings(metadata)
    for name in ("chexpert", "negbio"):
        for suffix in (".csv", ".csv.gz"):
            path = root / f"{PREFIX}{name}{suffix}"
            if path.is_file():
                table = read_table(path, "mimic", required=(*_KEYS, "Pneumonia", "No Finding"))
                labellers[name] = _study_labels(table)
                encodings.update(text_encodings(table))
                break
    if not labellers:
        raise FileNotFoundError(f"mimic: neither {PREFIX}chexpert.csv nor {PREFIX}negbio.csv "
                                f"under {root}")
    records = []
    for values in metadata.to_dict("records"):
        subject, study = str(values["subject_id"]).strip(), str(values["study_id"]).strip()
        rel = f"files/p{subject[:2]}/p{subject}/s{study}/{str(values['dicom_id']).strip()}.jpg"
        results = {name: table.get((subject, study), (None, "study not in the label table"))
                   for name, table in labellers.items()}
        labels = {label for label, _ in results.values()}
        if len(results) == 2 and len(labels) > 1:
            label, reason = None, ("CheXpert and NegBio labellers disagree: "
                                   + ", ".join(f"{k}={v[0] or v[1]}" for k, v in results.items()))
        else:
            label, reason = next(iter(results.values()))
        records.append({
            "image_id": f"{SOURCE}/{rel}", "path": rel, "patient_raw": subject,
            "label": label, "drop_reason": reason,
            "projection": projection_from_view_position(values["ViewPosition"]),
            "study_date": parse_dicom_date(values["StudyDate"]),
        })
    return finish_import(records, root, SOURCE, options, scan=("files",),
                         meta={"importer": "mimic", "labellers": sorted(labellers),
                               "metadata_encodings": encodings})
