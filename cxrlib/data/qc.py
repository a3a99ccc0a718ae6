"""Quality control and leakage guard for manifests: frontal-only filter, missing files, exact and
near-duplicate images, and patient groups that duplicates cannot straddle.

Nothing here deletes or changes a file on disk. Every row taken out of a manifest goes to a QC
report (``REPORT_COLUMNS``) with its reason; rows kept but worth a look are reported with
``action = "flagged"``.

Duplicates
----------
- exact: same file bytes (``qc_sha256``, SHA-256 of the file);
- near: perceptual hash (``qc_phash``, DCT hash of a 64x64 box-filtered thumbnail, 256 bits)
  within ``near_max_distance`` bits. On real radiographs (the covid-chestxray sample) different
  images are >= 92 bits apart while the same image brightened, halved in size, requantised to
  8 bits or noised stays within 14 bits; the default threshold, 24 bits, sits between.

Images linked by a duplicate edge, and images of one patient, form one patient group
(``qc_patient_group``, connected components); split by it so no duplicate straddles folds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image
from scipy.fft import dctn
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from cxrlib.data.dicom import file_sha256
from cxrlib.data.images import read_image
from cxrlib.data.pixel_checks import DEGENERATE, DegenerateImageError

REPORT_COLUMNS = ("source", "image_id", "path", "action", "reason")
FRONTAL = ("AP", "PA")
#: Perceptual hash side: ``PHASH_SIZE**2`` bits.
PHASH_SIZE = 16
#: Largest Hamming distance (bits of the 256-bit hash) counted as a near duplicate.
NEAR_MAX_DISTANCE = 24


# --------------------------------------------------------------------------- report
def empty_report() -> pd.DataFrame:
    """A QC report with no rows (columns ``REPORT_COLUMNS``)."""
    return pd.DataFrame({c: pd.Series(dtype=object) for c in REPORT_COLUMNS})


def report_rows(rows: pd.DataFrame, reason: str | Sequence[str], action: str = "dropped"
                ) -> pd.DataFrame:
    """QC report rows for manifest rows: their source, image_id and path, with ``reason``
    (one string, or one per row) and ``action`` (``"dropped"`` or ``"flagged"``)."""
    if action not in ("dropped", "flagged"):
        raise ValueError(f"action must be 'dropped' or 'flagged', not {action!r}")
    out = pd.DataFrame({
        "source": rows["source"].to_numpy() if "source" in rows else pd.NA,
        "image_id": rows["image_id"].to_numpy(),
        "path": rows["path"].to_numpy() if "path" in rows else pd.NA,
    }, index=range(len(rows)))
    out["action"] = action
    out["reason"] = list(reason) if not isinstance(reason, str) else reason
    return out[list(REPORT_COLUMNS)]


def concat_reports(*reports: pd.DataFrame) -> pd.DataFrame:
    """Stack QC reports (empty ones are skipped)."""
    parts = [r for r in reports if r is not None and len(r)]
    if not parts:
        return empty_report()
    return pd.concat(parts, ignore_index=True)[list(REPORT_COLUMNS)]


def short_reason(reason: str) -> str:
    """A QC reason without its per-image detail (the text after the first ``": "``, which
    names a file or a value), to group rows by reason."""
    return str(reason).split(": ", 1)[0][:80]


def reason_summary(report: pd.DataFrame, action: str = "dropped", top: int = 5) -> str:
    """The ``top`` most frequent reasons (:func:`short_reason`) of the report's ``action`` rows,
    with their counts and one path each: ``"12 not an image (e.g. a/b.txt); 3 ..."``."""
    rows = report[report["action"] == action].assign(
        short=lambda r: r["reason"].map(short_reason))
    groups = rows.groupby("short", sort=False)
    counts = groups.size().sort_values(ascending=False, kind="stable").head(top)
    return "; ".join(f"{n} {why} (e.g. {groups.get_group(why)['path'].iloc[0]})"
                     for why, n in counts.items()) or "none"


# --------------------------------------------------------------------------- hashing
def perceptual_hash(image: np.ndarray, hash_size: int = PHASH_SIZE, highfreq_factor: int = 4
                    ) -> np.ndarray:
    """DCT perceptual hash (pHash) of a grayscale image.

    The image is box-filtered down to ``hash_size * highfreq_factor`` pixels square, a 2-D
    DCT-II is taken, and the ``hash_size x hash_size`` lowest frequencies are compared with
    their median.

    Parameters
    ----------
    image : (H, W) float or integer array (any range: the hash is invariant to linear
        brightness/contrast changes).

    Returns
    -------
    bool array of ``hash_size**2`` bits.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"perceptual_hash expects a 2-D grayscale image, got shape {image.shape}")
    side = hash_size * highfreq_factor
    small = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BOX))
    low = dctn(small.astype(np.float64), type=2, norm="ortho")[:hash_size, :hash_size]
    return (low > np.median(low)).ravel()


def bits_to_hex(bits: np.ndarray) -> str:
    """bool bit array (length a multiple of 8) -> hex string."""
    return np.packbits(np.asarray(bits, dtype=bool)).tobytes().hex()


def hex_to_bits(hex_hashes: Sequence[str]) -> np.ndarray:
    """hex strings of equal length -> bool array (n, bits)."""
    if len(hex_hashes) == 0:
        return np.zeros((0, 0), dtype=bool)
    raw = np.frombuffer(b"".join(bytes.fromhex(h) for h in hex_hashes), dtype=np.uint8)
    return np.unpackbits(raw.reshape(len(hex_hashes), -1), axis=1).astype(bool)


def image_hashes(path: str | Path) -> tuple[str, str]:
    """``(sha256 of the file, hex perceptual hash of its pixels)`` of one image file."""
    return file_sha256(path), bits_to_hex(perceptual_hash(read_image(path)))


def _hashes_or_reason(path: Path) -> tuple[str | None, str | None, str | None]:
    """``(sha256, phash, None)`` of one image file, or ``(None, None, reason)`` when it cannot
    be hashed: ``degenerate pixel data: ...`` (:mod:`cxrlib.data.pixel_checks`) or
    ``unreadable image: ...`` (a truncated or corrupt file, valid magic bytes or not)."""
    try:
        sha, phash = image_hashes(path)
    except DegenerateImageError as exc:
        text = str(exc)
        return None, None, text[text.index(DEGENERATE):] if DEGENERATE in text else text
    except (ValueError, OSError) as exc:  # read_image names the file; PIL/pydicom errors
        return None, None, f"unreadable image: {exc}"
    return sha, phash, None


def hash_images(manifest: pd.DataFrame, data_root: str | Path, progress: bool = False,
                n_jobs: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fill ``qc_sha256`` and ``qc_phash`` where missing; rows whose image cannot be read go to
    a QC report instead.

    Parameters
    ----------
    manifest : manifest rows; ``path`` relative to ``data_root``.
    data_root : folder the paths are relative to.
    progress : show a progress bar.
    n_jobs : worker processes (joblib) for reading and hashing images.

    Returns
    -------
    (copy of the readable rows with both hashes, index reset; QC report of the other rows,
    ``action = "dropped"``, reason ``degenerate pixel data: ...`` or ``unreadable image: ...``).
    Every input row is in exactly one of the two.
    """
    out = manifest.copy().reset_index(drop=True)
    for col in ("qc_sha256", "qc_phash"):
        if col not in out:
            out[col] = pd.NA
        out[col] = out[col].astype(object)
    todo = out.index[out["qc_sha256"].isna() | out["qc_phash"].isna()]
    paths = [Path(data_root) / out.at[i, "path"] for i in todo]
    items = tqdm(paths, desc="hashing images", disable=not progress)
    if n_jobs == 1:
        results = [_hashes_or_reason(p) for p in items]
    else:
        from joblib import Parallel, delayed
        results = Parallel(n_jobs=n_jobs)(delayed(_hashes_or_reason)(p) for p in items)
    reasons: dict[int, str] = {}
    for i, (sha, phash, reason) in zip(todo, results):
        if reason:
            reasons[int(i)] = reason
        else:
            out.at[i, "qc_sha256"], out.at[i, "qc_phash"] = sha, phash
    bad = out.index.isin(list(reasons))
    report = report_rows(out[bad], [reasons[i] for i in out.index[bad]])
    return out[~bad].reset_index(drop=True), report


def add_image_hashes(manifest: pd.DataFrame, data_root: str | Path, progress: bool = False,
                     n_jobs: int = 1) -> pd.DataFrame:
    """A copy of ``manifest`` with ``qc_sha256`` and ``qc_phash`` filled where missing.

    Parameters as :func:`hash_images`, which importers and :func:`run_qc` use so that an
    unreadable or degenerate image becomes a QC report row.

    Raises
    ------
    ValueError naming every file that cannot be hashed, with its reason (no row is dropped
    silently here).
    """
    out, report = hash_images(manifest, data_root, progress, n_jobs)
    if len(report):
        listed = "; ".join(f"{p}: {r}" for p, r in zip(report["path"], report["reason"]))
        raise ValueError(f"{len(report)} image(s) cannot be hashed (use cxrlib.data.qc.hash_images "
                         f"to report them instead): {listed}")
    out.index = manifest.index
    return out


# --------------------------------------------------------------------------- duplicates
def near_duplicate_pairs(bits: np.ndarray, max_distance: int, chunk_rows: int = 512
                         ) -> pd.DataFrame:
    """All pairs of hashes within ``max_distance`` bits (Hamming).

    Uses ``d(x, y) = (n - s(x)·s(y)) / 2`` with ``s = 2 * bits - 1``, one matrix product per
    chunk of rows, so 100 000 hashes take about a minute.

    Parameters
    ----------
    bits : bool array (n, n_bits).
    max_distance : largest distance reported.

    Returns
    -------
    DataFrame with int columns ``i < j`` (row positions) and ``distance``.
    """
    bits = np.asarray(bits, dtype=bool)
    n, n_bits = bits.shape if bits.ndim == 2 else (0, 0)
    found_i, found_j, found_d = [], [], []
    signed = bits.astype(np.float32) * 2 - 1
    for start in range(0, n, chunk_rows):
        block = signed[start:start + chunk_rows]
        dist = np.rint((n_bits - block @ signed.T) / 2).astype(np.int32)
        rows, cols = np.nonzero(dist <= max_distance)
        keep = cols > rows + start
        found_i.append(rows[keep] + start)
        found_j.append(cols[keep])
        found_d.append(dist[rows[keep], cols[keep]])
    if not found_i:
        return pd.DataFrame({"i": pd.Series(dtype=int), "j": pd.Series(dtype=int),
                             "distance": pd.Series(dtype=int)})
    return pd.DataFrame({"i": np.concatenate(found_i), "j": np.concatenate(found_j),
                         "distance": np.concatenate(found_d)})


def find_duplicates(manifest: pd.DataFrame, near_max_distance: int = NEAR_MAX_DISTANCE
                    ) -> pd.DataFrame:
    """Exact and near-duplicate pairs within and across sources.

    Parameters
    ----------
    manifest : rows with ``qc_sha256`` and ``qc_phash`` (see :func:`add_image_hashes`).
    near_max_distance : perceptual-hash distance (bits) up to which two images are near
        duplicates; a negative value disables near duplicates.

    Returns
    -------
    DataFrame, one row per pair: ``image_id_a``, ``image_id_b``, ``source_a``, ``source_b``,
    ``kind`` (``"exact"`` or ``"near"``), ``distance`` (bits; 0 for exact), and ``i``, ``j``
    (row positions in ``manifest``, ``i < j``).
    """
    missing = [c for c in ("qc_sha256", "qc_phash") if c not in manifest]
    if missing or manifest[["qc_sha256", "qc_phash"]].isna().any().any():
        raise ValueError("find_duplicates needs qc_sha256 and qc_phash on every row; "
                         "run cxrlib.data.qc.add_image_hashes first")
    df = manifest.reset_index(drop=True)
    pairs = []
    for _, idx in df.groupby("qc_sha256").indices.items():
        idx = np.sort(idx)
        pairs += [(int(idx[0]), int(k), "exact", 0) for k in idx[1:]]
    if near_max_distance >= 0 and len(df) > 1:
        near = near_duplicate_pairs(hex_to_bits(df["qc_phash"].tolist()), near_max_distance)
        sha = df["qc_sha256"].to_numpy()
        for i, j, d in near.itertuples(index=False):
            if sha[i] != sha[j]:
                pairs.append((int(i), int(j), "near", int(d)))
    out = pd.DataFrame(pairs, columns=["i", "j", "kind", "distance"])
    out["image_id_a"] = df["image_id"].to_numpy()[out["i"].to_numpy(dtype=int)]
    out["image_id_b"] = df["image_id"].to_numpy()[out["j"].to_numpy(dtype=int)]
    out["source_a"] = df["source"].to_numpy()[out["i"].to_numpy(dtype=int)]
    out["source_b"] = df["source"].to_numpy()[out["j"].to_numpy(dtype=int)]
    cols = ["image_id_a", "image_id_b", "source_a", "source_b", "kind", "distance", "i", "j"]
    return out[cols].sort_values(["i", "j"]).reset_index(drop=True)


def patient_groups(manifest: pd.DataFrame, duplicate_pairs: pd.DataFrame | None = None
                   ) -> pd.Series:
    """Patient group of each row: connected components of "same source and patient_id" and
    "duplicate pair" links.

    Returns
    -------
    Series (same index as ``manifest``) of str: the smallest ``patient_id`` of the component,
    so that a group of one patient keeps that patient's id.
    """
    df = manifest.reset_index(drop=True)
    n = len(df)
    if n == 0:
        return pd.Series([], index=manifest.index, dtype=object)
    # Nodes 0..n-1 are rows, n.. are (source, patient) keys; each row links to its key.
    codes, keys = pd.factorize(df["source"].astype(str) + "\x1f" + df["patient_id"].astype(str))
    rows, cols = [np.arange(n)], [n + codes]
    if duplicate_pairs is not None and len(duplicate_pairs):
        rows.append(duplicate_pairs["i"].to_numpy(dtype=int))
        cols.append(duplicate_pairs["j"].to_numpy(dtype=int))
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    size = n + len(keys)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    smallest = df["patient_id"].astype(str).groupby(component[:n]).transform("min")
    return pd.Series(smallest.to_numpy(), index=manifest.index, dtype=object)


def drop_exact_duplicates(manifest: pd.DataFrame, duplicate_pairs: pd.DataFrame
                          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the first copy of each set of byte-identical images.

    When the copies disagree on the label, every copy is dropped (the label cannot be trusted).

    Returns
    -------
    (kept rows, QC report of the dropped ones).
    """
    df = manifest.reset_index(drop=True)
    exact = duplicate_pairs[duplicate_pairs["kind"] == "exact"]
    drop: dict[int, str] = {}
    for i, group in exact.groupby("i"):
        members = [int(i)] + group["j"].astype(int).tolist()
        labels = set(df.loc[members, "label"])
        if len(labels) > 1:
            for k in members:
                others = [df.at[m, "image_id"] for m in members if m != k]
                drop[k] = (f"exact duplicate with conflicting labels {sorted(labels)} "
                           f"(copies: {', '.join(others)})")
        else:
            for k in members[1:]:
                drop[k] = f"exact duplicate of {df.at[int(i), 'image_id']}"
    mask = df.index.isin(list(drop))
    report = report_rows(df[mask], [drop[k] for k in df.index[mask]])
    return df[~mask].reset_index(drop=True), report


# --------------------------------------------------------------------------- filters
def frontal_only(manifest: pd.DataFrame, keep_unknown: bool = True
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep AP and PA views.

    Lateral views are dropped. Rows with an unknown projection are kept and flagged when
    ``keep_unknown`` (the source does not say, and guessing is not allowed), else dropped.

    Returns
    -------
    (kept rows, QC report).
    """
    df = manifest.reset_index(drop=True)
    projection = df["projection"]
    frontal = projection.isin(FRONTAL)
    unknown = projection.isna()
    lateral = ~frontal & ~unknown
    reports = [report_rows(df[lateral], "not a frontal view (projection "
                           + df.loc[lateral, "projection"].astype(str) + ")")]
    if keep_unknown:
        reports.append(report_rows(df[unknown], "projection unknown: kept as frontal", "flagged"))
        keep = ~lateral
    else:
        reports.append(report_rows(df[unknown], "projection unknown"))
        keep = frontal
    return df[keep].reset_index(drop=True), concat_reports(*reports)


def missing_files(manifest: pd.DataFrame, data_root: str | Path
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop rows whose image (or non-empty mask) file is absent under ``data_root``.

    Returns
    -------
    (kept rows, QC report naming the missing file).
    """
    df = manifest.reset_index(drop=True)
    root = Path(data_root)
    reasons: dict[int, str] = {}
    for col in ("path", "lung_mask_path", "lesion_mask_path"):
        if col not in df:
            continue
        for i, rel in df[col].items():
            if i not in reasons and isinstance(rel, str) and not (root / rel).is_file():
                reasons[i] = f"{col} file not found: {root / rel}"
    mask = df.index.isin(list(reasons))
    report = report_rows(df[mask], [reasons[i] for i in df.index[mask]])
    return df[~mask].reset_index(drop=True), report


def run_qc(
    manifest: pd.DataFrame,
    data_root: str | Path,
    *,
    frontal: bool = True,
    keep_unknown_projection: bool = True,
    near_max_distance: int = NEAR_MAX_DISTANCE,
    progress: bool = False,
    n_jobs: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Missing files, frontal-only filter, hashing (unreadable or degenerate images are
    dropped with the reason, :func:`hash_images`), duplicates and patient groups.

    Returns
    -------
    (kept manifest with ``qc_sha256``, ``qc_phash`` and ``qc_patient_group``; QC report of every
    dropped or flagged row; the duplicate pairs found among the kept rows' candidates).
    Every input row is either kept or in the report with ``action = "dropped"``.
    """
    kept, report_missing = missing_files(manifest, data_root)
    report_frontal = empty_report()
    if frontal:
        kept, report_frontal = frontal_only(kept, keep_unknown_projection)
    kept, report_unreadable = hash_images(kept, data_root, progress=progress, n_jobs=n_jobs)
    pairs = find_duplicates(kept, near_max_distance)
    kept, report_exact = drop_exact_duplicates(kept, pairs)
    pairs = find_duplicates(kept, near_max_distance)
    near = pairs[pairs["kind"] == "near"]
    flagged = report_rows(kept.iloc[near["j"].to_numpy(dtype=int)],
                          [f"near duplicate of {a} ({d} bits): same patient group"
                           for a, d in zip(near["image_id_a"], near["distance"])], "flagged")
    kept["qc_patient_group"] = patient_groups(kept, pairs)
    report = concat_reports(report_missing, report_frontal, report_unreadable, report_exact,
                            flagged)
    return kept, report, pairs
