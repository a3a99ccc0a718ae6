"""The synthetic cohort's DICOM share: which images, their tags, the round trip through
cxrlib.data.dicom, and the fake identifying tags that must never leave the .dcm files."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pydicom
import pytest

from cxrlib.data.dicom import read_dicom_header, write_dicom
from cxrlib.data.images import image_bit_depth, read_image
from cxrlib.data.manifest import load_manifest, read_sidecar
from cxrlib.profiles import get_profile
from cxrlib.data.synthetic import default_cohort, generate_cohort
from cxrlib.data.synthetic.cohort import (
    DEFAULT_DICOM_SHARE, FAKE_INSTITUTION, dicom_encoding, dicom_plan, fake_identifiers,
)

SIZE = 48
#: Largest |DICOM - PNG| of a 16-bit image stored in 12 bits under a VOI LUT (0.5 / 4095 of
#: rounding to 12 bits, plus one 16-bit step of the LUT); 8-bit images round-trip exactly.
TOL_16BIT_LUT = 0.5 / 4095 + 1 / 65535
KW = dict(preset="arias", n_images=16, size=SIZE, seed=1, shortcut=0.0, progress=False)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """The same 16 cases written all as PNG, and with half of them as DICOM."""
    root = tmp_path_factory.mktemp("dicom_share")
    png = generate_cohort(root / "png", **KW)
    mixed = generate_cohort(root / "mixed", dicom_share=0.5, **KW)
    return png, root / "png", mixed, root / "mixed"


def _fake_strings(manifest, seed):
    out = {FAKE_INSTITUTION, "FAKE^", "FAKE-MRN", "FAKEACC"}
    for case in manifest.to_dict("records"):
        out |= {str(v) for v in fake_identifiers(case, seed).values()}
    return out


# ------------------------------------------------------------------------------- the plan
def test_share_is_respected_and_cycles_through_the_four_encodings():
    plan = dicom_plan(40, 0.25, seed=0)
    assert len(plan) == 10 and set(plan) <= set(range(40))
    kinds = {(e["photometric"], e["voi"]) for e in plan.values()}
    assert kinds == {("MONOCHROME1", "window"), ("MONOCHROME1", "lut"),
                     ("MONOCHROME2", "window"), ("MONOCHROME2", "lut")}
    assert {e["gain"] for e in plan.values()} <= {4, 8, 16}
    assert dicom_plan(40, 0.25, seed=0) == plan and dicom_plan(40, 0.25, seed=1) != plan
    assert dicom_plan(40, 0.0, 0) == {} and len(dicom_plan(7, 1.0, 0)) == 7
    for bad in (-0.1, 1.5, "half"):
        with pytest.raises(ValueError, match="dicom_share"):
            dicom_plan(10, bad, 0)


def test_cohort_writes_its_share_as_dicom_and_the_manifest_points_at_them(cohorts):
    png, _, mixed, root = cohorts
    is_dcm = mixed["path"].str.endswith(".dcm")
    assert is_dcm.sum() == 8 and mixed["path"].str.endswith(".png").sum() == 8
    assert sorted(p.name for p in (root / "images").glob("*.dcm")) == \
        sorted(p.split("/")[-1] for p in mixed.loc[is_dcm, "path"])
    assert not list((root / "images").glob(f"{mixed.loc[is_dcm, 'image_id'].iat[0]}.png"))
    assert read_sidecar(root / "manifest.csv")["generator"]["dicom_share"] == 0.5
    # the cases (labels, masks, ground truth) do not depend on the share
    cols = [c for c in png.columns if c != "path"]
    assert png[cols].equals(mixed[cols])
    assert load_manifest(root / "manifest.csv")["path"].tolist() == mixed["path"].tolist()


def test_dicom_tags_follow_the_case(cohorts):
    _, _, mixed, root = cohorts
    seen = set()
    for row in mixed[mixed["path"].str.endswith(".dcm")].itertuples():
        ds = pydicom.dcmread(root / row.path)
        assert (ds.Modality, ds.ViewPosition) == (row.sensor, row.projection)
        assert ds.SOPClassUID == {"CR": "1.2.840.10008.5.1.4.1.1.1",
                                  "DX": "1.2.840.10008.5.1.4.1.1.1.1"}[row.sensor]
        assert ds.PatientName == f"FAKE^SYNTHETIC{row.synth_patient_index:05d}"
        assert ds.InstitutionName == FAKE_INSTITUTION
        header = read_dicom_header(root / row.path)
        assert (header.sex, header.age, header.study_date, header.projection) == \
            (row.sex, row.age, row.study_date, row.projection)
        has_window = "WindowCenter" in ds
        assert has_window != ("VOILUTSequence" in ds)
        seen.add((ds.PhotometricInterpretation, has_window))
        assert image_bit_depth(root / row.path) == 16
    assert seen == {("MONOCHROME1", True), ("MONOCHROME1", False),
                    ("MONOCHROME2", True), ("MONOCHROME2", False)}


# --------------------------------------------------------------------------- round trip
def test_encoding_by_hand():
    """8-bit level 10 at gain 4, offset 0.5: start = int(0.5 * (4095 - 1020)) = 1537, stored
    1537 + 40 = 1577, window centre 1537 + 510 + 0.5, width 1021. MONOCHROME1 stores
    1537 + (255 - 10) * 4 = 2517."""
    levels = np.array([[10, 0], [255, 128]], np.uint8)
    enc = dicom_encoding(levels, 8, "MONOCHROME2", "window", gain=4, offset=0.5)
    assert enc["pixels"].tolist() == [[1577, 1537], [2557, 2049]]
    assert enc["window"] == (2047.5, 1021.0) and enc["bits_stored"] == 12
    mono1 = dicom_encoding(levels, 8, "MONOCHROME1", "lut", gain=4, offset=0.5)
    assert mono1["pixels"][0, 0] == 2517 and mono1["window"] is None
    lut = mono1["tags"]["VOILUTSequence"][0]
    assert list(lut.LUTDescriptor) == [1021, 1537, 16]
    assert lut.LUTData[0] == 0 and lut.LUTData[-1] == 65535 and len(lut.LUTData) == 1021
    with pytest.raises(ValueError, match="photometric"):
        dicom_encoding(levels, 8, "RGB")
    with pytest.raises(ValueError, match="bit depth"):
        dicom_encoding(levels, 12)
    with pytest.raises(ValueError, match="voi"):
        dicom_encoding(levels, 8, voi="none")


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("voi", ["window", "lut"])
def test_every_encoding_decodes_to_the_png_image(tmp_path, bits, photometric, voi):
    rng = np.random.default_rng(bits)
    top = 2**bits - 1
    levels = rng.integers(0, top + 1, (24, 20)).astype(np.uint8 if bits == 8 else np.uint16)
    levels[0, 0], levels[0, 1] = 7, top - 3  # not the full range: no stretch may happen
    enc = dicom_encoding(levels, bits, photometric, voi, gain=16, offset=0.3)
    path = write_dicom(enc["pixels"], tmp_path / "x.dcm", {"Modality": "CR", **enc["tags"]},
                       photometric=photometric, window=enc["window"],
                       bits_stored=enc["bits_stored"])
    decoded = read_image(path)
    expected = levels.astype(np.float32) / top
    tol = TOL_16BIT_LUT if (bits, voi) == (16, "lut") else 1e-6
    assert decoded.shape == expected.shape and decoded.dtype == np.float32
    assert np.abs(decoded - expected).max() <= tol


def test_cohort_dicoms_decode_to_the_png_cohort(cohorts):
    png, png_root, mixed, root = cohorts
    dcm = mixed["path"].str.endswith(".dcm")
    assert set(mixed.loc[dcm, "synth_bit_depth"]) == {8, 16}  # seed 1: both depths as DICOM
    for a, b in zip(png.itertuples(), mixed.itertuples()):
        x, y = read_image(png_root / a.path), read_image(root / b.path)
        tol = TOL_16BIT_LUT if a.synth_bit_depth == 16 else 1e-6
        assert x.shape == y.shape and np.abs(x - y).max() <= tol, b.path


def test_missing_dicom_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.dcm"):
        read_image(tmp_path / "nope.dcm")


# ------------------------------------------------------------------------------ fake PHI
def test_fake_phi_stays_inside_the_dicom_files(cohorts):
    _, _, mixed, root = cohorts
    fakes = _fake_strings(mixed, KW["seed"])
    files = [p for p in root.rglob("*") if p.is_file()]
    dcm = [p for p in files if p.suffix == ".dcm"]
    assert len(dcm) == 8 and FAKE_INSTITUTION.encode() in dcm[0].read_bytes()  # the canary exists
    others = [p for p in files if p.suffix != ".dcm"]
    assert {p.name for p in others} >= {"manifest.csv", "manifest.meta.json"}
    for path in others:
        data = path.read_bytes()
        for fake in fakes:
            assert fake.encode() not in data, f"{fake!r} leaked into {path}"


def test_same_arguments_same_dicom_bytes(tmp_path):
    kw = dict(KW, n_images=4, dicom_share=1.0)
    generate_cohort(tmp_path / "a", **kw)
    generate_cohort(tmp_path / "b", **kw)
    digest = [{p.name: hashlib.sha1(p.read_bytes()).hexdigest()
               for p in sorted((tmp_path / k / "images").iterdir())} for k in "ab"]
    assert digest[0] == digest[1] and len(digest[0]) == 4


def test_default_cohort_writes_the_default_share(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path))
    prof = get_profile("smoke").with_overrides(name="tiny", n_covidgr=7, synth_size=SIZE)
    csv = default_cohort("covidgr", prof, seed=0, progress=False)
    meta = json.loads(csv.with_name("manifest.meta.json").read_text())
    assert meta["generator"]["dicom_share"] == DEFAULT_DICOM_SHARE
    manifest = load_manifest(csv)
    assert manifest["path"].str.endswith(".dcm").sum() == round(DEFAULT_DICOM_SHARE * 7)


@pytest.mark.notebook
def test_fake_phi_never_reaches_the_data_audit_notebook(tmp_path):
    """The whole path: an all-DICOM synthetic cohort through notebook 00; nothing the run
    writes may hold a fake identifying value."""
    from cxrlib.runner import run_study

    # 24 images: with 16, covid19 has one patient and notebook 00 stops (fewer than 2 folds)
    manifest = generate_cohort(tmp_path / "cohort", **dict(KW, n_images=24, dicom_share=1.0))
    out = tmp_path / "run"
    record = run_study("smoke", manifest=tmp_path / "cohort" / "manifest.csv", out_dir=out,
                       only=["00"], log=lambda *a: None)
    assert record.status == "ok"
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".html" for p in written) and any(p.suffix == ".csv" for p in written)
    fakes = _fake_strings(manifest, KW["seed"])
    for path in written:
        data = path.read_bytes()
        for fake in fakes:
            assert fake.encode() not in data, f"{fake!r} found in {path}"


def test_synth_command_line_writes_the_dicom_share(tmp_path):
    from cxrlib.__main__ import main

    assert main(["synth", str(tmp_path / "c"), "--n", "10", "--size", "64",
                 "--dicom-share", "0.3"]) == 0
    df = pd.read_csv(tmp_path / "c" / "manifest.csv")
    assert df["path"].str.endswith(".dcm").sum() == 3
