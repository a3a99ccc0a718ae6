"""The manifest: one row per image, one schema for every source.

Every importer and the synthetic cohort generator produce this table; every notebook reads it.
Loading validates it and stops with a :class:`ManifestError` that names the row and the column,
so that a bad value is never dropped or coerced silently.

Columns (see ``COLUMNS``):

============== ======== ===================================================================
column         required values
============== ======== ===================================================================
image_id       yes      stable, unique string
path           yes      image path relative to the data root
patient_id     yes      pseudonymous patient id (never a name or a raw DICOM id)
study_date     no       ISO date ``YYYY-MM-DD`` or empty
source         yes      dataset name
label          yes      ``control`` | ``pneumonia`` | ``covid19``
severity       no       ``normal_pcr_pos`` | ``mild`` | ``moderate`` | ``severe`` or empty
sex            no       ``M`` | ``F`` or empty
age            no       years, 0-120, or empty
projection     no       ``AP`` | ``PA`` | ``LAT`` or empty
sensor         no       ``CR`` | ``DX`` or empty
lung_mask_path no       path of a 0/255 lung mask, relative to the data root, or empty
lesion_mask_path no     path of a 0/255 lesion mask, relative to the data root, or empty
============== ======== ===================================================================

Extra columns are allowed only with a known prefix: ``synth_`` (ground truth recorded by the
synthetic generator) and ``qc_`` (quality-control flags). Any other column is an error, so that a
misspelt column (``Sex``, ``patientid``) cannot pass unnoticed.

Unknown values are empty (``NaN`` after loading), never guessed.

Paths stay inside the data root: an absolute ``path``/mask path, or one that leaves the root
(``../../x.png``, compared as text after normalisation; symbolic links inside the root are
followed as they are), is an error naming the row and column, unless the sidecar says
``"allow_paths_outside_root": true`` (``ALLOW_OUTSIDE_KEY``; importers set it when their cache
folder lies outside the source root, so cached PNGs are ``../cache/...``).

Reading a manifest never ends in a bare pandas/JSON error: an empty CSV, a corrupt sidecar, an
unreadable file are :class:`ManifestError` naming the file; a CSV saved as cp1252/Latin-1 is
decoded (:func:`cxrlib.data.textfiles.read_text_file`).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Sequence

import numpy as np
import pandas as pd

from cxrlib.data.textfiles import read_text_file

LABELS = ("control", "pneumonia", "covid19")
SEVERITIES = ("normal_pcr_pos", "mild", "moderate", "severe")
SEXES = ("M", "F")
PROJECTIONS = ("AP", "PA", "LAT")
SENSORS = ("CR", "DX")

REQUIRED = ("image_id", "path", "patient_id", "source", "label")
OPTIONAL = (
    "study_date", "severity", "sex", "age", "projection", "sensor",
    "lung_mask_path", "lesion_mask_path",
)
COLUMNS = (
    "image_id", "path", "patient_id", "study_date", "source", "label", "severity",
    "sex", "age", "projection", "sensor", "lung_mask_path", "lesion_mask_path",
)
EXTRA_PREFIXES = ("synth_", "qc_")
CATEGORICAL = {
    "label": LABELS,
    "severity": SEVERITIES,
    "sex": SEXES,
    "projection": PROJECTIONS,
    "sensor": SENSORS,
}
SIDECAR_SUFFIX = ".meta.json"
PATH_COLUMNS = ("path", "lung_mask_path", "lesion_mask_path")
#: Sidecar key that lets ``path`` and the mask paths leave the data root (``true`` only).
ALLOW_OUTSIDE_KEY = "allow_paths_outside_root"


class ManifestError(ValueError):
    """A manifest breaks the schema; the message names the file, row and column."""


def _where(origin: str, row: int | None = None, column: str | None = None) -> str:
    parts = [origin]
    if row is not None:
        parts.append(f"row {row}")
    if column is not None:
        parts.append(f"column '{column}'")
    return ", ".join(parts)


def _empty(series: pd.Series) -> pd.Series:
    """True where a value is missing (NaN, None or an empty/blank string)."""
    as_str = series.astype("string")
    return series.isna() | as_str.str.strip().fillna("").eq("")


def escapes_root(rel: str) -> bool:
    """True if a manifest path is absolute (``/x``, ``C:\\x``, ``\\\\server\\x``) or leaves
    the folder it is relative to once normalised (``../x``, ``a/../../x``)."""
    text = str(rel).strip().replace("\\", "/")
    if PurePosixPath(text).is_absolute() or PureWindowsPath(str(rel)).is_absolute() \
            or PureWindowsPath(str(rel)).drive:
        return True
    norm = os.path.normpath(text).replace("\\", "/")
    return norm == ".." or norm.startswith("../")


def _check_paths_inside(out: pd.DataFrame, origin: str) -> None:
    """ManifestError naming the first row/column whose path leaves the data root."""
    for col in PATH_COLUMNS:
        for row, rel in out[col].items():
            if isinstance(rel, str) and escapes_root(rel):
                raise ManifestError(
                    f"{_where(origin, int(row), col)}: path {rel!r} is absolute or leaves the "
                    f"data root; paths are relative to the data root and stay inside it "
                    f"(set \"{ALLOW_OUTSIDE_KEY}\": true in the sidecar to allow it)")


def _typed_extra(series: pd.Series) -> pd.Series:
    """An extra (``synth_``/``qc_``) column read from CSV as text, typed back: all-boolean text
    becomes bool, all-numeric text becomes numbers; anything else stays text. Empty stays
    missing."""
    if series.dtype != object and not pd.api.types.is_string_dtype(series):
        return series
    blank = _empty(series)
    text = series.astype("string").str.strip()
    present = text[~blank]
    if present.empty:
        return series.where(~blank, pd.NA)
    if present.isin(["True", "False"]).all():
        return text.map({"True": True, "False": False}).where(~blank, pd.NA).astype(object) \
            if blank.any() else text.eq("True").astype(bool)
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.notna().all():
        out = pd.to_numeric(text.where(~blank, None), errors="coerce")
        integral = (numbers == numbers.round()).all() and not blank.any()
        return out.astype("int64") if integral else out.astype(float)
    return text.where(~blank, pd.NA).astype(object)


def validate_manifest(
    df: pd.DataFrame,
    data_root: str | Path | None = None,
    check_files: bool = True,
    origin: str = "manifest",
    allow_outside_root: bool = False,
) -> pd.DataFrame:
    """Check a manifest against the schema and return a normalised copy.

    Parameters
    ----------
    df : DataFrame, one row per image.
    data_root : folder that ``path`` and the mask paths are relative to; needed when
        ``check_files`` is true.
    check_files : if true, every ``path`` (and every non-empty mask path) must exist.
    origin : name used in error messages (usually the CSV file).
    allow_outside_root : accept absolute paths and paths that leave the data root (``../``);
        by default they are an error (the sidecar key ``allow_paths_outside_root``).

    Returns
    -------
    DataFrame with the schema's columns first (optional ones added empty when absent), then the
    extra ``synth_``/``qc_`` columns; empty strings turned into missing values; ``age`` as float.

    Raises
    ------
    ManifestError naming the row (0-based, as in the DataFrame; the CSV line is row + 2) and
    the column of the first problem found in each check.
    """
    if not isinstance(df, pd.DataFrame):
        raise ManifestError(f"{origin}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{_where(origin)}: missing required column(s) {missing}; "
            f"the manifest has {list(df.columns)}"
        )
    unknown = [c for c in df.columns if c not in COLUMNS and not str(c).startswith(EXTRA_PREFIXES)]
    if unknown:
        raise ManifestError(
            f"{_where(origin, column=unknown[0])}: unknown column(s) {unknown}; allowed are "
            f"{list(COLUMNS)} and extra columns prefixed {list(EXTRA_PREFIXES)}"
        )
    out = df.copy()
    for col in COLUMNS:
        if col not in out.columns:
            out[col] = pd.NA
    extras = [c for c in out.columns if c not in COLUMNS]
    out = out[list(COLUMNS) + extras].reset_index(drop=True)
    for col in extras:
        out[col] = _typed_extra(out[col])

    for col in COLUMNS:
        if col == "age":
            continue
        blank = _empty(out[col])
        values = out[col].astype("string").str.strip()
        out[col] = values.where(~blank, pd.NA).astype(object)

    for col in REQUIRED:
        blank = out[col].isna()
        if blank.any():
            row = int(np.flatnonzero(blank.to_numpy())[0])
            raise ManifestError(f"{_where(origin, row, col)}: empty value in a required column")

    for col, allowed in CATEGORICAL.items():
        present = out[col].notna()
        bad = present & ~out[col].isin(allowed)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ManifestError(
                f"{_where(origin, row, col)}: unknown value {out.at[row, col]!r}; "
                f"allowed are {list(allowed)} or empty"
            )

    age_raw = df["age"].reset_index(drop=True) if "age" in df.columns else out["age"]
    age = pd.to_numeric(age_raw.where(~_empty(age_raw), np.nan), errors="coerce")
    bad = (age.isna() & ~_empty(age_raw)) | (age < 0) | (age > 120)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ManifestError(
            f"{_where(origin, row, 'age')}: {age_raw.iloc[row]!r} is not an age in years (0-120)"
        )
    out["age"] = age.astype(float)

    dates = out["study_date"]
    parsed = pd.to_datetime(dates, format="%Y-%m-%d", errors="coerce")
    bad = dates.notna() & parsed.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ManifestError(
            f"{_where(origin, row, 'study_date')}: {dates.iloc[row]!r} is not a YYYY-MM-DD date"
        )

    dup = out["image_id"].duplicated(keep="first")
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        first = int(np.flatnonzero((out["image_id"] == out.at[row, "image_id"]).to_numpy())[0])
        raise ManifestError(
            f"{_where(origin, row, 'image_id')}: duplicate image_id {out.at[row, 'image_id']!r} "
            f"(first seen in row {first})"
        )

    if not allow_outside_root:
        _check_paths_inside(out, origin)

    if check_files:
        if data_root is None:
            raise ManifestError(f"{origin}: data_root is needed to check that the files exist")
        root = Path(data_root)
        for col in PATH_COLUMNS:
            for row, rel in out[col].items():
                if isinstance(rel, str) and not (root / rel).is_file():
                    raise ManifestError(
                        f"{_where(origin, int(row), col)}: file not found: {root / rel}"
                    )
    return out


def sidecar_path(csv_path: str | Path) -> Path:
    """Where the metadata of a manifest CSV lives: ``NAME.csv`` -> ``NAME.meta.json``."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.stem + SIDECAR_SUFFIX)


def read_sidecar(csv_path: str | Path) -> dict:
    """The manifest's metadata (``data_root``, generator parameters...), or ``{}`` if absent.

    Raises
    ------
    ManifestError naming the sidecar when it is not JSON, not a JSON object, or has an
    ``allow_paths_outside_root`` that is not ``true``/``false``.
    """
    side = sidecar_path(csv_path)
    if not side.is_file():
        return {}
    try:
        text, _ = read_text_file(side)
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{side}: manifest sidecar is not valid JSON ({exc}); fix or delete "
                            "it (it holds data_root and the import facts)") from None
    except OSError as exc:
        raise ManifestError(f"{side}: cannot read the manifest sidecar: {exc}") from None
    if not isinstance(meta, dict):
        raise ManifestError(f"{side}: manifest sidecar must hold a JSON object, got "
                            f"{type(meta).__name__}")
    if not isinstance(meta.get(ALLOW_OUTSIDE_KEY, False), bool):
        raise ManifestError(f"{side}: {ALLOW_OUTSIDE_KEY!r} must be true or false, got "
                            f"{meta[ALLOW_OUTSIDE_KEY]!r}")
    return meta


def read_manifest_csv(csv_path: str | Path) -> pd.DataFrame:
    """A manifest CSV as text cells (no validation), decoded by
    :func:`cxrlib.data.textfiles.read_text_file` (UTF-8, else cp1252, else Latin-1).

    Raises
    ------
    ManifestError naming the file: not found, unreadable, empty (no header line), or not
    parseable as CSV.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ManifestError(f"manifest not found: {csv_path}")
    try:
        text, _ = read_text_file(csv_path)
    except OSError as exc:
        raise ManifestError(f"{csv_path}: cannot read the manifest: {exc}") from None
    if not text.strip():
        raise ManifestError(f"{csv_path}: the manifest is empty; expected a CSV with a header "
                            f"line naming at least {list(REQUIRED)}")
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ManifestError(f"{csv_path}: the manifest has no columns; expected a CSV with a "
                            f"header line naming at least {list(REQUIRED)}") from None
    except pd.errors.ParserError as exc:
        raise ManifestError(f"{csv_path}: not a readable CSV: {exc}") from None


def resolve_data_root(csv_path: str | Path, data_root: str | Path | None = None) -> Path:
    """The folder the manifest's paths are relative to.

    In order: the ``data_root`` argument; the sidecar's ``data_root`` (relative to the sidecar);
    the folder that holds the CSV.
    """
    csv_path = Path(csv_path).resolve()
    if data_root is not None:
        return Path(data_root).resolve()
    meta = read_sidecar(csv_path)
    if meta.get("data_root"):
        return (csv_path.parent / meta["data_root"]).resolve()
    return csv_path.parent


def data_root_of(manifest: pd.DataFrame, data_root: str | Path | None = None) -> Path:
    """The folder the manifest's relative paths start from: ``data_root`` when given, else the
    root :func:`load_manifest` recorded. Raises ``ValueError`` rather than guessing the working
    directory for a table that was not loaded from a file."""
    if data_root is not None:
        return Path(data_root)
    if "data_root" not in manifest.attrs:
        raise ValueError("the manifest has no data root (attrs['data_root']): load it with "
                         "load_manifest, or pass data_root= explicitly")
    return Path(manifest.attrs["data_root"])


def load_manifest(
    csv_path: str | Path,
    data_root: str | Path | None = None,
    check_files: bool = True,
) -> pd.DataFrame:
    """Read and validate a manifest CSV.

    Returns the validated DataFrame (see :func:`validate_manifest`) with
    ``df.attrs['data_root']`` set to the resolved data root and ``df.attrs['meta']`` to the
    sidecar metadata. Paths must stay inside the data root unless the sidecar holds
    ``"allow_paths_outside_root": true``.

    Raises
    ------
    ManifestError naming the file (empty, not CSV, corrupt sidecar; see
    :func:`read_manifest_csv`, :func:`read_sidecar`) or the row and column (schema, paths).
    """
    csv_path = Path(csv_path)
    raw = read_manifest_csv(csv_path)
    meta = read_sidecar(csv_path)
    root = resolve_data_root(csv_path, data_root)
    df = validate_manifest(raw, data_root=root, check_files=check_files, origin=str(csv_path),
                           allow_outside_root=meta.get(ALLOW_OUTSIDE_KEY, False))
    df.attrs["data_root"] = str(root)
    df.attrs["meta"] = meta
    return df


def write_manifest(
    df: pd.DataFrame,
    csv_path: str | Path,
    data_root: str | Path | None = None,
    meta: dict | None = None,
) -> Path:
    """Validate ``df`` and write it as CSV, with a ``.meta.json`` sidecar.

    ``data_root`` (default: the CSV's folder) is stored relative to the CSV when possible, so a
    manifest and its images can move together. Paths that leave the data root are accepted
    only with ``meta["allow_paths_outside_root"] = True`` (written to the sidecar).
    """
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    root = Path(data_root).resolve() if data_root is not None else csv_path.parent.resolve()
    allow = (meta or {}).get(ALLOW_OUTSIDE_KEY, False) is True
    clean = validate_manifest(df, data_root=root, check_files=True, origin=str(csv_path),
                              allow_outside_root=allow)
    clean.to_csv(csv_path, index=False)
    stored_root = os.path.relpath(root, csv_path.parent.resolve())
    side = dict(meta or {})
    side["data_root"] = stored_root
    sidecar_path(csv_path).write_text(json.dumps(side, indent=2, sort_keys=True, default=str))
    return csv_path


def image_info(manifest: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The manifest indexed by ``image_id`` (one row per image), with ``columns`` only (None:
    all). Raises ``ValueError`` naming the columns the manifest lacks."""
    columns = [c for c in manifest.columns if c != "image_id"] if columns is None else list(columns)
    missing = [c for c in ("image_id", *columns) if c not in manifest.columns]
    if missing:
        raise ValueError(f"the manifest lacks column(s) {missing}")
    return manifest[["image_id", *columns]].drop_duplicates("image_id").set_index("image_id")


def join_manifest(table: pd.DataFrame, manifest: pd.DataFrame, columns: Sequence[str],
                  what: str = "the table") -> pd.DataFrame:
    """``table`` (with an ``image_id`` column) with the manifest's ``columns`` joined to each row.

    Raises ``ValueError`` naming the columns the manifest lacks, or the first image of
    ``table`` that is not in the manifest (and how many are not): ``what`` names the table in
    the message.
    """
    try:
        info = image_info(manifest, columns)
    except ValueError as exc:
        raise ValueError(f"{exc}, needed with {what}") from None
    unknown = ~table["image_id"].isin(info.index)
    if unknown.any():
        raise ValueError(f"{what}: image {table['image_id'][unknown].iloc[0]!r} is not in the "
                         f"manifest ({int(unknown.sum())} unknown): was it written for another "
                         "cohort?")
    return table.join(info, on="image_id")
