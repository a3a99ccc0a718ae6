"""HM Hospitales "COVID Data Save Lives" (Madrid): DICOM images and a clinical CSV per patient.

Layout read::

    ROOT/*.csv          the clinical table with the admission diagnosis; its header is spelt
                        either ``PATIENT ID, EDAD/AGE, SEXO/SEX, DIAG ING/INPAT`` (as shipped)
                        or ``PATIENTID, EDAD_AGE, SEXO_SEX, DIAGING_INPAT`` (blanks removed,
                        ``/`` -> ``_``); both are accepted
    ROOT/**/<files>     DICOM files (``.dcm`` or DICOM preamble), usually one folder per patient

Mapping
-------
- image -> patient: the DICOM ``PatientID`` (compared as keyed pseudonyms, the raw id is never
  kept), else the name of the image's top folder under ROOT;
- label: ``covid19`` when the patient's ``DIAGING_INPAT`` is ``COVID19 - POSITIVO`` (on any of
  their rows); other values (negative, pending, blank) and patients missing from the clinical
  table are dropped;
- age: the DICOM ``PatientAge`` at the study, else ``EDAD_AGE`` (age at admission) when the
  patient's rows agree on one value; sex: ``SEXO_SEX`` (``MALE``/``FEMALE``), else
  ``PatientSex``;
- projection: ``ViewPosition``, else the study/series description when it names exactly one
  projection (``RX TORAX AP`` = AP); sensor: ``Modality`` (CR/DX); study date: ``StudyDate``;
- non-radiographs (CT, secondary captures), multi-frame and colour files are dropped;
- the clinical CSV is decoded by :func:`cxrlib.data.importers.common.read_text_file` (UTF-8, else
  cp1252, else Latin-1; the sidecar records which). Its rows describe patients, not images:
  the candidates are the DICOM files.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlib.data.dicom import DicomError, iter_dicom_files, parse_sex, read_dicom_header
from cxrlib.data.importers.common import (
    DEFAULT_CACHE_DIRNAME,
    ImportOptions,
    ImportResult,
    finish_import,
    parse_age_years,
    read_table,
    relpath,
    text_encodings,
)
from cxrlib.data.pseudonym import pseudonymize, resolve_key

SOURCE = "hm"
POSITIVE = "COVID19 - POSITIVO"


def normalise_column(name: str) -> str:
    """HM column spelling -> the normalised one: ``"DIAG ING/INPAT"`` -> ``"DIAGING_INPAT"``."""
    return re.sub(r"\s+", "", str(name)).replace("/", "_").upper()


def read_clinical_table(root: Path, clinical_csv: str | Path | None = None) -> pd.DataFrame:
    """The clinical CSV with normalised column names (``PATIENTID``, ``DIAGING_INPAT``...),
    separator sniffed; ``attrs`` as :func:`cxrlib.data.importers.common.read_table` sets them."""
    if clinical_csv is not None:
        candidates = [Path(clinical_csv) if Path(clinical_csv).is_absolute()
                      else root / clinical_csv]
    else:
        candidates = sorted(root.glob("*.csv")) + sorted(root.glob("*.CSV"))
    for path in candidates:
        if not path.is_file():
            continue
        df = read_table(path, "hm", sep=None, engine="python")
        df.columns = [normalise_column(c) for c in df.columns]
        if {"PATIENTID", "DIAGING_INPAT"} <= set(df.columns):
            return df
    raise FileNotFoundError(
        f"hm: no clinical CSV with columns 'PATIENT ID' and 'DIAG ING/INPAT' (or PATIENTID, "
        f"DIAGING_INPAT) among {[str(p) for p in candidates] or 'the CSV files of ' + str(root)}")


def _patients(table: pd.DataFrame, key: bytes) -> pd.DataFrame:
    """One row per pseudonymised patient: positive (bool), diagnosis, sex, age."""
    table = table[table["PATIENTID"].notna()].copy()
    table["pseudonym"] = [pseudonymize(p, key, SOURCE) for p in table["PATIENTID"]]
    rows = {}
    for pid, group in table.groupby("pseudonym"):
        diagnoses = group["DIAGING_INPAT"].dropna().str.strip()
        sexes = {parse_sex(v) for v in group.get("SEXO_SEX", pd.Series(dtype=str))} - {None}
        ages = {parse_age_years(v) for v in group.get("EDAD_AGE", pd.Series(dtype=str))}
        ages = {a for a in ages if not np.isnan(a)}
        rows[pid] = {
            "positive": bool((diagnoses == POSITIVE).any()),
            "diagnosis": "; ".join(sorted(set(diagnoses))) or "blank",
            "sex": sexes.pop() if len(sexes) == 1 else None,
            "age": ages.pop() if len(ages) == 1 else np.nan,
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def import_hm(root: str | Path, options: ImportOptions | None = None,
              clinical_csv: str | Path | None = None) -> ImportResult:
    """Import HM Hospitales from ``root`` (see the module docstring for the mapping)."""
    options = options or ImportOptions()
    root = Path(root).resolve()
    key = resolve_key(options.key)
    clinical_table = read_clinical_table(root, clinical_csv)
    patients = _patients(clinical_table, key)
    records = []
    for path in iter_dicom_files(root):
        rel = relpath(path, root)
        if rel.startswith(DEFAULT_CACHE_DIRNAME + "/"):
            continue
        rec = {"image_id": f"{SOURCE}/{rel}", "path": rel}
        try:
            header = read_dicom_header(path, pseudonym_key=key, namespace=SOURCE)
        except DicomError as exc:
            rec["drop_reason"] = f"unreadable DICOM: {exc}"
            records.append(rec)
            continue
        parts = Path(rel).parts
        pid = header.patient_pseudonym or (
            pseudonymize(parts[0], key, SOURCE) if len(parts) > 1 else None)
        rec["patient_id"] = pid
        if pid is None or pid not in patients.index:
            rec["drop_reason"] = "patient not in the clinical table"
        else:
            clinical = patients.loc[pid]
            if not clinical["positive"]:
                rec["drop_reason"] = (f"DIAG ING/INPAT is {clinical['diagnosis']!r}, "
                                      f"not {POSITIVE!r}")
            rec["label"] = "covid19"
            rec["sex"] = clinical["sex"] or header.sex
            rec["age"] = header.age if header.age is not None else clinical["age"]
        records.append(rec)
    return finish_import(records, root, SOURCE, options,
                         meta={"importer": "hm", "label_rule": f"DIAGING_INPAT == {POSITIVE!r}",
                               "metadata_encodings": text_encodings(clinical_table)})
