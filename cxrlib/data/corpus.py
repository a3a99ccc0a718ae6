"""Compose a study corpus from per-source manifests, with the papers' class rules and QC.

A corpus config (YAML) lists the manifests written by ``python -m cxrlib import`` and which
classes each contributes::

    name: arias2020
    frontal_only: true                 # drop lateral views (unknown projections: see below)
    keep_unknown_projection: true      # keep and flag rows whose projection is unknown
    near_duplicate_max_distance: 24    # perceptual-hash bits; -1 disables near duplicates
    data_root: null                    # common root; default: the sources' common ancestor
    sources:
      - manifest: bimcv.csv            # relative to the config file
        labels: [covid19]              # classes taken from it (omit: all)

Values are typed, never coerced: ``frontal_only`` and ``keep_unknown_projection`` are YAML
booleans (``true``/``false``; the string ``"false"`` is an error, not a true value),
``near_duplicate_max_distance`` an integer, ``labels`` a list (``labels: covid19`` without the
brackets is an error rather than being read letter by letter). A YAML syntax error (a tab in
the indentation...) is a ValueError naming the file and the line.

Merging manifests from different roots
--------------------------------------
Each manifest's paths are relative to its own data root. The corpus has one data root, the
deepest folder holding every source root (or ``data_root`` when given), and each path is
*prefixed* with its root's position under it (``nih/images/x.png``). The corpus CSV therefore
stays relative, and its sidecar records the common root relative to the CSV, as for any
manifest: move the CSV together with the data, or pass ``data_root`` when loading. Paths that
leave the common root (``../cache/...``) are written only when a source's sidecar allowed them
(``allow_paths_outside_root``, set by importers whose cache lies outside the source root); the
corpus sidecar then says so too.

Every row of every input manifest ends up either in the corpus or in its QC report with the
reason (class not taken from that source, missing file, lateral view, exact duplicate...).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from cxrlib.data import qc
from cxrlib.data.manifest import (
    ALLOW_OUTSIDE_KEY,
    LABELS,
    ManifestError,
    escapes_root,
    load_manifest,
    write_manifest,
)
from cxrlib.data.splits import PLAN_COLUMNS, check_split_plan, split_groups
from cxrlib.data.textfiles import read_text_file

_CONFIG_KEYS = {"name", "description", "frontal_only", "keep_unknown_projection",
                "near_duplicate_max_distance", "data_root", "sources"}
_SOURCE_KEYS = {"manifest", "labels"}


@dataclass(frozen=True)
class CorpusSource:
    """One manifest of a corpus: its CSV and the classes taken from it (``None``: all)."""

    manifest: Path
    labels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CorpusConfig:
    """A corpus recipe (see the module docstring); paths are absolute."""

    name: str
    sources: tuple[CorpusSource, ...]
    frontal_only: bool = True
    keep_unknown_projection: bool = True
    near_duplicate_max_distance: int = qc.NEAR_MAX_DISTANCE
    data_root: Path | None = None
    description: str = ""
    config_path: Path | None = None


@dataclass
class CorpusResult:
    """A composed corpus: the manifest (paths relative to ``data_root``), the QC report of
    every row left out or flagged, per-class/per-source counts, duplicate pairs and the split
    plan carried from the sources (``None`` if none or rejected, see
    :func:`carry_split_plans`)."""

    manifest: pd.DataFrame
    report: pd.DataFrame
    counts: pd.DataFrame
    data_root: Path
    duplicates: pd.DataFrame
    split_plan: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)


def companion_paths(csv_path: str | Path) -> dict[str, Path]:
    """Files that go with a manifest ``NAME.csv`` (importer or corpus output): the QC report
    ``NAME.qc.csv`` and the split plan ``NAME.split_plan.csv``; the sidecar ``NAME.meta.json``
    is :func:`cxrlib.data.manifest.sidecar_path`."""
    csv_path = Path(csv_path)
    return {"manifest": csv_path, "report": csv_path.with_name(csv_path.stem + ".qc.csv"),
            "split_plan": csv_path.with_name(csv_path.stem + ".split_plan.csv")}


class EmptyManifestError(ValueError):
    """An import or a corpus that kept no image; nothing was written."""


def refuse_empty(manifest: pd.DataFrame, report: pd.DataFrame, csv_path: str | Path,
                 what: str) -> None:
    """Stop before writing a manifest of 0 images over ``csv_path`` and its companions.

    Raises
    ------
    EmptyManifestError naming ``what`` (``"nih import"``), the file left as it was and the
    most frequent reasons of the report (:func:`cxrlib.data.qc.reason_summary`).
    """
    if len(manifest):
        return
    csv_path = Path(csv_path)
    kept = (f"nothing was written: the earlier manifest {csv_path} and its QC report are left "
            "as they were" if csv_path.is_file() else f"{csv_path} was not written")
    raise EmptyManifestError(f"{what} kept 0 images, so {kept}. Left out: "
                             f"{qc.reason_summary(report)}")


def _typed(data: dict, key: str, kind: type, default, path: Path):
    """``data[key]`` (``default`` when absent or null) if it is a ``kind``, else ValueError
    naming the file and the key (a bool is no int here, a string no bool)."""
    value = data.get(key)
    if value is None:
        return default
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        expected = {bool: "true or false", int: "an integer", str: "a text"}[kind]
        raise ValueError(f"{path}: '{key}' must be {expected}, got {value!r} "
                         f"({type(value).__name__})")
    return value


def _labels(entry: dict, k: int, path: Path) -> tuple[str, ...] | None:
    """The ``labels`` of ``sources[k]``: a list of the schema's labels, or ``None`` (all)."""
    labels = entry.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{path}: sources[{k}] 'labels' must be a list of labels such as "
                         f"[covid19], got {labels!r} ({type(labels).__name__})")
    wrong = [x for x in labels if x not in LABELS]
    if wrong:
        raise ValueError(f"{path}: sources[{k}] labels {wrong} are not in {list(LABELS)}")
    return tuple(labels)


def _read_yaml(path: Path):
    """The YAML document of ``path``; ValueError naming the file for a syntax error."""
    try:
        text, _ = read_text_file(path)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML (indent with spaces, not tabs): "
                         f"{exc}") from None


def load_corpus_config(path: str | Path) -> CorpusConfig:
    """Read and check a corpus config; manifest paths are resolved from the config's folder.

    Raises
    ------
    FileNotFoundError; ValueError naming the file and the key for a YAML syntax error, an
    unknown key, or a value of the wrong type (see the module docstring).
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"corpus config not found: {path}")
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a corpus config is a mapping with 'name' and 'sources'")
    unknown = sorted(set(data) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; allowed are {sorted(_CONFIG_KEYS)}")
    if not data.get("sources"):
        raise ValueError(f"{path}: 'sources' is missing or empty")
    if not isinstance(data["sources"], list):
        raise ValueError(f"{path}: 'sources' must be a list of entries with a 'manifest' key, "
                         f"got {type(data['sources']).__name__}")
    sources = []
    for k, entry in enumerate(data["sources"]):
        if not isinstance(entry, dict) or "manifest" not in entry:
            raise ValueError(f"{path}: sources[{k}] needs a 'manifest' key")
        bad = sorted(set(entry) - _SOURCE_KEYS)
        if bad:
            raise ValueError(f"{path}: sources[{k}] has unknown key(s) {bad}")
        if not isinstance(entry["manifest"], str) or not entry["manifest"].strip():
            raise ValueError(f"{path}: sources[{k}] 'manifest' must be a file name, got "
                             f"{entry['manifest']!r}")
        labels = _labels(entry, k, path)
        sources.append(CorpusSource((path.parent / entry["manifest"]).resolve(), labels))
    root = _typed(data, "data_root", str, None, path)
    return CorpusConfig(
        name=str(data.get("name") or path.stem),
        sources=tuple(sources),
        frontal_only=_typed(data, "frontal_only", bool, True, path),
        keep_unknown_projection=_typed(data, "keep_unknown_projection", bool, True, path),
        near_duplicate_max_distance=_typed(data, "near_duplicate_max_distance", int,
                                           qc.NEAR_MAX_DISTANCE, path),
        data_root=(path.parent / root).resolve() if root else None,
        description=str(data.get("description") or ""),
        config_path=path,
    )


def rebase_paths(manifest: pd.DataFrame, old_root: Path, new_root: Path) -> pd.DataFrame:
    """A copy with ``path`` and the mask paths re-expressed relative to ``new_root``."""
    out = manifest.copy()
    for col in ("path", "lung_mask_path", "lesion_mask_path"):
        out[col] = [Path(os.path.relpath(Path(old_root) / p, new_root)).as_posix()
                    if isinstance(p, str) else p for p in out[col]]
    return out


def _relative(path: Path, config_path: Path | None) -> str:
    """``path`` relative to the config's folder (as the config names it), else absolute."""
    if config_path is None:
        return str(path)
    return Path(os.path.relpath(path, config_path.parent)).as_posix()


def corpus_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per source (rows) and class (columns), with totals (``all``)."""
    table = pd.crosstab(manifest["source"], manifest["label"], margins=True, margins_name="all")
    return table.reindex(columns=[c for c in (*LABELS, "all") if c in table.columns])


def carry_split_plans(plans: list[pd.DataFrame], kept: pd.DataFrame
                      ) -> tuple[pd.DataFrame | None, str | None]:
    """The sources' shipped split plans restricted to the corpus's images, with the corpus's
    patient groups (:func:`cxrlib.data.splits.split_groups`).

    Returns
    -------
    (plan or ``None``, why it was rejected or ``None``). A plan is rejected when a patient group
    of the corpus (duplicates joined by QC) straddles its folds, or its repetitions no longer
    cover the same images.
    """
    if not plans:
        return None, None
    plan = pd.concat(plans, ignore_index=True)
    plan = plan[plan["image_id"].isin(kept["image_id"])].reset_index(drop=True)
    plan["group"] = plan["image_id"].map(dict(zip(kept["image_id"], split_groups(kept))))
    try:
        check_split_plan(plan)
    except ValueError as exc:
        return None, str(exc)
    return plan[list(PLAN_COLUMNS)], None


def compose_corpus(config: CorpusConfig, *, allow_missing: bool = False, progress: bool = False,
                   n_jobs: int = 1) -> CorpusResult:
    """Merge the config's manifests, keep the classes each source contributes, run QC.

    Parameters
    ----------
    config : the recipe (:func:`load_corpus_config`).
    allow_missing : skip (and record in ``meta['missing_sources']``) manifests that do not
        exist instead of failing.
    progress : progress bars while hashing images.
    n_jobs : worker processes for hashing.

    Raises
    ------
    FileNotFoundError for a missing manifest (unless ``allow_missing``); ManifestError for a
    manifest that breaks the schema (missing column, unknown label...), naming file, row and
    column.
    """
    parts, reports, plans, roots, missing = [], [], [], [], []
    outside_allowed = []  # sources whose sidecar lets paths leave their root (outside cache)
    for src in config.sources:
        if not src.manifest.is_file():
            if allow_missing:
                missing.append(src.manifest)
                continue
            raise FileNotFoundError(
                f"corpus {config.name!r}: manifest {src.manifest} not found; create it with "
                f"`python -m cxrlib import SOURCE ROOT -o {src.manifest}`")
        df = load_manifest(src.manifest, check_files=False)
        if df.attrs["meta"].get(ALLOW_OUTSIDE_KEY, False):
            outside_allowed.append(src.manifest.name)
        taken = df["label"].isin(src.labels) if src.labels is not None else df["label"].notna()
        why = f"is not taken from {src.manifest.name} by the corpus config (takes " \
              f"{list(src.labels or [])})"
        reports.append(qc.report_rows(df[~taken], [f"class {label} {why}"
                                                   for label in df.loc[~taken, "label"]]))
        parts.append((df[taken], Path(df.attrs["data_root"])))
        roots.append(Path(df.attrs["data_root"]))
        plan_file = companion_paths(src.manifest)["split_plan"]
        if plan_file.is_file():
            plans.append(pd.read_csv(plan_file, dtype={"image_id": str}))
    if not parts:
        raise ManifestError(f"corpus {config.name!r}: none of its manifests exists")
    data_root = config.data_root or Path(os.path.commonpath([str(r) for r in roots]))
    merged = pd.concat([rebase_paths(df, root, data_root) for df, root in parts],
                       ignore_index=True)
    repeated = merged["image_id"].duplicated(keep="first")
    reports.append(qc.report_rows(merged[repeated], "image_id already in the corpus from an "
                                                    "earlier manifest"))
    merged = merged[~repeated].reset_index(drop=True)
    kept, qc_report, pairs = qc.run_qc(
        merged, data_root, frontal=config.frontal_only,
        keep_unknown_projection=config.keep_unknown_projection,
        near_max_distance=config.near_duplicate_max_distance, progress=progress, n_jobs=n_jobs)
    report = qc.concat_reports(*reports, qc_report)
    split_plan, plan_note = carry_split_plans(plans, kept)
    counts = corpus_counts(kept) if len(kept) else pd.DataFrame()
    meta = {"corpus": config.name, "description": config.description,
            "config": config.config_path.name if config.config_path else None,
            "sources": [_relative(s.manifest, config.config_path) for s in config.sources],
            "missing_sources": [_relative(m, config.config_path) for m in missing],
            "frontal_only": config.frontal_only,
            "near_duplicate_max_distance": config.near_duplicate_max_distance,
            "n_images": int(len(kept)), "n_dropped": int((report["action"] == "dropped").sum())}
    if plan_note:
        meta["split_plan_rejected"] = plan_note
    _allow_outside(meta, kept, outside_allowed)
    return CorpusResult(kept, report, counts, data_root, pairs, split_plan, meta)


def _allow_outside(meta: dict, kept: pd.DataFrame, allowed_by: list[str]) -> None:
    """Set the sidecar's ``allow_paths_outside_root`` (and name the sources that allowed it)
    when corpus paths leave the common root and a source's sidecar allowed that (its cache
    lies outside its root). Otherwise such paths (a ``data_root`` that does not hold every
    source) stay an error, naming the row, at :func:`write_corpus`."""
    escaping = any(isinstance(p, str) and escapes_root(p)
                   for col in ("path", "lung_mask_path", "lesion_mask_path") if col in kept
                   for p in kept[col])
    if escaping and allowed_by:
        meta[ALLOW_OUTSIDE_KEY] = True
        meta["paths_outside_root_from"] = allowed_by


def write_corpus(result: CorpusResult, csv_path: str | Path) -> dict[str, Path]:
    """Write the corpus manifest (data root: the common root), its QC report ``NAME.qc.csv``
    and, when sources carried one, its split plan ``NAME.split_plan.csv``.

    Raises :class:`EmptyManifestError` (nothing written) when the corpus kept no image."""
    paths = companion_paths(csv_path)
    refuse_empty(result.manifest, result.report, paths["manifest"],
                 f"corpus {result.meta.get('corpus', '')}".strip())
    write_manifest(result.manifest, paths["manifest"], data_root=result.data_root,
                   meta=result.meta)
    result.report.to_csv(paths["report"], index=False)
    written = {"manifest": paths["manifest"], "report": paths["report"]}
    if result.split_plan is not None:
        result.split_plan.to_csv(paths["split_plan"], index=False)
        written["split_plan"] = paths["split_plan"]
    return written
