"""RSNA Pneumonia Detection Challenge: label tables and DICOM images.

Layout read::

    ROOT/stage_2_train_labels.csv          patientId,x,y,width,height,Target (one row per box)
    ROOT/stage_2_detailed_class_info.csv   patientId,class (optional)
    ROOT/stage_2_train_images/<patientId>.dcm   (else found by file name anywhere under ROOT)

Mapping
-------
- label from ``class``: ``Normal`` -> control, ``Lung Opacity`` -> pneumonia,
  ``No Lung Opacity / Not Normal`` dropped (abnormal, but neither class of the study). Without
  the class table only ``Target = 1`` (pneumonia) rows can be labelled; ``Target = 0`` rows are
  dropped since "normal" and "not normal" cannot be told apart. A ``Target`` that contradicts
  the class drops the image;
- sex, age, projection (``ViewPosition``), sensor and study date from the allow-listed DICOM
  tags; the DICOM is converted to a cached 16-bit PNG;
- lesion mask: the union of the opacity boxes, written as a 0/255 PNG in the cache
  (``lesion_mask_path``), for pneumonia images;
- patient: ``patientId`` (one image per id in this release).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrlib.data.dicom import DicomError, cached_png_path, read_dicom_header
from cxrlib.data.importers.common import (
    DEFAULT_CACHE_DIRNAME,
    ImportOptions,
    ImportResult,
    file_index,
    finish_import,
    read_table,
    relpath,
    text_encodings,
)

SOURCE = "rsna"
CLASSES = {"Normal": "control", "Lung Opacity": "pneumonia"}


def box_mask(boxes: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """0/255 uint8 mask (rows, columns) of the union of ``boxes`` (n, 4: x, y, width, height,
    pixels; clipped to the image)."""
    mask = np.zeros((rows, columns), dtype=np.uint8)
    for x, y, w, h in np.asarray(boxes, dtype=float).reshape(-1, 4):
        x0, y0 = max(int(round(x)), 0), max(int(round(y)), 0)
        x1, y1 = min(int(round(x + w)), columns), min(int(round(y + h)), rows)
        mask[y0:y1, x0:x1] = 255
    return mask


def _write_box_mask(boxes: np.ndarray, rows: int, columns: int, cache_dir: Path) -> Path:
    key = hashlib.sha256(f"{boxes.round(2).tolist()}|{rows}x{columns}".encode()).hexdigest()
    out = cached_png_path(cache_dir, key, kind="rsna_boxes")
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(box_mask(boxes, rows, columns)).save(out)
    return out


def import_rsna(root: str | Path, options: ImportOptions | None = None) -> ImportResult:
    """Import the RSNA pneumonia challenge from ``root`` (see the module docstring)."""
    options = options or ImportOptions()
    root = Path(root).resolve()
    cache_dir = Path(options.cache_dir) if options.cache_dir else root / DEFAULT_CACHE_DIRNAME
    labels = read_table(root / "stage_2_train_labels.csv", "rsna",
                        required=("patientId", "x", "y", "width", "height", "Target"))
    detail_file = root / "stage_2_detailed_class_info.csv"
    classes, tables = {}, [labels]
    if detail_file.is_file():
        detail = read_table(detail_file, "rsna", required=("patientId", "class"))
        tables.append(detail)
        classes = dict(zip(detail["patientId"].str.strip(), detail["class"].str.strip()))
    files = file_index(root)
    records = []
    for pid, group in labels.groupby(labels["patientId"].str.strip(), sort=False):
        rel = files.get(f"{pid}.dcm", files.get(pid, f"stage_2_train_images/{pid}.dcm"))
        target = int(pd.to_numeric(group["Target"], errors="coerce").fillna(0).max())
        rec = {"image_id": f"{SOURCE}/{pid}", "path": rel, "patient_raw": pid}
        cls = classes.get(pid)
        if cls is None:
            rec["label"] = "pneumonia" if target == 1 else None
            if target != 1:
                rec["drop_reason"] = ("Target 0 without stage_2_detailed_class_info.csv: "
                                      "normal or not-normal unknown")
        elif cls not in CLASSES:
            rec["drop_reason"] = f"class {cls!r} is neither control nor pneumonia"
        elif (CLASSES[cls] == "pneumonia") != (target == 1):
            rec["drop_reason"] = f"Target {target} contradicts class {cls!r}"
        else:
            rec["label"] = CLASSES[cls]
        boxes = group[["x", "y", "width", "height"]].apply(pd.to_numeric, errors="coerce")
        boxes = boxes.dropna().to_numpy()
        if rec.get("label") == "pneumonia" and len(boxes) and (root / rel).is_file():
            try:
                header = read_dicom_header(root / rel)
            except DicomError:
                header = None  # reported when the image itself is converted
            if header is not None and header.rows and header.columns:
                rec["lesion_mask_path"] = relpath(
                    _write_box_mask(boxes, header.rows, header.columns, cache_dir), root)
        records.append(rec)
    return finish_import(records, root, SOURCE, options, scan=(".",),
                         meta={"importer": "rsna", "class_table": bool(classes),
                               "metadata_encodings": text_encodings(*tables)})
