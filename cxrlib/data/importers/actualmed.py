"""Actualmed COVID-19 chest X-ray dataset, and the Figure 1 COVID-19 set (same columns).

Layout read::

    ROOT/metadata.csv   patientid,offset,sex,age,finding,survival,temperature,pO2 saturation,
                        view,modality,imagename,artifacts/distortion,notes
    ROOT/images/<imagename>                   (Actualmed: CR.1.2.840...png, DX.1.2...png)

The Figure 1 set ships the same header without ``imagename``; its files are named after
``patientid`` with an optional letter suffix (``COVID-00003a.jpg``, ``COVID-00003b.jpg``, any
image extension), and its rows are imported with ``source = figure1``.

``metadata.csv`` may be UTF-8 (with or without BOM) or cp1252 (the Figure 1 release writes a
degree sign in a note so); the encoding read is noted in the sidecar. Image files under
``images/`` that no row names are reported ("image file not listed in the metadata").

Mapping
-------
- label: ``COVID-19`` -> covid19, ``No finding`` -> control, ``Pneumonia`` -> pneumonia
  (matched case-insensitively); blank findings (the notes say why, e.g. "Inconclusive") and
  any other finding are dropped;
- sensor: the modality prefix of ``imagename`` (``CR.``/``DX.``); empty for Figure 1;
- projection: first word of ``view`` (``PA``, ``AP``, ``AP erect`` -> AP; ``L``/``Lateral`` ->
  LAT); sex ``M``/``F``; age only when it is a plain number (``50+`` stays empty);
- patient: ``patientid``.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cxrlib.data.dicom import parse_sex
from cxrlib.data.importers.common import (
    ImportOptions,
    ImportResult,
    IMAGE_SUFFIXES,
    file_index,
    finish_import,
    parse_age_years,
    read_table,
    text_encodings,
)

SOURCE = "actualmed"
FIGURE1_SOURCE = "figure1"
COLUMNS = ("patientid", "offset", "sex", "age", "finding", "survival", "temperature",
           "pO2 saturation", "view", "modality", "artifacts/distortion", "notes")
_SUFFIXES = "|".join(re.escape(s[1:]) for s in IMAGE_SUFFIXES)
FINDINGS = {"covid-19": "covid19", "no finding": "control", "pneumonia": "pneumonia"}
_VIEW_WORDS = {"PA": "PA", "AP": "AP", "L": "LAT", "LAT": "LAT", "LATERAL": "LAT"}


def view_to_projection(view) -> str | None:
    """``"AP erect"`` -> ``AP``, ``"PA"`` -> ``PA``, ``"L"`` -> ``LAT``; unknown -> ``None``."""
    if view is None or pd.isna(view) or not str(view).strip():
        return None
    return _VIEW_WORDS.get(str(view).strip().split()[0].upper())


def finding_to_label(finding, notes=None) -> tuple[str | None, str | None]:
    """``(label, None)`` or ``(None, reason)`` for an Actualmed/Figure 1 finding."""
    if finding is None or pd.isna(finding) or not str(finding).strip():
        why = f" (notes: {str(notes).strip()})" if notes is not None and pd.notna(notes) else ""
        return None, f"finding is blank{why}"
    label = FINDINGS.get(str(finding).strip().lower())
    if label is None:
        return None, f"finding {str(finding).strip()!r} is not mapped to a study class"
    return label, None


def import_actualmed(root: str | Path, options: ImportOptions | None = None) -> ImportResult:
    """Import Actualmed (or the Figure 1 set, detected by its missing ``imagename`` column)."""
    options = options or ImportOptions()
    root = Path(root).resolve()
    table = read_table(root / "metadata.csv", "actualmed", required=COLUMNS)
    figure1 = "imagename" not in table.columns
    source = FIGURE1_SOURCE if figure1 else SOURCE
    files = file_index(root) if figure1 else {}
    records = []
    for values in table.to_dict("records"):
        label, reason = finding_to_label(values["finding"], values["notes"])
        base = {"patient_raw": values["patientid"], "label": label, "drop_reason": reason,
                "sex": parse_sex(values["sex"]), "age": parse_age_years(values["age"]),
                "projection": view_to_projection(values["view"])}
        if figure1:
            pid = str(values["patientid"]).strip()
            pattern = re.compile(re.escape(pid) + rf"[a-z]?\.({_SUFFIXES})", re.IGNORECASE)
            names = sorted(n for n in files if pattern.fullmatch(n))
            paths = [files[n] for n in names] or [f"images/{pid}.jpg"]
        elif pd.isna(values["imagename"]):
            paths = [f"images/<blank imagename of {values['patientid']}>"]
            base["drop_reason"] = base["drop_reason"] or "imagename is blank"
        else:
            name = str(values["imagename"]).strip()
            paths = [f"images/{name}"]
            prefix = name.split(".", 1)[0].upper()
            base["sensor"] = prefix if prefix in ("CR", "DX") else None
        for rel in paths:
            records.append({**base, "image_id": f"{source}/{rel}", "path": rel})
    return finish_import(records, root, source, options, scan=("images",),
                         meta={"importer": "actualmed", "layout": source,
                               "metadata_encodings": text_encodings(table)})
