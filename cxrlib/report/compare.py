"""Explain the differences between two run folders: ``python -m cxrlib compare RUN_A RUN_B``.

:func:`provenance_differences` lists what differs in the two ``run.json`` files (settings,
parameters, profile fields, commit, manifests, packages, machine), one row per difference;
:func:`table_differences` compares every table CSV (``<cohort>/tables/*.csv``) of the two
folders, with the largest absolute difference of a numeric cell per table;
:func:`compare_runs` does both and :func:`format_comparison` writes them as text.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

PROVENANCE_COLUMNS = ["section", "name", "run_a", "run_b"]
TABLE_COLUMNS = ["cohort", "table", "status", "max_abs_diff", "note"]


def load_run(folder: str | Path) -> dict:
    """The ``run.json`` of a run folder (:class:`cxrlib.runner.RunRecord` as JSON).

    Raises FileNotFoundError naming the folder when it has none.
    """
    path = Path(folder) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a run folder: it has no run.json")
    return json.loads(path.read_text(encoding="utf-8"))


def _packages(record: dict) -> dict[str, str]:
    out = {}
    for entry in (record.get("provenance") or {}).get("packages") or []:
        name, _, version = entry.partition("==")
        out[name.lower()] = version
    return out


def _profile_fields(record: dict) -> dict:
    """The profile fields as used; for a record older than ``profile_fields``, the profile
    named by the record with its overrides."""
    if record.get("profile_fields"):
        return record["profile_fields"]
    try:
        from cxrlib.profiles import get_profile

        return get_profile(record["profile"], record.get("profile_overrides") or {}).as_dict()
    except (KeyError, ValueError, TypeError):
        return dict(record.get("profile_overrides") or {})


def _manifests(record: dict) -> dict:
    """cohort.what -> value of the manifests' provenance (hashes, image counts)."""
    out = {}
    found = (record.get("provenance") or {}).get("manifests") or {}
    for cohort, m in found.items():
        for key in ("sha256", "sidecar_sha256", "images", "images_per_source"):
            if key in m:
                out[f"{cohort}.{key}"] = m[key]
    for cohort, digest in (record.get("manifest_hashes") or {}).items():
        out.setdefault(f"{cohort}.manifest_hash", digest)
    return out


def _system(record: dict) -> dict:
    system = dict((record.get("provenance") or {}).get("system") or {})
    system.pop("executable", None)
    gpus = system.pop("gpus", None) or []
    system["gpus"] = "; ".join(f"{g.get('name')} (driver {g.get('driver')})" for g in gpus)
    return system


_MISSING = "(not set)"


def _diff(section: str, a: dict, b: dict, rows: list) -> None:
    for name in sorted(set(a) | set(b), key=str):
        va, vb = a.get(name, _MISSING), b.get(name, _MISSING)
        if va != vb:
            rows.append({"section": section, "name": str(name), "run_a": va, "run_b": vb})


def provenance_differences(a: dict, b: dict) -> pd.DataFrame:
    """One row per difference between two ``run.json`` records (:func:`load_run`): section
    (``settings``, ``parameter``, ``profile``, ``commit``, ``manifest``, ``package``,
    ``system``), name, and the values in run A and run B (``(not set)`` where one has none)."""
    rows: list[dict] = []
    settings = ("profile", "seed", "manifest", "cohorts", "settings_hash")
    _diff("settings", {k: a.get(k) for k in settings}, {k: b.get(k) for k in settings}, rows)
    _diff("parameter", a.get("parameters") or {}, b.get("parameters") or {}, rows)
    _diff("profile", _profile_fields(a), _profile_fields(b), rows)
    git_a = (a.get("provenance") or {}).get("git") or {}
    git_b = (b.get("provenance") or {}).get("git") or {}
    _diff("commit", {k: git_a.get(k) for k in ("commit", "dirty")},
          {k: git_b.get(k) for k in ("commit", "dirty")}, rows)
    if not git_a and not git_b:  # records older than the provenance: the short commit
        _diff("commit", {"git_commit": (a.get("versions") or {}).get("git_commit")},
              {"git_commit": (b.get("versions") or {}).get("git_commit")}, rows)
    _diff("manifest", _manifests(a), _manifests(b), rows)
    _diff("package", _packages(a), _packages(b), rows)
    _diff("system", _system(a), _system(b), rows)
    return pd.DataFrame(rows, columns=PROVENANCE_COLUMNS)


def _tables(folder: Path) -> dict[tuple[str, str], Path]:
    """(cohort, table name) -> CSV of every ``<cohort>/tables/*.csv`` of a run folder."""
    return {(p.parent.parent.name, p.stem): p
            for p in sorted(Path(folder).glob("*/tables/*.csv"))}


def compare_tables(path_a: str | Path, path_b: str | Path) -> tuple[bool, float, str]:
    """(differ, largest absolute difference of a numeric cell, note) of two table CSVs.

    Two tables with the same shape and columns are compared cell by cell: numeric columns by
    value (NaN equals NaN), the others as text; the largest difference is NaN when no numeric
    cell differs or the shapes differ (the note then says how).
    """
    if Path(path_a).read_bytes() == Path(path_b).read_bytes():
        return False, 0.0, ""
    ta, tb = pd.read_csv(path_a), pd.read_csv(path_b)
    if list(ta.columns) != list(tb.columns):
        only_a = [c for c in ta.columns if c not in tb.columns]
        only_b = [c for c in tb.columns if c not in ta.columns]
        return True, float("nan"), (f"columns differ (only in A: {only_a}, only in B: "
                                    f"{only_b})" if only_a or only_b else "column order differs")
    if ta.shape != tb.shape:
        return True, float("nan"), f"{len(ta)} rows in A, {len(tb)} in B"
    largest, changed_cols = float("nan"), []
    for col in ta.columns:
        xa, xb = ta[col], tb[col]
        if pd.api.types.is_numeric_dtype(xa) and pd.api.types.is_numeric_dtype(xb):
            va, vb = xa.to_numpy(dtype=float), xb.to_numpy(dtype=float)
            both_nan = np.isnan(va) & np.isnan(vb)
            diff = np.where(both_nan, 0.0, np.abs(va - vb))
            diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only
            if diff.size and diff.max() > 0:
                changed_cols.append(col)
                largest = float(diff.max()) if np.isnan(largest) else max(largest,
                                                                          float(diff.max()))
        elif not xa.astype(str).equals(xb.astype(str)):
            changed_cols.append(col)
    if not changed_cols:
        return False, 0.0, "same values, different formatting"
    return True, largest, "columns that differ: " + ", ".join(map(str, changed_cols))


def table_differences(folder_a: str | Path, folder_b: str | Path) -> pd.DataFrame:
    """One row per table CSV of either run folder: cohort, table, status (``same``,
    ``differs``, ``only in A``, ``only in B``), the largest absolute numeric difference (0 for
    ``same``, NaN where not comparable) and a note."""
    ta, tb = _tables(Path(folder_a)), _tables(Path(folder_b))
    rows = []
    for key in sorted(set(ta) | set(tb)):
        cohort, name = key
        if key not in tb:
            rows.append({"cohort": cohort, "table": name, "status": "only in A",
                         "max_abs_diff": float("nan"), "note": ""})
        elif key not in ta:
            rows.append({"cohort": cohort, "table": name, "status": "only in B",
                         "max_abs_diff": float("nan"), "note": ""})
        else:
            differ, largest, note = compare_tables(ta[key], tb[key])
            rows.append({"cohort": cohort, "table": name,
                         "status": "differs" if differ else "same", "max_abs_diff": largest,
                         "note": note})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def compare_runs(folder_a: str | Path, folder_b: str | Path) -> dict:
    """``{"provenance": provenance_differences, "tables": table_differences}`` of two run
    folders."""
    return {"provenance": provenance_differences(load_run(folder_a), load_run(folder_b)),
            "tables": table_differences(folder_a, folder_b)}


def _short(value, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[:width - 3] + "..."


def format_comparison(result: dict, folder_a: str | Path = "A", folder_b: str | Path = "B"
                      ) -> str:
    """The result of :func:`compare_runs` as text for the terminal."""
    prov, tables = result["provenance"], result["tables"]
    lines = [f"A: {folder_a}", f"B: {folder_b}", ""]
    if prov.empty:
        lines.append("Provenance: no differences.")
    else:
        lines.append(f"Provenance: {len(prov)} difference(s)")
        for section, group in prov.groupby("section", sort=False):
            lines.append(f"  {section}:")
            lines += [f"    {r.name}: {_short(r.run_a)} in A, {_short(r.run_b)} in B"
                      for r in group.itertuples()]
    lines.append("")
    if tables.empty:
        lines.append("Tables: none in either run.")
        return "\n".join(lines)
    differ = tables[tables["status"] != "same"]
    lines.append(f"Tables: {len(tables)} in all, {int((tables['status'] == 'same').sum())} the "
                 f"same, {len(differ)} not")
    for r in differ.itertuples():
        largest = "" if np.isnan(r.max_abs_diff) else f", largest difference {r.max_abs_diff:.6g}"
        note = f" ({r.note})" if r.note else ""
        lines.append(f"  {r.cohort}/tables/{r.table}.csv: {r.status}{largest}{note}")
    return "\n".join(lines)
