"""Two generic importers driven by a small mapping file (YAML or JSON).

``folders``: one folder per class under ROOT; PNG, JPEG, TIFF and DICOM files alike, at any
depth below the class folder, told by content whatever their name (``.jfif``, ``.JPG``, a DICOM
without extension). Every file under a class folder is a candidate: one that is not an image
goes to the QC report with the reason (``not an image: text file``, ``unsupported image format
BMP ...``, ``unrecognised file format ...``), and so do symbolic links that lead to no file
(broken, looping, or to a folder, which is not followed) and image files directly under ROOT
(no class)::

    source: kaggle_pneumonia              # required: the manifest's source name
    labels: {NORMAL: control, PNEUMONIA: pneumonia}   # class folder -> label (folders named
                                          # control / pneumonia / covid19 need no entry)
    patient_regex: '^(person\\d+)_'       # optional: group 1 of the file name is the patient
    constants: {projection: PA}           # optional: a value for every row

``csv``: any CSV with a column mapping::

    source: my_set                        # required
    csv: metadata.csv                     # required, relative to ROOT
    sep: ","                              # optional
    columns: {Patient: patient_id, Sex: sex, Diagnosis: label, File: path}
                                          # source column -> manifest column
    values:                               # manifest column -> {source value -> value}
      sex: {f: F, m: M}
      label: {virus: pneumonia, normal: control}
    path: "png/{image_id}.png"            # template on the CSV's columns (original or
                                          # renamed names), instead of a path column
    image_id: "{image_id}"                # optional template; default: the path
    constants: {label: covid19, projection: PA}

Rules for both: patient ids are always pseudonymised (a mapped ``patient_id`` column is the
raw id); without one, the DICOM ``PatientID`` is used, else each image is its own patient (noted
in the sidecar). A value outside the schema after mapping is left empty and flagged in the QC
report (labels: the row is dropped), never guessed. DICOM files are converted to cached 16-bit
PNGs and fill empty fields from their allow-listed tags. YAML reads bare ``yes``/``no``/
``on``/``off`` as booleans: quote such values.
"""
from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pandas as pd
import yaml

from cxrlib.data import qc
from cxrlib.data.dicom import (
    parse_dicom_age,
    parse_dicom_date,
    parse_sex,
    projection_from_view_position,
)
from cxrlib.data.importers.common import (
    DEFAULT_CACHE_DIRNAME,
    ImportOptions,
    ImportResult,
    candidates_frame,
    finish_import,
    link_reason,
    non_image_reason,
    read_table,
    read_text_file,
    scan_candidate,
    text_encodings,
)
from cxrlib.data.images import DICOM_SUFFIXES, image_format
from cxrlib.data.manifest import COLUMNS, LABELS, SEVERITIES

_FOLDERS_KEYS = {"source", "labels", "patient_regex", "constants"}
_CSV_KEYS = {"source", "csv", "sep", "columns", "values", "path", "image_id", "constants"}
_TARGETS = set(COLUMNS) - {"source"}


def load_mapping(path: str | Path) -> dict:
    """Read a mapping file (``.yaml``/``.yml`` or ``.json``) into a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mapping file not found: {path}")
    text, _ = read_text_file(path)
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot parse mapping file {path} (YAML: indent with spaces, not "
                         f"tabs): {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"mapping file {path} must hold a mapping (key: value), got "
                         f"{type(data).__name__}")
    return data


def compile_patient_regex(pattern, kind: str = "folders") -> re.Pattern | None:
    """The mapping's ``patient_regex`` compiled (``None`` when absent or empty).

    Raises
    ------
    ValueError naming the key: not a text, not a valid regular expression (``(abc``), or
    without a capturing group (group 1 is the patient id).
    """
    if pattern is None or pattern == "":
        return None
    if not isinstance(pattern, str):
        raise ValueError(f"{kind} mapping: 'patient_regex' must be a text, got {pattern!r} "
                         f"({type(pattern).__name__})")
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{kind} mapping: 'patient_regex' {pattern!r} is not a valid regular "
                         f"expression: {exc}") from None
    if regex.groups < 1:
        raise ValueError(f"{kind} mapping: 'patient_regex' {pattern!r} has no capturing group; "
                         "group 1, e.g. '^(person\\d+)_', must capture the patient id")
    return regex


def _check_mapping(mapping: dict, allowed: set, required: set, kind: str) -> None:
    """ValueError for unknown or missing keys, values of the wrong type (``source``, ``csv``,
    ``sep``, ``path``, ``image_id`` texts; ``labels``, ``columns``, ``values``, ``constants``
    mappings; a ``patient_regex`` that does not compile or has no group) and targets that are
    no manifest column."""
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ValueError(f"{kind} mapping: unknown key(s) {unknown}; allowed are {sorted(allowed)}")
    missing = sorted(required - set(mapping))
    if missing:
        raise ValueError(f"{kind} mapping: missing key(s) {missing}")
    for key in ("constants", "values", "columns", "labels"):
        if key in mapping and not isinstance(mapping[key], dict):
            raise ValueError(f"{kind} mapping: '{key}' must be a mapping, got "
                             f"{type(mapping[key]).__name__}")
    for key in ("source", "csv", "sep", "path", "image_id"):
        if key in mapping and not isinstance(mapping[key], str):
            raise ValueError(f"{kind} mapping: '{key}' must be a text, got {mapping[key]!r} "
                             f"({type(mapping[key]).__name__})")
    for col, value_map in (mapping.get("values") or {}).items():
        if not isinstance(value_map, dict):
            raise ValueError(f"{kind} mapping: values.{col} must be a mapping (source value: "
                             f"value), got {type(value_map).__name__}")
    compile_patient_regex(mapping.get("patient_regex"), kind)
    targets = list((mapping.get("columns") or {}).values()) + list(mapping.get("constants") or {})
    bad = sorted({str(t) for t in targets} - _TARGETS)
    if bad:
        raise ValueError(f"{kind} mapping: {bad} are not manifest columns; use {sorted(_TARGETS)}")


def _checked_mapping(mapping: dict | str | Path | None, allowed: set, required: set, kind: str,
                     default_source: str | None = None) -> dict:
    """The mapping (a dict, or a file read by :func:`load_mapping`) checked by
    :func:`_check_mapping`; errors about a mapping file name the file."""
    is_file = isinstance(mapping, (str, Path))
    data = load_mapping(mapping) if is_file else dict(mapping or {})
    if default_source is not None:
        data.setdefault("source", default_source)
    try:
        _check_mapping(data, allowed, required, kind)
    except ValueError as exc:
        raise ValueError(f"{mapping}: {exc}" if is_file else str(exc)) from None
    return data


def normalise_values(cand: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bring mapped values onto the schema; values that do not fit are emptied and flagged.

    sex: M/F (also Male/Female); age: years or a DICOM age string; projection: AP/PA/LAT (also
    ViewPosition codes LL/RL/LATERAL); sensor: CR/DX; study_date: YYYY-MM-DD or YYYYMMDD;
    severity: the schema's values. Labels are left as they are (unknown ones are dropped by
    :func:`finish_import`).

    Returns
    -------
    (candidate table, QC report of the emptied values, ``action = "flagged"``).
    """
    cand = cand.copy()
    parsers = {
        "sex": parse_sex,
        "age": lambda v: _age(v),
        "projection": lambda v: v if v in ("AP", "PA", "LAT") else projection_from_view_position(v),
        "sensor": lambda v: str(v).strip().upper() if str(v).strip().upper() in ("CR", "DX")
        else None,
        "study_date": parse_dicom_date,
        "severity": lambda v: str(v).strip() if str(v).strip() in SEVERITIES else None,
    }
    flags = []
    for col, parse in parsers.items():
        for i, raw in cand[col].items():
            if raw is None or (not isinstance(raw, str) and pd.isna(raw)) or not str(raw).strip():
                cand.at[i, col] = pd.NA
                continue
            value = parse(raw)
            cand.at[i, col] = pd.NA if value is None else value
            if value is None:
                flags.append((i, f"{col} value {str(raw)[:40]!r} is not in the schema: left empty"))
    rows = cand.loc[[i for i, _ in flags]]
    return cand, qc.report_rows(rows, [r for _, r in flags], "flagged")


def _age(value) -> float | None:
    try:
        years = float(str(value).strip())
    except ValueError:
        return parse_dicom_age(value)
    return years if 0 <= years <= 120 else None


def _file_reason(path: Path, folder: str | None, label: str | None,
                 regex: re.Pattern | None) -> str | None:
    """Why a file of a folder set is left out (``None``: it is not). ``folder`` is its class
    folder (``None``: directly under ROOT), ``label`` that folder's label. A file is an image by
    content (a file named ``.dcm``/``.dicom`` is left to the DICOM reader); a symbolic link
    that leads to no file is reported as such (:func:`link_reason`)."""
    if link_reason(path):
        return link_reason(path)
    if path.suffix.lower() not in DICOM_SUFFIXES and image_format(path) is None:
        return non_image_reason(path)
    if folder is None:
        return "image outside any class folder (label unknown)"
    if label is None:
        return (f"class folder {folder!r} is not mapped to a label "
                f"(add it under 'labels' in the mapping file)")
    if regex is not None and not regex.search(path.name):
        return f"patient_regex {regex.pattern!r} does not match the file name"
    return None


def _real_folder(path: Path) -> bool:
    """True for a folder that is no symbolic link (a link to a folder is an entry to report)."""
    return path.is_dir() and not path.is_symlink()


def import_folders(root: str | Path, options: ImportOptions | None = None,
                   mapping: dict | str | Path | None = None) -> ImportResult:
    """Import a folder-per-class set (see the module docstring for the mapping file).

    ``mapping`` may be omitted when the class folders are named ``control``, ``pneumonia`` and
    ``covid19``; the source is then the name of ROOT.
    """
    options = options or ImportOptions()
    root = Path(root).resolve()
    mapping = _checked_mapping(mapping, _FOLDERS_KEYS, {"source"}, "folders",
                               default_source=root.name.lower())
    source = str(mapping["source"])
    labels = {str(k): v for k, v in (mapping.get("labels") or {}).items()}
    regex = compile_patient_regex(mapping.get("patient_regex"))
    cache_dir = Path(options.cache_dir).resolve() if options.cache_dir else None
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name != DEFAULT_CACHE_DIRNAME
                     and not p.name.startswith(".") and p.resolve() != cache_dir)
    if not folders:
        raise FileNotFoundError(f"folders: no class folder under {root}")
    records = [{"image_id": f"{source}/{f.name}", "path": f.name,
                "drop_reason": _file_reason(f, None, None, None)}
               for f in sorted(root.iterdir()) if not _real_folder(f) and scan_candidate(f)]
    for folder in folders:
        label = labels.get(folder.name, folder.name if folder.name in LABELS else None)
        for f in sorted(folder.rglob("*")):
            if _real_folder(f):
                continue
            rel = f.relative_to(root).as_posix()
            rec = {"image_id": f"{source}/{rel}", "path": rel, "label": label,
                   "drop_reason": _file_reason(f, folder.name, label, regex),
                   **(mapping.get("constants") or {})}
            if regex is not None:
                match = regex.search(f.name)
                rec["patient_raw"] = match.group(1) if match else None
            records.append(rec)
    cand, flags = normalise_values(candidates_frame(records))
    return finish_import(cand, root, source, options, extra_report=flags,
                         patient_per_image=regex is None,
                         meta={"importer": "folders", "mapping": mapping,
                               "patient_rule": "patient_regex" if regex else
                               "DICOM PatientID, else one patient per image"})


def _format(template: str, row: dict, what: str) -> str:
    try:
        return string.Formatter().vformat(template, (), row)
    except KeyError as exc:
        raise ValueError(f"csv mapping: {what} template {template!r} names column {exc}, "
                         f"which the CSV does not have ({sorted(row)})") from None


def import_csv(root: str | Path, options: ImportOptions | None = None,
               mapping: dict | str | Path | None = None) -> ImportResult:
    """Import any CSV through a column mapping (see the module docstring)."""
    options = options or ImportOptions()
    root = Path(root).resolve()
    if mapping is None:
        raise ValueError("csv importer: a mapping file is required (--mapping FILE)")
    mapping = _checked_mapping(mapping, _CSV_KEYS, {"source", "csv"}, "csv")
    columns = {str(k): str(v) for k, v in (mapping.get("columns") or {}).items()}
    if "path" not in columns.values() and "path" not in mapping:
        raise ValueError("csv mapping: give a 'path' template or map a column to 'path'")
    source = str(mapping["source"])
    table = read_table(root / mapping["csv"], f"csv ({source})", required=tuple(columns),
                       **({"sep": mapping["sep"]} if "sep" in mapping else {}))
    value_maps = {col: {str(k).strip(): v for k, v in m.items()}
                  for col, m in (mapping.get("values") or {}).items()}
    records = []
    for raw in table.to_dict("records"):
        rec = {target: raw[col] for col, target in columns.items()}
        for col, value_map in value_maps.items():
            if col in rec and pd.notna(rec[col]):
                rec[col] = value_map.get(str(rec[col]).strip(), rec[col])
        rec.update(mapping.get("constants") or {})
        fields = {**{k: ("" if pd.isna(v) else v) for k, v in raw.items()},
                  **{k: ("" if v is None or (not isinstance(v, str) and pd.isna(v)) else v)
                     for k, v in rec.items()}}
        if "path" in mapping:
            rec["path"] = _format(str(mapping["path"]), fields, "path")
        rec["path"] = Path(str(rec["path"]).strip()).as_posix()
        image_id = (_format(str(mapping["image_id"]), fields, "image_id")
                    if "image_id" in mapping else rec["path"])
        rec["image_id"] = f"{source}/{image_id}"
        if "patient_id" in rec:
            rec["patient_raw"] = rec.pop("patient_id")
        records.append(rec)
    cand, flags = normalise_values(candidates_frame(records))
    has_patient = "patient_id" in columns.values()
    return finish_import(cand, root, source, options, extra_report=flags,
                         patient_per_image=not has_patient,
                         meta={"importer": "csv", "mapping": mapping,
                               "patient_rule": "mapped column" if has_patient else
                               "DICOM PatientID, else one patient per image",
                               "metadata_encodings": text_encodings(table)})
