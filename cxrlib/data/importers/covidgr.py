"""COVIDGR-1.0 (Granada): ``N/`` and ``P/`` folders of JPEGs, ``severity.csv``, shipped folds.

Layout read::

    ROOT/N/*.jpg  ROOT/P/*.jpg
    ROOT/severity.csv                     Name,Severity  (NORMAL-PCR+, MILD, MODERATE, SEVERE)
    ROOT/COVIDGR1.05fcv{1..5}/partition{0..4}/{train,val,test}/{N,P}/*.jpg   (optional; also
                                          looked for beside ROOT)

Mapping
-------
- label: ``P`` -> covid19 (RT-PCR positive), ``N`` -> control (RT-PCR negative);
- severity: ``NORMAL-PCR+`` -> normal_pcr_pos, ``MILD``/``MODERATE``/``SEVERE`` -> mild/
  moderate/severe, matched on ``Name`` (with or without the extension); empty for N;
- projection: PA for every image (the release is PA only, stated by its authors);
- sex, age, sensor: empty (not given per image);
- every file under ``N/`` and ``P/`` is a candidate (images told by content; other files are
  reported), and so is every ``severity.csv`` row: one naming no file is reported as
  "image file not found: P/<Name>";
- patient: the release has no patient id; each image counts as its own patient (the paper
  describes one image per patient);
- folds: the shipped 5 x 5-fold folders become a split plan (``split_plan`` of the result)
  in the format of :mod:`cxrlib.data.splits` (``image_id``, ``group``, ``repetition`` 0-4, ``fold``
  = the partition 0-4 whose ``test`` folder holds the image). The shipped ``val`` folders are not
  carried: :func:`cxrlib.data.splits.fold_split` draws validation images from the training folds by
  patient group. A repetition whose test folders do not hold every imported image exactly once
  is left out (``meta['split_plan_skipped']`` says why).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cxrlib.data.importers.common import (
    IMAGE_SUFFIXES,
    ImportOptions,
    ImportResult,
    finish_import,
    read_table,
    text_encodings,
    walk_files,
)
from cxrlib.data.splits import PLAN_COLUMNS, check_split_plan, split_groups

SOURCE = "covidgr"
SEVERITIES = {"NORMAL-PCR+": "normal_pcr_pos", "MILD": "mild", "MODERATE": "moderate",
              "SEVERE": "severe"}
_REPETITION = re.compile(r"5fcv(\d+)$", re.IGNORECASE)
_PARTITION = re.compile(r"partition(\d+)$", re.IGNORECASE)


def read_shipped_folds(folds_roots: list[Path]) -> pd.DataFrame:
    """The shipped fold folders as a long table: ``name`` (``N/x.jpg``), ``repetition`` (from
    0, in the order of the folder number), ``fold``, ``subset`` (train/val/test). The first of
    ``folds_roots`` that holds ``COVIDGR*5fcv*`` folders is used."""
    rows = []
    for folds_root in folds_roots:
        for rep_dir in sorted(folds_root.glob("COVIDGR*5fcv*")):
            rep = _REPETITION.search(rep_dir.name)
            if not rep or not rep_dir.is_dir():
                continue
            for part_dir in sorted(rep_dir.glob("partition*")):
                part = _PARTITION.search(part_dir.name)
                if not part:
                    continue
                for subset in ("train", "val", "test"):
                    for cls in ("N", "P"):
                        for f in sorted((part_dir / subset / cls).glob("*")):
                            if f.suffix.lower() in IMAGE_SUFFIXES:
                                rows.append({"name": f"{cls}/{f.name}",
                                             "repetition": int(rep.group(1)) - 1,
                                             "fold": int(part.group(1)), "subset": subset})
        if rows:
            break
    return pd.DataFrame(rows, columns=["name", "repetition", "fold", "subset"])


def shipped_split_plan(folds: pd.DataFrame, manifest: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Split plan (:data:`cxrlib.data.splits.PLAN_COLUMNS`) from the shipped folds' test folders.

    Returns
    -------
    (plan, notes): repetitions whose test folders hold every manifest image exactly once;
    ``notes`` counts fold files matching no imported image and says why a repetition was
    skipped.
    """
    test = folds[folds["subset"] == "test"].copy()
    test["image_id"] = SOURCE + "/" + test["name"]
    known = set(manifest["image_id"])
    notes = {"split_plan_unmatched": int((~test["image_id"].isin(known)).sum())}
    test = test[test["image_id"].isin(known)]
    group_of = dict(zip(manifest["image_id"], split_groups(manifest)))
    plans, skipped = [], {}
    for rep, part in test.groupby("repetition"):
        if part["image_id"].duplicated().any() or len(part) != len(known):
            skipped[int(rep)] = (f"test folders hold {part['image_id'].nunique()} of "
                                 f"{len(known)} images"
                                 + (", some twice" if part["image_id"].duplicated().any() else ""))
            continue
        plans.append(pd.DataFrame({"image_id": part["image_id"].to_numpy(),
                                   "group": part["image_id"].map(group_of).to_numpy(),
                                   "repetition": len(plans), "fold": part["fold"].to_numpy()}))
    if skipped:
        notes["split_plan_skipped"] = skipped
    if not plans:
        return pd.DataFrame(columns=list(PLAN_COLUMNS)), notes
    plan = pd.concat(plans, ignore_index=True).sort_values(["repetition", "image_id"])
    return plan.reset_index(drop=True)[list(PLAN_COLUMNS)], notes


def import_covidgr(root: str | Path, options: ImportOptions | None = None) -> ImportResult:
    """Import COVIDGR-1.0 from ``root`` (see the module docstring)."""
    options = options or ImportOptions()
    root = Path(root).resolve()
    if not (root / "N").is_dir() and not (root / "P").is_dir():
        raise FileNotFoundError(f"covidgr: neither N/ nor P/ folder under {root}")
    severity_file = root / "severity.csv"
    severity, meta = {}, {"importer": "covidgr"}
    if severity_file.is_file():
        table = read_table(severity_file, "covidgr", required=("Name", "Severity"))
        meta["metadata_encodings"] = text_encodings(table)
        for name, value in zip(table["Name"], table["Severity"]):
            if pd.notna(name):
                severity[str(name).strip()] = value
    records, used = [], set()
    for cls, label in (("N", "control"), ("P", "covid19")):
        for f in walk_files(root / cls):
            rel = f.relative_to(root).as_posix()
            rec = {"image_id": f"{SOURCE}/{rel}", "path": rel, "patient_raw": rel,
                   "label": label, "projection": "PA"}
            name = f.name if f.name in severity else f.stem
            used.add(name)
            raw = severity.get(name)
            if cls == "P" and raw is not None and pd.notna(raw):
                rec["severity"] = SEVERITIES.get(str(raw).strip().upper())
            records.append(rec)
    for name in sorted(set(severity) - used):  # rows naming no file: reported, not lost
        rel = f"P/{name}"
        records.append({"image_id": f"{SOURCE}/{rel}", "path": rel, "patient_raw": rel,
                        "label": "covid19", "projection": "PA"})
    result = finish_import(records, root, SOURCE, options, meta=meta)
    folds = read_shipped_folds([root, root.parent])
    if len(folds) and len(result.manifest):
        plan, notes = shipped_split_plan(folds, result.manifest)
        result.meta.update(notes)
        try:
            check_split_plan(plan)
        except ValueError as exc:  # e.g. duplicates grouped across shipped folds
            result.meta["split_plan_rejected"] = str(exc)
        else:
            result.split_plan = plan if len(plan) else None
    return result
