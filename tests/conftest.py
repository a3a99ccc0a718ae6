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
