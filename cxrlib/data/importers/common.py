"""What every importer shares: the candidate table, DICOM conversion, pseudonyms, the report.

An importer reads a distribution as it comes and builds a *candidate* table, one row per image
it found a trace of (a metadata row, a file), with the manifest's columns and:

- ``path``: the image file relative to the source root (the original file; a DICOM file is
  converted by :func:`finish_import`);
- ``patient_raw``: the source's own patient id, pseudonymised by :func:`finish_import` (or
  ``patient_id`` already pseudonymised);
- ``drop_reason``: why the row is left out (``None`` to keep it).

:func:`finish_import` then drops what must go (into the QC report, with the reason), adds the
image files of the scanned folders that no row names, checks that files exist and hold an image
(told by content, :func:`cxrlib.data.images.image_format`), converts DICOM to cached 16-bit PNGs
(filling sex, age, projection, sensor and study date from allow-listed tags where the metadata
left them empty), pseudonymises patients, validates the manifest schema, hashes images and
groups duplicates. Every candidate ends up in the manifest or in the QC report
(:func:`accounting`).

Metadata text files are decoded by :func:`read_text_file` (UTF-8 with or without BOM, else
cp1252, else Latin-1); the encodings used go to the sidecar (``metadata_encodings``).
"""
from __future__ import annotations

import errno
import io
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrlib.data import qc
from cxrlib.data.corpus import companion_paths, refuse_empty
from cxrlib.data.dicom import (
    DegenerateDicomError,
    DicomError,
    dicom_to_cached_png,
    exclusion_reason,
    is_dicom_file,
    read_dicom_header,
)
from cxrlib.data.images import DICOM_SUFFIXES, image_format
from cxrlib.data.manifest import (
    ALLOW_OUTSIDE_KEY,
    COLUMNS,
    escapes_root,
    validate_manifest,
    write_manifest,
)
from cxrlib.data.pixel_checks import DEGENERATE
from cxrlib.data.pseudonym import key_fingerprint, pseudonymize_series, resolve_key
from cxrlib.data.textfiles import TEXT_ENCODINGS, read_text_file  # noqa: F401 (re-exported)

#: Default cache folder, relative to the source root, for derived files (DICOM -> PNG, masks).
DEFAULT_CACHE_DIRNAME = "cxrlib_cache"
CANDIDATE_COLUMNS = (*COLUMNS, "patient_raw", "drop_reason")
#: File name suffixes (any case) taken for images; files without one are told by content.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".tif", ".tiff", ".dcm", ".dicom")
#: Suffixes of image formats not read here: such files are candidates, reported in the QC
#: report with their format (``unsupported image format BMP: ...``), never ignored.
OTHER_IMAGE_SUFFIXES = (".bmp", ".dib", ".gif", ".webp", ".jp2", ".j2k", ".jpx", ".pgm", ".ppm",
                        ".pnm", ".heic", ".heif", ".avif")
#: Leading bytes of image formats not read here, for the QC report's reason.
_OTHER_MAGIC = ((b"GIF8", "GIF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
                (b"\xffO\xffQ", "JPEG 2000"))
#: Reason given to image files of a scanned folder that no metadata row names.
UNLISTED = "image file not listed in the metadata"
#: The manifest's ``source`` value per importer key: the names of the source papers (seed 001
#: Table III, seed 000), which the synthetic cohort and the audit tables use too. Keys not
#: listed (generic importers) are written as they are. The key itself prefixes ``image_id`` and
#: namespaces the pseudonyms.
SOURCE_NAMES = {
    "bimcv": "BIMCV", "hm": "HM Hospitales", "actualmed": "ACT", "figure1": "Figure1",
    "cohen": "Cohen", "covidgr": "COVIDGR", "nih": "CRX8", "chexpert": "CheXpert",
    "mimic": "MIMIC", "padchest": "PadChest", "rsna": "RSNA", "shenzhen": "ChinaSet",
    "montgomery": "Montgomery",
}


@dataclass
class ImportResult:
    """What an importer returns.

    Attributes
    ----------
    source : source name written in the manifest's ``source`` column (``SOURCE_NAMES``).
    manifest : the validated manifest (paths relative to ``root``).
    report : the QC report (``cxrlib.data.qc.REPORT_COLUMNS``): every candidate row left out, with
        its reason, and rows kept but flagged.
    root : the data root the manifest's paths are relative to.
    split_plan : a split plan shipped with the source (COVIDGR), else ``None``.
    meta : facts for the manifest's sidecar (importer, key fingerprint, cache folder, counts).
    """

    source: str
    manifest: pd.DataFrame
    report: pd.DataFrame
    root: Path
    split_plan: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ImportOptions:
    """Options shared by every importer.

    Attributes
    ----------
    key : pseudonymisation key (bytes), a key file, or ``None`` for the default key file.
    cache_dir : folder for derived images (converted DICOMs, joined masks); default
        ``<root>/cxrlib_cache``. Outside the root, manifest paths start with ``../``.
    hash_images : compute ``qc_sha256``/``qc_phash`` and group duplicates at import.
    progress : show progress bars.
    n_jobs : worker processes for DICOM conversion and hashing.
    """

    key: bytes | str | Path | None = None
    cache_dir: str | Path | None = None
    hash_images: bool = True
    progress: bool = False
    n_jobs: int = 1


class RootNotAFolderError(NotADirectoryError, ValueError):
    """An import ROOT that is a file; both a NotADirectoryError and a ValueError (so the
    command line reports it as bad input, exit status 2)."""


def check_source_root(root: str | Path, source: str) -> Path:
    """``root`` resolved, after checking that it is not a file (a missing ROOT is left to the
    importer, whose error names the metadata it looked for).

    Raises
    ------
    RootNotAFolderError (a NotADirectoryError and a ValueError) naming the path and the
    importer when ROOT is a file (give the folder that holds the distribution).
    """
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise RootNotAFolderError(f"{source} importer: ROOT {path} is a file, not a folder; give "
                                 f"the folder that holds the {source} distribution")
    return path.resolve()


def candidates_frame(records: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """A candidate table with every ``CANDIDATE_COLUMNS`` column (missing ones empty)."""
    df = pd.DataFrame(records) if not isinstance(records, pd.DataFrame) else records.copy()
    for col in CANDIDATE_COLUMNS:
        if col not in df:
            df[col] = pd.NA
    extra = [c for c in df.columns if c not in CANDIDATE_COLUMNS]
    if extra:
        raise ValueError(f"unexpected candidate columns {extra}")
    return df[list(CANDIDATE_COLUMNS)].astype(object).reset_index(drop=True)


def read_table(path: Path, what: str, required: tuple[str, ...] = (), **kwargs) -> pd.DataFrame:
    """Read a CSV/TSV metadata file as strings (blank cells -> NA) and check its columns.

    The text is decoded by :func:`read_text_file`; the frame's ``attrs`` hold the file name
    (``"file"``) and the encoding used (``"encoding"``), for :func:`text_encodings`. The
    separator is a tab for ``.tsv`` files, else a comma, unless ``sep=`` is given (``sep=None``
    lets pandas sniff it; pass ``engine="python"`` then).

    Raises
    ------
    FileNotFoundError naming the file and the dataset; ValueError naming missing columns.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{what}: metadata file not found: {path}")
    sep = kwargs.pop("sep", "\t" if path.name.endswith((".tsv", ".tsv.gz")) else ",")
    text, encoding = read_text_file(path)
    df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, sep=sep, **kwargs)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: {path} lacks column(s) {missing}; it has {list(df.columns)}")
    df = df.replace({"": pd.NA})
    df.attrs.update(file=path.name, encoding=encoding)
    return df


def text_encodings(*tables: pd.DataFrame) -> dict[str, str]:
    """File name -> encoding of tables read by :func:`read_table`, for the sidecar's
    ``metadata_encodings``."""
    return {t.attrs["file"]: t.attrs["encoding"] for t in tables if "file" in t.attrs}


def encoding_summary(encodings: Iterable[str]) -> str:
    """The encodings of a set of files in one string: ``"utf-8"`` when they all share it, else
    each with its count, most frequent first (``"utf-8 (660), cp1252 (2)"``)."""
    counts = Counter(encodings).most_common()
    if len(counts) == 1:
        return counts[0][0]
    return ", ".join(f"{name} ({n})" for name, n in counts)


def find_first(root: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of ``names`` (relative paths or glob patterns) that exists under ``root``."""
    for name in names:
        hits = sorted(root.glob(name))
        if hits:
            return hits[0]
    raise FileNotFoundError(f"{what}: none of {list(names)} found under {root}")


def may_be_image(path: Path) -> bool:
    """True for a file with an image suffix (``IMAGE_SUFFIXES`` or ``OTHER_IMAGE_SUFFIXES``, any
    case), or with an image's content (:func:`cxrlib.data.images.image_format`: a DICOM without
    extension or with its UID for a name, a JPEG named ``.bin``) whatever its name."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in OTHER_IMAGE_SUFFIXES:
        return True
    return image_format(path) is not None


def link_reason(path: Path) -> str | None:
    """Why a symbolic link is no image file, for the QC report: ``broken symbolic link
    (target ... not found)``, ``symbolic link loop (-> ...)`` or ``symbolic link to a folder,
    not followed (-> ...)``; None for a link to a file, or a path that is no link."""
    if not path.is_symlink():
        return None
    target = os.readlink(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"symbolic link loop (-> {target})"
        return f"broken symbolic link (target {target} not found)"
    return f"symbolic link to a folder, not followed (-> {target})" if stat.S_ISDIR(mode) else None


def scan_candidate(path: Path) -> bool:
    """True for an entry a folder scan must account for (in the manifest or the QC report): a
    file that may be an image (:func:`may_be_image`), or a symbolic link that leads to no file
    (:func:`link_reason`)."""
    return link_reason(path) is not None or may_be_image(path)


def walk_files(folder: Path, skip: Iterable[Path] = ()) -> Iterator[Path]:
    """Every file under ``folder``, in sorted order, and every symbolic link to a folder (not
    followed), skipping folders named like the default cache folder and the folders in
    ``skip``."""
    skip = {Path(p).resolve() for p in skip}
    for dirpath, dirnames, filenames in os.walk(folder):
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        dirnames[:] = sorted(d for d in dirnames if d != DEFAULT_CACHE_DIRNAME and d not in links
                             and not (skip and Path(dirpath, d).resolve() in skip))
        for name in sorted(filenames + links):
            yield Path(dirpath, name)


def file_index(root: Path) -> dict[str, str]:
    """File name -> path relative to ``root`` (POSIX) for every image file
    (:func:`may_be_image`) anywhere under ``root`` (first one in sorted order wins; the cache
    folder is skipped)."""
    index: dict[str, str] = {}
    for path in walk_files(root):
        if path.name not in index and may_be_image(path):
            index[path.name] = path.relative_to(root).as_posix()
    return index


def _other_format(head: bytes) -> str | None:
    """The name of an image format not read here (BMP, GIF, WebP, JPEG 2000) from a file's
    first bytes, or None."""
    if head[:2] == b"BM" and head[6:10] == b"\x00\x00\x00\x00":  # reserved bytes: zero
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _OTHER_MAGIC if head.startswith(magic)), None)


def non_image_reason(path: Path) -> str:
    """Why a file is not read as an image, for the QC report: ``not an image: empty file``,
    ``unsupported image format BMP ...`` (BMP, GIF, WebP, JPEG 2000),
    ``not an image: text file``, or ``unrecognised file format (...)`` with its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        return f"unreadable file: {exc.strerror or exc}"
    if not head:
        return "not an image: empty file"
    other = _other_format(head)
    if other:
        return (f"unsupported image format {other} (PNG, JPEG, TIFF and DICOM are read): "
                "convert it to PNG to import it")
    text = head.decode("utf-8", errors="ignore")
    if b"\x00" not in head and text and all(c.isprintable() or c.isspace() for c in text):
        return "not an image: text file"
    return (f"unrecognised file format (not PNG, JPEG, TIFF or DICOM): first bytes "
            f"{head[:8].hex(' ')}")


def unlisted_images(cand: pd.DataFrame, root: Path, source: str, folders: Iterable[str],
                    skip: Iterable[Path] = ()) -> pd.DataFrame:
    """Candidate rows (dropped) for the entries a scan accounts for (:func:`scan_candidate`:
    image files, links to no file) under ``folders`` (relative to ``root``; ``skip`` and the
    cache folder left out) that no row of ``cand`` names in ``path``. The reason is
    ``UNLISTED`` (naming the listed file of the same name, if any), or the link's
    (:func:`link_reason`)."""
    listed = {os.path.normpath(p) for p in cand["path"] if isinstance(p, str)}
    by_name = {Path(p).name: p for p in sorted(listed)}
    records = []
    for folder in sorted({os.path.normpath(f) for f in folders}):
        if not (root / folder).resolve().is_relative_to(root.resolve()):
            continue  # a folder named outside ROOT is not scanned
        for path in walk_files(root / folder, skip):
            rel = path.relative_to(root).as_posix()
            if os.path.normpath(rel) in listed or not scan_candidate(path):
                continue
            reason = link_reason(path) or UNLISTED
            if reason == UNLISTED and path.name in by_name:
                reason += f" (the metadata row of that name uses {by_name[path.name]})"
            records.append({"image_id": f"{source}/{rel}", "path": rel, "drop_reason": reason})
            listed.add(os.path.normpath(rel))
    return candidates_frame(records)


def relpath(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as POSIX text (``../`` when outside)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix()


def parse_age_years(value) -> float:
    """A plain number of years (``"54"``, ``"54.0"``) -> float; ``0``, negative, above 120,
    free text (``"50+"``) or empty -> NaN (unknown, never guessed)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return np.nan
    try:
        years = float(str(value).strip())
    except ValueError:
        return np.nan
    return years if 0 < years <= 120 else np.nan


def _convert_one(path: Path, cache_dir: Path, key: bytes, namespace: str
                 ) -> tuple[Path | None, object, str | None]:
    """(PNG, header, None) or (None, header or None, reason) for one DICOM file."""
    try:
        header = read_dicom_header(path, pseudonym_key=key, namespace=namespace)
        reason = exclusion_reason(header)
        if reason:
            return None, header, reason
        png, _ = dicom_to_cached_png(path, cache_dir)
        return png, header, None
    except DegenerateDicomError as exc:  # "PATH: degenerate pixel data: rescale slope 0"
        text = str(exc)
        return None, None, text[text.index(DEGENERATE):] if DEGENERATE in text else text
    except DicomError as exc:
        return None, None, f"unreadable DICOM: {exc}"


def convert_dicom_rows(cand: pd.DataFrame, root: Path, cache_dir: Path, key: bytes,
                       namespace: str, progress: bool = False, n_jobs: int = 1) -> pd.DataFrame:
    """Convert the DICOM files among the kept candidates to cached PNGs.

    ``path`` becomes the cached PNG (relative to ``root``); empty sex, age, projection, sensor
    and study date are filled from the allow-listed tags, and a row without a patient gets the
    pseudonym of the DICOM ``PatientID`` (``key``, ``namespace``); non-radiographs,
    multi-frame, colour and unreadable files get a ``drop_reason`` (``unreadable DICOM: ...``),
    and so do files whose pixels hold no image (``degenerate pixel data: rescale slope 0``,
    ``...: constant image``: :mod:`cxrlib.data.pixel_checks`). Returns a new table.
    """
    cand = cand.copy()
    todo = [i for i in cand.index[cand["drop_reason"].isna()]
            if is_dicom_file(root / cand.at[i, "path"])]
    paths = [root / cand.at[i, "path"] for i in todo]
    items = tqdm(paths, desc="DICOM -> PNG", disable=not progress)
    if n_jobs == 1:
        results = [_convert_one(p, cache_dir, key, namespace) for p in items]
    else:
        from joblib import Parallel, delayed
        results = Parallel(n_jobs=n_jobs)(
            delayed(_convert_one)(p, cache_dir, key, namespace) for p in items)
    for i, (png, header, reason) in zip(todo, results):
        if reason:
            cand.at[i, "drop_reason"] = reason
            continue
        cand.at[i, "path"] = relpath(png, root)
        fill = {"sex": header.sex, "age": header.age, "projection": header.projection,
                "sensor": header.modality, "study_date": header.study_date}
        for col, value in fill.items():
            if pd.isna(cand.at[i, col]) and value is not None:
                cand.at[i, col] = value
        if pd.isna(cand.at[i, "patient_id"]) and pd.isna(cand.at[i, "patient_raw"]):
            cand.at[i, "patient_id"] = header.patient_pseudonym
    return cand


def _file_reasons(cand: pd.DataFrame, root: Path) -> pd.Series:
    """Why kept rows cannot be imported: image or mask path outside ``root`` (absolute or
    ``../``), file absent (or a link that leads to no file: :func:`link_reason`), or an image
    file whose content is no format read here (files named ``.dcm``/``.dicom`` are left to the
    DICOM reader, which gives its own reason)."""
    reasons = pd.Series(pd.NA, index=cand.index, dtype=object)
    for i in cand.index[cand["drop_reason"].isna()]:
        for col in ("path", "lung_mask_path", "lesion_mask_path"):
            rel = cand.at[i, col]
            if not isinstance(rel, str):
                continue
            file = root / rel
            if escapes_root(rel):
                reasons[i] = f"{col} outside the source root: {rel}"
            elif not file.is_file():
                reasons[i] = (link_reason(file)
                              or f"{'image' if col == 'path' else col} file not found: {rel}")
            elif (col == "path" and file.suffix.lower() not in DICOM_SUFFIXES
                  and image_format(file) is None):
                reasons[i] = non_image_reason(file)
            if pd.notna(reasons[i]):
                break
    return reasons


def finish_import(
    cand: pd.DataFrame,
    root: str | Path,
    source: str,
    options: ImportOptions,
    split_plan: pd.DataFrame | None = None,
    meta: dict | None = None,
    extra_report: pd.DataFrame | None = None,
    patient_per_image: bool = False,
    scan: Iterable[str] = (),
) -> ImportResult:
    """Turn a candidate table into a validated manifest and its QC report.

    ``source`` is the importer key (``"nih"``, or a generic importer's own name): it namespaces
    the pseudonyms, and its ``SOURCE_NAMES`` entry fills the ``source`` column.

    Steps: the image files under the ``scan`` folders (relative to ``root``; the cache folder
    left out) that no row names are added, dropped as "image file not listed in the metadata";
    rows with a ``drop_reason`` go to the report; rows whose image (or mask) file is absent go
    to the report ("image file not found"), and so do image files whose content is not an
    image format read here ("not an image: ...", "unrecognised file format ..."); DICOM files
    (by name or content) are converted (:func:`convert_dicom_rows`); ``patient_raw`` is
    pseudonymised with the key; rows without a patient or with a label outside the schema go
    to the report; with ``options.hash_images`` the images are hashed and duplicates grouped
    (``qc_patient_group``) and flagged; an image that cannot be read then (truncated or
    corrupt content behind valid magic bytes: ``unreadable image: ...``; NaN/inf, constant or
    near-constant pixels: ``degenerate pixel data: ...``) moves from the manifest to the
    report (:func:`cxrlib.data.qc.hash_images`; without hashing, only DICOM files are decoded at
    import). Every candidate row ends up in the manifest or in the report (checked:
    :func:`accounting`). When the cache folder lies outside ``root``, the sidecar gets
    ``allow_paths_outside_root: true`` (:func:`cxrlib.data.manifest.load_manifest`).
    ``extra_report`` rows (the importer's own flags) are appended to the report; every report
    row carries the source (``name``) where it had none. With
    ``patient_per_image``, a row that still has no patient (no id in the metadata, no DICOM
    ``PatientID``) counts as its own patient (pseudonym of its ``image_id``) instead of being
    dropped.
    """
    root = Path(root).resolve()
    cand = candidates_frame(cand)
    name = SOURCE_NAMES.get(source, source)
    cand["source"] = name
    key = resolve_key(options.key)
    cache_dir = Path(options.cache_dir) if options.cache_dir else root / DEFAULT_CACHE_DIRNAME

    scan = list(scan)
    if scan:
        unlisted = unlisted_images(cand, root, source, scan, skip=[cache_dir])
        cand = pd.concat([cand, unlisted], ignore_index=True) if len(unlisted) else cand
        cand["source"] = name
    bad_files = _file_reasons(cand, root)
    cand["drop_reason"] = cand["drop_reason"].where(cand["drop_reason"].notna(), bad_files)
    cand = convert_dicom_rows(cand, root, cache_dir, key, source, options.progress,
                              options.n_jobs)

    if patient_per_image:
        alone = cand["patient_id"].isna() & cand["patient_raw"].isna()
        cand.loc[alone, "patient_raw"] = cand.loc[alone, "image_id"]
    pseudo = pseudonymize_series(cand["patient_raw"], key, namespace=source)
    cand["patient_id"] = cand["patient_id"].where(cand["patient_id"].notna(), pseudo)
    no_patient = cand["drop_reason"].isna() & cand["patient_id"].isna()
    cand.loc[no_patient, "drop_reason"] = "no patient id in the source"
    bad_label = cand["drop_reason"].isna() & ~cand["label"].isin(("control", "pneumonia",
                                                                   "covid19"))
    cand.loc[bad_label, "drop_reason"] = [
        "label is empty" if pd.isna(v) else f"unknown label {v}"
        for v in cand.loc[bad_label, "label"]]
    dup = cand["drop_reason"].isna() & cand["image_id"].duplicated(keep="first")
    cand.loc[dup, "drop_reason"] = "image_id listed twice in the source metadata"

    dropped = cand[cand["drop_reason"].notna()]
    report = qc.concat_reports(
        qc.report_rows(dropped, dropped["drop_reason"].astype(str).tolist()), extra_report)
    kept = cand[cand["drop_reason"].isna()].drop(columns=["patient_raw", "drop_reason"])
    outside = not cache_dir.resolve().is_relative_to(root)
    manifest = validate_manifest(kept, data_root=root, check_files=True,
                                 origin=f"{source} importer", allow_outside_root=outside)
    n_dropped = len(dropped)
    if options.hash_images and len(manifest):
        manifest, unreadable = qc.hash_images(manifest, root, options.progress, options.n_jobs)
        report = qc.concat_reports(report, unreadable)  # degenerate or truncated images
        n_dropped += len(unreadable)
        pairs = qc.find_duplicates(manifest)
        manifest["qc_patient_group"] = qc.patient_groups(manifest, pairs)
        flagged = qc.report_rows(
            manifest.iloc[pairs["j"].to_numpy(dtype=int)],
            [f"{k} duplicate of {a} ({d} bits): same patient group"
             for k, a, d in zip(pairs["kind"], pairs["image_id_a"], pairs["distance"])],
            "flagged")
        report = qc.concat_reports(report, flagged)
    report["source"] = report["source"].where(report["source"].notna(), name)  # extra rows
    info = {
        "source": name,
        "source_key": source,
        "key_fingerprint": key_fingerprint(key),
        "cache_dir": relpath(cache_dir, root),
        "n_candidates": int(len(cand)),
        "n_images": int(len(manifest)),
        "n_dropped": int(n_dropped),
    }
    if outside:  # cached PNGs outside ROOT: manifest paths start with ../ (load_manifest)
        info[ALLOW_OUTSIDE_KEY] = True
    info.update(meta or {})
    result = ImportResult(source=name, manifest=manifest, report=report, root=root,
                          split_plan=split_plan, meta=info)
    accounting(result)  # raises if a candidate went missing
    return result


def accounting(result: ImportResult) -> dict[str, int]:
    """How an import's candidates were shared out: ``{"candidates": N, "in_manifest": K,
    "left_out": D}`` with ``N = K + D``. ``left_out`` counts the report's ``dropped`` rows
    (``flagged`` rows are in the manifest).

    Raises
    ------
    RuntimeError if the counts do not add up: a candidate was lost or counted twice, a bug.
    """
    counts = {"candidates": int(result.meta["n_candidates"]),
              "in_manifest": int(len(result.manifest)),
              "left_out": int((result.report["action"] == "dropped").sum())}
    if counts["in_manifest"] + counts["left_out"] != counts["candidates"]:
        raise RuntimeError(f"{result.source} import lost track of rows: {counts}")
    return counts


def accounting_line(result: ImportResult) -> str:
    """``accounting: N candidates = K in the manifest + D left out (QC report)``."""
    c = accounting(result)
    return (f"accounting: {c['candidates']} candidates = {c['in_manifest']} in the manifest + "
            f"{c['left_out']} left out (QC report)")


def write_import_result(result: ImportResult, csv_path: str | Path) -> dict[str, Path]:
    """Write the manifest (:func:`cxrlib.data.manifest.write_manifest`, data root = the source
    root), its QC report and, when the source ships one, its split plan.

    Returns the paths written (keys ``manifest``, ``report`` and maybe ``split_plan``).

    Raises
    ------
    cxrlib.data.corpus.EmptyManifestError (a ValueError) when the import kept no image: nothing is
    written, an earlier manifest at ``csv_path`` and its companions are left as they were.
    """
    paths = companion_paths(csv_path)
    refuse_empty(result.manifest, result.report, paths["manifest"], f"{result.source} import")
    write_manifest(result.manifest, paths["manifest"], data_root=result.root, meta=result.meta)
    result.report.to_csv(paths["report"], index=False)
    written = {"manifest": paths["manifest"], "report": paths["report"]}
    if result.split_plan is not None and len(result.split_plan):
        result.split_plan.to_csv(paths["split_plan"], index=False)
        written["split_plan"] = paths["split_plan"]
    elif paths["split_plan"].is_file():
        paths["split_plan"].unlink()  # a stale plan from an earlier import would mislead
    return written
