"""Shared fixtures: a tiny hand-made cohort written by the tests themselves."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

# pytest-xdist runs one worker per core; more torch threads per worker only thrash the cores.
torch.set_num_threads(1)


def write_tiny_cohort(root, n_patients=12, images_per_patient=2, size=32, seed=0) -> pd.DataFrame:
    """Write ``n_patients * images_per_patient`` small PNGs (8- and 16-bit) with lung masks and
    return their manifest (paths relative to ``root``)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "mask").mkdir(parents=True, exist_ok=True)
    labels = ["control", "pneumonia", "covid19"]
    sources = {"control": "SrcA", "pneumonia": "SrcB", "covid19": "SrcC"}
    rows = []
    for p in range(n_patients):
        label = labels[p % 3]
        for k in range(images_per_patient):
            iid = f"p{p:02d}_{k}"
            img = rng.random((size, size))
            if (p + k) % 2:
                Image.fromarray((img * 65535).astype(np.uint16)).save(root / "img" / f"{iid}.png")
            else:
                Image.fromarray((img * 255).astype(np.uint8)).save(root / "img" / f"{iid}.png")
            mask = np.zeros((size, size), np.uint8)
            mask[8:24, 4:14] = 255
            mask[8:24, 18:28] = 255
            Image.fromarray(mask).save(root / "mask" / f"{iid}.png")
            rows.append({
                "image_id": iid, "path": f"img/{iid}.png", "patient_id": f"P{p:02d}",
                "study_date": f"2020-0{1 + k}-15", "source": sources[label], "label": label,
                "severity": "mild" if label == "covid19" else "",
                "sex": "MF"[p % 2], "age": str(30 + p), "projection": "AP" if p % 4 else "PA",
                "sensor": "CR" if p % 3 else "DX", "lung_mask_path": f"mask/{iid}.png",
                "lesion_mask_path": "",
            })
    return pd.DataFrame(rows)


@pytest.fixture
def tiny_cohort(tmp_path):
    """(manifest DataFrame, data root) of a 24-image, 12-patient, 3-class cohort."""
    df = write_tiny_cohort(tmp_path)
    return df, tmp_path


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """(RunRecord, run folder) of one smoke-profile run of the whole study on every synthetic
    cohort.

    Run once per test session even under pytest-xdist: the first worker to take the lock runs the
    study into the session's shared temporary folder and the others wait and read it. A failed run
    is recorded too, so every worker fails the same way instead of running it again.

    With the environment variable ``CXR_SMOKE_RUN`` set to the folder of an existing smoke run
    (``python -m cxrlib run --profile smoke --out FOLDER``), that run is read instead: no study
    is run, e.g. to develop the notebook tests against one run.
    """
    import json
    import os
    from pathlib import Path

    from filelock import FileLock

    from cxrlib.runner import RunRecord, run_study

    existing = os.environ.get("CXR_SMOKE_RUN")
    if existing:
        return RunRecord.from_json(Path(existing) / "run.json"), Path(existing)
    # the session's folder: under pytest-xdist the parent of every worker's own; without xdist
    # the basetemp itself (its parent holds every session's folders, and a run found there may
    # be hours old, made by other code)
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out, data, done = shared / "smoke_run", shared / "smoke_data", shared / "smoke_run.done.json"
    with FileLock(str(shared / "smoke_run.lock")):
        if not done.exists():
            mp = pytest.MonkeyPatch()
            mp.setenv("CXR_DATA_DIR", str(data))
            # the notebooks' kernels share the cores with the other xdist worker: one thread each,
            # as for the workers themselves (two-thread torch on a busy core runs many times slower)
            mp.setenv("OMP_NUM_THREADS", "1")
            mp.setenv("MKL_NUM_THREADS", "1")
            error = None
            try:
                run_study("smoke", out_dir=out, log=lambda *a: None)
            except Exception as exc:  # noqa: BLE001 - re-raised in every worker below
                error = f"{type(exc).__name__}: {exc}"
            finally:
                mp.undo()
            done.write_text(json.dumps({"error": error}))
    error = json.loads(done.read_text())["error"]
    if error:
        pytest.fail(f"the smoke study failed: {error}")
    return RunRecord.from_json(out / "run.json"), out


def write_png(path, seed, bits=8, shape=(40, 32)):
    """Write a noise PNG (8- or 16-bit gray, ``shape`` (H, W)) drawn from ``seed``, creating the
    parent folders; return ``path``. Shared by the importer and corpus tests."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).random(shape)
    array = (noise * 65535).astype(np.uint16) if bits == 16 else (noise * 255).astype(np.uint8)
    Image.fromarray(array).save(path)
    return path


def write_bare_dicom(path, seed):
    """Write a DICOM data set without preamble and file meta, as some older archives hold it
    (a 32x32 noise image drawn from ``seed``, 12 bits stored, Modality DX); return ``path``."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from cxrlib.data.dicom import write_dicom

    pixels = (np.random.default_rng(seed).random((32, 32)) * 4095).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    part10 = write_dicom(pixels, path.with_suffix(".tmp.dcm"), {"Modality": "DX"}, bits_stored=12)
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    write_dataset(out, pydicom.dcmread(part10))
    path.write_bytes(out.getvalue())
    part10.unlink()
    return path
