"""QC: perceptual hashes, duplicate pairs, patient groups, frontal filter, reports."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from cxrlib.data import qc
def _noise(seed: int, shape=(48, 40)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


def _manifest(rows):
    cols = ["image_id", "path", "patient_id", "source", "label", "projection"]
    return pd.DataFrame(rows, columns=cols)


def _smooth(seed: int, shape=(256, 192)) -> np.ndarray:
    """Radiograph-like smooth image: low-pass filtered noise in [0, 1]."""
    image = gaussian_filter(_noise(seed, shape), sigma=6)
    return (image - image.min()) / (image.max() - image.min())


def test_perceptual_hash_is_stable_under_brightness_and_resampling():
    base = _smooth(0)
    h = qc.perceptual_hash(base)
    assert h.shape == (qc.PHASH_SIZE**2,) and h.dtype == bool
    brighter = base * 0.8 + 0.1
    halved = np.asarray(Image.fromarray(base.astype(np.float32)).resize((96, 128)))
    assert (qc.perceptual_hash(brighter) != h).sum() == 0  # linear change: same DCT signs
    assert (qc.perceptual_hash(halved) != h).sum() <= qc.NEAR_MAX_DISTANCE
    assert (qc.perceptual_hash(_smooth(1)) != h).sum() > 3 * qc.NEAR_MAX_DISTANCE


def test_perceptual_hash_rejects_colour():
    with pytest.raises(ValueError, match="2-D grayscale"):
        qc.perceptual_hash(np.zeros((8, 8, 3)))


def test_hex_roundtrip():
    bits = np.random.default_rng(0).random(256) > 0.5
    text = qc.bits_to_hex(bits)
    assert len(text) == 64
    np.testing.assert_array_equal(qc.hex_to_bits([text])[0], bits)


def test_near_duplicate_pairs_hand_example():
    bits = np.zeros((4, 16), dtype=bool)
    bits[1, :2] = True  # 2 bits from row 0
    bits[2, :5] = True  # 5 from row 0, 3 from row 1
    bits[3, :] = True  # 16 from row 0
    pairs = qc.near_duplicate_pairs(bits, max_distance=3, chunk_rows=2)
    assert sorted(map(tuple, pairs.to_numpy().tolist())) == [(0, 1, 2), (1, 2, 3)]


def test_duplicates_groups_and_exact_drop():
    df = _manifest([
        ("a/1", "1.png", "p1", "a", "covid19", "PA"),
        ("b/1", "1b.png", "q7", "b", "covid19", "PA"),  # byte copy of a/1 in another source
        ("a/2", "2.png", "p2", "a", "control", "PA"),  # near duplicate of a/1
        ("a/3", "3.png", "p2", "a", "control", "AP"),  # same patient as a/2
        ("a/4", "4.png", "p4", "a", "control", "PA"),  # unrelated
    ])
    h1, h4 = np.zeros(256, bool), np.ones(256, bool)
    h2 = h1.copy()
    h2[:5] = True
    h3 = np.r_[np.ones(128, bool), np.zeros(128, bool)]
    df["qc_sha256"] = ["s1", "s1", "s2", "s3", "s4"]
    df["qc_phash"] = [qc.bits_to_hex(h) for h in (h1, h1, h2, h3, h4)]
    pairs = qc.find_duplicates(df)
    assert pairs[["image_id_a", "image_id_b", "kind", "distance"]].values.tolist() == [
        ["a/1", "b/1", "exact", 0], ["a/1", "a/2", "near", 5], ["b/1", "a/2", "near", 5]]
    groups = qc.patient_groups(df, pairs)
    assert groups.tolist() == ["p1", "p1", "p1", "p1", "p4"]
    kept, report = qc.drop_exact_duplicates(df, pairs)
    assert kept["image_id"].tolist() == ["a/1", "a/2", "a/3", "a/4"]
    assert report["reason"].tolist() == ["exact duplicate of a/1"]


def test_exact_duplicates_with_conflicting_labels_are_all_dropped():
    df = _manifest([("a/1", "1.png", "p1", "a", "covid19", "PA"),
                    ("b/1", "1.png", "p9", "b", "control", "PA")])
    df["qc_sha256"] = ["s", "s"]
    df["qc_phash"] = [qc.bits_to_hex(np.zeros(256, bool))] * 2
    kept, report = qc.drop_exact_duplicates(df, qc.find_duplicates(df))
    assert kept.empty
    assert report["reason"].str.contains("conflicting labels").all()


def test_find_duplicates_needs_hashes():
    with pytest.raises(ValueError, match="add_image_hashes"):
        qc.find_duplicates(_manifest([("a", "a.png", "p", "s", "control", "PA")]))


def test_frontal_only():
    df = _manifest([("1", "1", "p", "s", "control", "PA"), ("2", "2", "p", "s", "control", "LAT"),
                    ("3", "3", "p", "s", "control", None), ("4", "4", "p", "s", "control", "AP")])
    kept, report = qc.frontal_only(df)
    assert kept["image_id"].tolist() == ["1", "3", "4"]
    assert report[["image_id", "action"]].values.tolist() == [["2", "dropped"], ["3", "flagged"]]
    kept, report = qc.frontal_only(df, keep_unknown=False)
    assert kept["image_id"].tolist() == ["1", "4"]
    assert (report["action"] == "dropped").sum() == 2


def test_run_qc_keeps_or_reports_every_row(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    img16 = (_noise(0) * 65535).astype(np.uint16)
    Image.fromarray(img16).save(root / "a16.png")
    Image.fromarray((_noise(1) * 255).astype(np.uint8)).save(root / "b8.jpg", quality=95)
    (root / "copy.png").write_bytes((root / "a16.png").read_bytes())
    Image.fromarray((_noise(3) * 255).astype(np.uint8)).save(root / "lat.png")
    df = _manifest([
        ("x/a", "a16.png", "p1", "x", "covid19", "PA"),
        ("x/b", "b8.jpg", "p2", "x", "control", "AP"),
        ("y/a", "copy.png", "q1", "y", "covid19", "PA"),
        ("x/l", "lat.png", "p3", "x", "control", "LAT"),
        ("x/m", "missing.png", "p4", "x", "control", "PA"),
    ])
    kept, report, pairs = qc.run_qc(df, root)
    assert kept["image_id"].tolist() == ["x/a", "x/b"]
    dropped = report[report["action"] == "dropped"].set_index("image_id")["reason"]
    assert set(dropped.index) == {"y/a", "x/l", "x/m"}
    assert dropped["y/a"] == "exact duplicate of x/a"
    assert dropped["x/l"].startswith("not a frontal view")
    assert dropped["x/m"].startswith("path file not found")
    assert len(kept) + len(dropped) == len(df)
    assert kept["qc_patient_group"].tolist() == ["p1", "p2"]
    assert kept["qc_sha256"].str.len().eq(64).all()
