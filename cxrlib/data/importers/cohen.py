"""covid-chestxray-dataset (Cohen et al.): ``metadata.csv`` and ``images/``.

Layout read::

    ROOT/metadata.csv   patientid,offset,sex,age,finding,RT_PCR_positive,...,view,modality,date,
                        location,folder,filename,doi,url,license,clinical_notes,other_notes
    ROOT/<folder>/<filename>

Mapping
-------
- rows: ``modality == "X-ray"`` only (CT rows are dropped);
- label from the hierarchical ``finding`` (``/``-separated; older releases use ``,``):
  any level ``COVID-19`` -> covid19; otherwise first level ``Pneumonia`` -> pneumonia (viral,
  bacterial, fungal, lipoid...); ``No Finding`` -> control; anything else (``Tuberculosis``,
  ``todo``, ``Unknown``, flat organism names of old releases) is dropped;
- projection: ``PA`` -> PA; ``AP``, ``AP Supine``, ``AP semi erect``, ``AP erect`` -> AP;
  ``L`` -> LAT; others empty;
- sex ``M``/``F``; age when numeric; study date only when ``date`` is a full day
  (``March 3, 2020``, ``2020-03-03``), never a bare year; patient ``patientid``;
- image files in the folders the ``folder`` column names that no row lists are reported
  ("image file not listed in the metadata"); the encoding of ``metadata.csv`` goes to the
  sidecar.
"""
from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pandas as pd

from cxrlib.data.dicom import parse_sex
from cxrlib.data.importers.common import (
    ImportOptions,
    ImportResult,
    finish_import,
    parse_age_years,
    read_table,
    text_encodings,
)

SOURCE = "cohen"
REQUIRED = ("patientid", "sex", "age", "finding", "view", "modality", "date", "folder",
            "filename")
_VIEWS = {"PA": "PA", "AP": "AP", "AP SUPINE": "AP", "AP SEMI ERECT": "AP", "AP ERECT": "AP",
          "L": "LAT"}
_DATE_FORMATS = ("%B %d, %Y", "%b %d, %Y", "%Y-%m-%d", "%d %B %Y")


def finding_to_label(finding) -> tuple[str | None, str | None]:
    """``(label, None)`` or ``(None, reason)`` for a hierarchical finding."""
    if finding is None or pd.isna(finding) or not str(finding).strip():
        return None, "finding is blank"
    levels = [p.strip().lower() for p in re.split(r"[/,]", str(finding)) if p.strip()]
    if "covid-19" in levels:
        return "covid19", None
    if levels[0] == "pneumonia":
        return "pneumonia", None
    if levels == ["no finding"]:
        return "control", None
    return None, f"finding {str(finding).strip()!r} is not mapped to a study class"


def parse_full_date(value) -> str | None:
    """A full calendar date -> ``YYYY-MM-DD``; a bare year, a month or free text -> ``None``."""
    if value is None or pd.isna(value):
        return None
    text = str(value).strip()
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).strftime("%Y-%m-%d")
        except ValueError:
            continue
    return None


def import_cohen(root: str | Path, options: ImportOptions | None = None) -> ImportResult:
    """Import covid-chestxray-dataset from ``root`` (see the module docstring)."""
    options = options or ImportOptions()
    root = Path(root).resolve()
    table = read_table(root / "metadata.csv", "cohen", required=REQUIRED)
    records, folders = [], set()
    for values in table.to_dict("records"):
        folder = values["folder"] if pd.notna(values["folder"]) else "images"
        folders.add(str(folder).strip())
        rel = f"{str(folder).strip()}/{str(values['filename']).strip()}"
        label, reason = finding_to_label(values["finding"])
        modality = str(values["modality"]).strip() if pd.notna(values["modality"]) else ""
        if modality != "X-ray":
            reason = f"modality {modality or 'blank'!r} is not X-ray"
        view = str(values["view"]).strip().upper() if pd.notna(values["view"]) else ""
        records.append({
            "image_id": f"{SOURCE}/{rel}", "path": rel, "patient_raw": values["patientid"],
            "label": label, "drop_reason": reason, "sex": parse_sex(values["sex"]),
            "age": parse_age_years(values["age"]), "projection": _VIEWS.get(view),
            "study_date": parse_full_date(values["date"]),
        })
    return finish_import(records, root, SOURCE, options, scan=sorted(folders),
                         meta={"importer": "cohen", "metadata_encodings": text_encodings(table)})
