"""CheXpert (Stanford): ``train.csv`` and ``valid.csv`` with paths to JPEGs.

Header read: ``Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,...,Pneumonia,...``. ``Path``
starts with the release folder (``CheXpert-v1.0-small/train/patient00001/study1/
view1_frontal.jpg``); it is resolved against ROOT as it is, else without its first component
(ROOT being that release folder).

Mapping
-------
- label (CheXpert labels: 1 positive, 0 negative, -1 uncertain, blank not mentioned):
  ``Pneumonia == 1`` -> pneumonia, with or without other findings (seed 001 kept
  comorbidities for CheXpert); else ``No Finding == 1`` -> control; ``Pneumonia == -1`` and
  everything else are dropped;
- sex ``Male``/``Female`` (``Unknown`` stays empty); age, 0 meaning unknown;
- projection: ``Frontal/Lateral == Lateral`` -> LAT, else ``AP/PA`` (AP, PA; LL/RL -> LAT);
- patient: ``patientNNNNN`` in the path; sensor and study date: empty (not released).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cxrlib.data.dicom import parse_sex, projection_from_view_position
from cxrlib.data.importers.common import (
    ImportOptions,
    ImportResult,
    finish_import,
    parse_age_years,
    read_table,
    text_encodings,
)

SOURCE = "chexpert"
REQUIRED = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Pneumonia")
_PATIENT = re.compile(r"(patient\d+)")


def _flag(value) -> float | None:
    if value is None or pd.isna(value) or not str(value).strip():
        return None
    try:
        return float(value)
    except ValueError:
        return None


def chexpert_label(pneumonia, no_finding) -> tuple[str | None, str | None]:
    """``(label, None)`` or ``(None, reason)`` from the ``Pneumonia`` and ``No Finding``
    labeller outputs (1, 0, -1 or blank)."""
    p, nf = _flag(pneumonia), _flag(no_finding)
    if p == 1:
        return "pneumonia", None
    if p == -1:
        return None, "Pneumonia is uncertain (-1)"
    if nf == 1:
        return "control", None
    return None, "neither Pneumonia = 1 nor No Finding = 1"


def resolve_release_path(root: Path, path: str) -> str:
    """``Path`` of a CheXpert row, relative to ROOT: as given if it exists, else without the
    release folder (also when neither exists, so that the report names the expected file)."""
    parts = Path(path).parts
    if (root / path).is_file() or len(parts) < 2:
        return Path(path).as_posix()
    return Path(*parts[1:]).as_posix()


def import_chexpert(root: str | Path, options: ImportOptions | None = None) -> ImportResult:
    """Import CheXpert from ``root`` (``train.csv`` and/or ``valid.csv``)."""
    options = options or ImportOptions()
    root = Path(root).resolve()
    tables = [read_table(root / name, "chexpert", required=REQUIRED)
              for name in ("train.csv", "valid.csv") if (root / name).is_file()]
    if not tables:
        raise FileNotFoundError(f"chexpert: neither train.csv nor valid.csv under {root}")
    records = []
    for values in pd.concat(tables, ignore_index=True).to_dict("records"):
        path = str(values["Path"]).strip()
        rel = resolve_release_path(root, path)
        label, reason = chexpert_label(values["Pneumonia"], values["No Finding"])
        lateral = str(values["Frontal/Lateral"]).strip().lower() == "lateral"
        patient = _PATIENT.search(path)
        records.append({
            "image_id": f"{SOURCE}/{rel}", "path": rel,
            "patient_raw": patient.group(1) if patient else None,
            "label": label, "drop_reason": reason, "sex": parse_sex(values["Sex"]),
            "age": parse_age_years(values["Age"]),
            "projection": "LAT" if lateral else projection_from_view_position(values["AP/PA"]),
        })
    return finish_import(records, root, SOURCE, options, scan=(".",),
                         meta={"importer": "chexpert",
                               "metadata_encodings": text_encodings(*tables)})
