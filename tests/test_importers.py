"""Each importer on a fixture with its source's exact header, plus the PHI canary and the CLI."""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import write_bare_dicom, write_png
from cxrlib.data.dicom import is_dicom_file, write_dicom
from cxrlib.data.images import image_format, read_image
from cxrlib.data.importers import IMPORTERS, ImportOptions, run_importer
from cxrlib.__main__ import main as cli_main
from cxrlib.data.importers.common import accounting, read_text_file, write_import_result
from cxrlib.data.importers.nlm_tb import parse_clinical_reading
from cxrlib.data.manifest import load_manifest, sidecar_path
from cxrlib.data.pseudonym import (
    key_fingerprint,
    load_or_create_key,
    pseudonymize,
    pseudonymize_series,
    resolve_key,
)

KEY = b"test-key-0123456789abcdef"
PSEUDONYM = re.compile(r"^[a-z0-9]+-[0-9a-f]{16}$")


def _dcm(path, seed, tags, **kwargs):
    pixels = (np.random.default_rng(seed).random((32, 32)) * 4095).astype(np.uint16)
    return write_dicom(pixels, path, tags, bits_stored=12, **kwargs)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _import(source, root, **kwargs):
    return run_importer(source, root, ImportOptions(key=KEY), **kwargs)


def _rows(result):
    return result.manifest.set_index("image_id")


def _dropped(result):
    report = result.report[result.report["action"] == "dropped"]
    return dict(zip(report["image_id"], report["reason"]))


def _assert_nothing_lost(result, n_candidates):
    assert len(result.manifest) + len(_dropped(result)) == n_candidates
    assert result.manifest["patient_id"].str.match(PSEUDONYM).all()
    assert accounting(result) == {"candidates": n_candidates, "in_manifest": len(result.manifest),
                                  "left_out": n_candidates - len(result.manifest)}


def test_registry_has_every_source():
    assert set(IMPORTERS) == {"bimcv", "hm", "actualmed", "cohen", "covidgr", "nih", "chexpert",
                              "mimic", "padchest", "rsna", "shenzhen", "montgomery", "folders",
                              "csv"}
    with pytest.raises(ValueError, match="unknown source 'foo'"):
        run_importer("foo", ".")


# ----------------------------------------------------------------------------------- BIMCV
def _bimcv_sidecar(path, tags):
    _write(path, json.dumps({k: {"vr": "LO", "Value": [v]} for k, v in tags.items()}))


def test_bimcv(tmp_path):
    _write(tmp_path / "participants.tsv",
           "participant\tid_pseudoanonymization\thealth_areas\tmodality_dicom\tbody_parts\tage\t"
           "gender\nsub-S0001\tX1\t1\t['CR', 'DX']\t['chest']\t[65]\tM\n"
           "sub-S0002\tX2\t2\t['CR']\t['chest']\t[70, 71]\tF\n")
    rx1 = tmp_path / "sub-S0001/ses-E0001/mod-rx"
    write_png(rx1 / "sub-S0001_ses-E0001_run-1_bp-chest_vp-pa_cr.png", 0, bits=16)
    _bimcv_sidecar(rx1 / "sub-S0001_ses-E0001_run-1_bp-chest_vp-pa_cr.json",
                   {"00100040": "M", "00101010": "064Y", "00080020": "20200315"})
    rx2 = tmp_path / "sub-S0001/ses-E0002/mod-rx"
    write_png(rx2 / "sub-S0001_ses-E0002_acq-2_run-1_bp-chest_vp-ll_dx.png", 1, bits=16)
    rx3 = tmp_path / "sub-S0002/ses-E0003/mod-rx"
    stored = np.zeros((8, 8), np.uint16)
    stored[:, 4:] = 4095
    (rx3).mkdir(parents=True)
    Image.fromarray(stored).save(rx3 / "sub-S0002_ses-E0003_run-1_bp-chest_cr.png")
    _bimcv_sidecar(rx3 / "sub-S0002_ses-E0003_run-1_bp-chest_cr.json",
                   {"0008103E": "PORTATIL", "00280004": "MONOCHROME1", "00281050": 2048,
                    "00281051": 4096, "00280101": 12})
    _bimcv_sidecar(rx3 / "sub-S0002_ses-E0004_run-1_bp-chest_vp-ap_dx.json", {})
    write_png(rx3 / "sub-S0002_ses-E0003_run-2_bp-abdomen_vp-ap_cr.png", 2)

    result = _import("bimcv", tmp_path)
    rows = _rows(result)
    pa = rows.loc["bimcv/sub-S0001/ses-E0001/mod-rx/"
                  "sub-S0001_ses-E0001_run-1_bp-chest_vp-pa_cr.png"]
    assert (pa.projection, pa.sensor, pa.sex, pa.age, pa.study_date, pa.label) == \
        ("PA", "CR", "M", 64.0, "2020-03-15", "covid19")
    lat = rows.loc["bimcv/sub-S0001/ses-E0002/mod-rx/"
                   "sub-S0001_ses-E0002_acq-2_run-1_bp-chest_vp-ll_dx.png"]
    assert (lat.projection, lat.sensor, lat.sex, lat.age) == ("LAT", "DX", "M", 65.0)
    assert lat.patient_id == pa.patient_id == pseudonymize("sub-S0001", KEY, "bimcv")
    mono1 = rows.loc["bimcv/sub-S0002/ses-E0003/mod-rx/sub-S0002_ses-E0003_run-1_bp-chest_cr.png"]
    assert (mono1.projection, mono1.sex) == ("AP", "F")
    assert np.isnan(mono1.age)  # participants.tsv lists two ages: unknown, not guessed
    assert mono1.path.startswith("cxrlib_cache/bimcv/")
    shown = np.asarray(Image.open(tmp_path / mono1.path))
    np.testing.assert_array_equal(shown[:, :4], 65535)  # MONOCHROME1 inverted
    np.testing.assert_array_equal(shown[:, 4:], 0)
    dropped = _dropped(result)
    assert dropped["bimcv/sub-S0002/ses-E0003/mod-rx/sub-S0002_ses-E0004_run-1_bp-chest_vp-ap_dx"
                   ".png"].startswith("image file not found")
    assert "body part 'abdomen'" in next(v for k, v in dropped.items() if "abdomen" in k)
    _assert_nothing_lost(result, 5)


# -------------------------------------------------------------------------------------- HM
@pytest.mark.parametrize("header", [
    "PATIENT ID,EDAD/AGE,SEXO/SEX,DIAG ING/INPAT,F_INGRESO/ADMISSION_D_ING/INPAT",
    "PATIENTID,EDAD_AGE,SEXO_SEX,DIAGING_INPAT,F_INGRESO_ADMISSION_D_ING_INPAT",
])
def test_hm(tmp_path, header):
    _write(tmp_path / "CDSL_01.csv", header + "\n1001,72,MALE,COVID19 - POSITIVO,2020-03-01\n"
           "1002,55,FEMALE,COVID19 - NEGATIVO,2020-03-02\n1003,60,FEMALE,COVID19 - POSITIVO,\n")
    _dcm(tmp_path / "1001/s1/a.dcm", 0, {"PatientID": "1001", "Modality": "CR",
                                         "StudyDescription": "RX TORAX AP",
                                         "PatientAge": "073Y", "StudyDate": "20200305"})
    _dcm(tmp_path / "1001/s1/b.dcm", 1, {"PatientID": "1001", "Modality": "CR",
                                         "ViewPosition": "LL"})
    _dcm(tmp_path / "1002/a.dcm", 2, {"PatientID": "1002", "Modality": "DX",
                                      "ViewPosition": "PA"})
    _dcm(tmp_path / "1003/ct.dcm", 3, {"PatientID": "1003", "Modality": "CT"})
    _dcm(tmp_path / "1003/noid.dcm", 4, {"Modality": "DX", "ViewPosition": "PA"})
    _dcm(tmp_path / "9999/a.dcm", 5, {"PatientID": "9999", "Modality": "DX"})

    result = _import("hm", tmp_path)
    rows = _rows(result)
    a = rows.loc["hm/1001/s1/a.dcm"]
    assert (a.label, a.projection, a.sensor, a.age, a.sex, a.study_date) == \
        ("covid19", "AP", "CR", 73.0, "M", "2020-03-05")
    assert a.path.startswith("cxrlib_cache/dicom/") and a.path.endswith(".png")
    assert rows.loc["hm/1001/s1/b.dcm", "projection"] == "LAT"
    noid = rows.loc["hm/1003/noid.dcm"]  # no PatientID: the folder names the patient
    assert (noid.age, noid.sex, noid.sensor) == (60.0, "F", "DX")
    assert noid.patient_id == pseudonymize("1003", KEY, "hm")
    dropped = _dropped(result)
    assert dropped["hm/1002/a.dcm"] == \
        "DIAG ING/INPAT is 'COVID19 - NEGATIVO', not 'COVID19 - POSITIVO'"
    assert "modality 'CT'" in dropped["hm/1003/ct.dcm"]
    assert dropped["hm/9999/a.dcm"] == "patient not in the clinical table"
    _assert_nothing_lost(result, 6)


def test_hm_without_clinical_table(tmp_path):
    _dcm(tmp_path / "1/a.dcm", 0, {"PatientID": "1"})
    with pytest.raises(FileNotFoundError, match="DIAG ING/INPAT"):
        _import("hm", tmp_path)


# ------------------------------------------------------------------------------- Actualmed
ACTUALMED_HEADER = ("patientid,offset,sex,age,finding,survival,temperature,pO2 saturation,view,"
                    "modality,imagename,artifacts/distortion,notes")


def test_actualmed(tmp_path):
    _write(tmp_path / "metadata.csv", ACTUALMED_HEADER + "\n"
           "ANON1,,M,54,COVID-19,,,,PA,X-ray,CR.1.2.840.1.png,,\n"
           "ANON2,,,,No finding,,,,AP,X-ray,DX.1.2.840.2.png,,\n"
           "ANON3,,,,,,,,PA,X-ray,DX.1.2.840.3.png,,Inconclusive\n"
           "ANON4,,,,COVID-19,,,,PA,X-ray,CR.1.2.840.4.png,,\n")
    for k in (1, 2, 3):
        write_png(tmp_path / "images" / f"{'CR' if k in (1, 4) else 'DX'}.1.2.840.{k}.png", k)
    result = _import("actualmed", tmp_path)
    rows = _rows(result)
    one = rows.loc["actualmed/images/CR.1.2.840.1.png"]
    assert (one.label, one.sensor, one.projection, one.sex, one.age) == \
        ("covid19", "CR", "PA", "M", 54.0)
    two = rows.loc["actualmed/images/DX.1.2.840.2.png"]
    assert (two.label, two.sensor, two.projection) == ("control", "DX", "AP")
    assert pd.isna(two.sex) and np.isnan(two.age)
    dropped = _dropped(result)
    assert dropped["actualmed/images/DX.1.2.840.3.png"] == "finding is blank (notes: Inconclusive)"
    assert dropped["actualmed/images/CR.1.2.840.4.png"].startswith("image file not found")
    _assert_nothing_lost(result, 4)


def test_figure1_layout(tmp_path):
    header = ACTUALMED_HEADER.replace(",imagename", "")
    _write(tmp_path / "metadata.csv", header + "\n"
           "COVID-00001,,F,50+,COVID-19,,,,AP erect,X-ray,,\n"
           "COVID-00003,,M,61,Pneumonia,,,,PA,X-ray,,\n"
           "COVID-00009,,M,40,COVID-19,,,,PA,X-ray,,\n")
    write_png(tmp_path / "images/COVID-00001.jpg", 1)
    write_png(tmp_path / "images/COVID-00003a.jpg", 2)
    write_png(tmp_path / "images/COVID-00003b.jpg", 3)
    result = _import("actualmed", tmp_path)
    assert result.source == "Figure1"
    rows = _rows(result)
    first = rows.loc["figure1/images/COVID-00001.jpg"]
    assert (first.label, first.projection, first.sex) == ("covid19", "AP", "F")
    assert np.isnan(first.age)  # "50+" is a bound, not an age
    a, b = rows.loc["figure1/images/COVID-00003a.jpg"], rows.loc["figure1/images/COVID-00003b.jpg"]
    assert a.label == b.label == "pneumonia" and a.patient_id == b.patient_id
    assert pd.isna(a.sensor)
    assert _dropped(result)["figure1/images/COVID-00009.jpg"].startswith("image file not found")
    _assert_nothing_lost(result, 4)


# ----------------------------------------------------------------------------------- Cohen
COHEN_HEADER = ("patientid,offset,sex,age,finding,RT_PCR_positive,survival,intubated,"
                "intubation_present,went_icu,in_icu,needed_supplemental_O2,extubated,temperature,"
                "pO2_saturation,leukocyte_count,neutrophil_count,lymphocyte_count,view,modality,"
                "date,location,folder,filename,doi,url,license,clinical_notes,other_notes")


def _cohen_row(pid, sex, age, finding, view, modality, date, filename):
    cells = [""] * 29
    cells[0], cells[2], cells[3], cells[4] = pid, sex, age, finding
    cells[18], cells[19], cells[20], cells[22], cells[23] = view, modality, date, "images", filename
    return ",".join(f'"{c}"' if "," in c else c for c in cells)


def test_cohen(tmp_path):
    rows = [
        _cohen_row("2", "M", "65", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "March 3, 2020",
                   "a.png"),
        _cohen_row("2", "M", "65", "Pneumonia/Viral/COVID-19", "L", "X-ray", "2020", "b.png"),
        _cohen_row("7", "F", "40", "Pneumonia/Bacterial/Streptococcus", "AP Supine", "X-ray", "",
                   "c.jpg"),
        _cohen_row("9", "F", "", "No Finding", "AP semi erect", "X-ray", "", "d.jpg"),
        _cohen_row("2", "M", "65", "Pneumonia/Viral/COVID-19", "Axial", "CT", "", "e.jpg"),
        _cohen_row("11", "M", "30", "Tuberculosis", "PA", "X-ray", "", "f.jpg"),
    ]
    _write(tmp_path / "metadata.csv", COHEN_HEADER + "\n" + "\n".join(rows) + "\n")
    for k, name in enumerate("abcdef"):
        write_png(tmp_path / "images" / f"{name}.{'png' if name in 'ab' else 'jpg'}", k)
    result = _import("cohen", tmp_path)
    got = _rows(result)
    a, b = got.loc["cohen/images/a.png"], got.loc["cohen/images/b.png"]
    assert (a.label, a.projection, a.sex, a.age, a.study_date) == \
        ("covid19", "PA", "M", 65.0, "2020-03-03")
    assert b.projection == "LAT" and pd.isna(b.study_date)  # a bare year is not a date
    assert a.patient_id == b.patient_id
    assert got.loc["cohen/images/c.jpg", "label"] == "pneumonia"
    assert got.loc["cohen/images/c.jpg", "projection"] == "AP"
    assert got.loc["cohen/images/d.jpg", "label"] == "control"
    dropped = _dropped(result)
    assert dropped["cohen/images/e.jpg"] == "modality 'CT' is not X-ray"
    assert "Tuberculosis" in dropped["cohen/images/f.jpg"]
    _assert_nothing_lost(result, 6)


# --------------------------------------------------------------------------------- COVIDGR
def test_covidgr_with_shipped_folds(tmp_path):
    root = tmp_path / "COVIDGR-1.0"
    for k, name in enumerate(["N/n1.jpg", "N/n2.jpg", "P/p1.jpg", "P/p2.jpg", "P/p3.jpg"]):
        write_png(root / name, k)
    _write(root / "severity.csv", "Name,Severity\np1.jpg,NORMAL-PCR+\np2,MODERATE\n")
    rep1 = root / "COVIDGR1.05fcv1"
    for part, subset, names in [(0, "test", ["N/n1.jpg", "P/p1.jpg", "P/gone.jpg"]),
                                (0, "train", ["N/n2.jpg", "P/p2.jpg", "P/p3.jpg"]),
                                (1, "test", ["N/n2.jpg", "P/p2.jpg", "P/p3.jpg"]),
                                (1, "val", ["N/n1.jpg"])]:
        for name in names:
            write_png(rep1 / f"partition{part}" / subset / name, 9)
    write_png(root / "COVIDGR1.05fcv2" / "partition4" / "test" / "P" / "p3.jpg", 9)  # partial
    result = _import("covidgr", root)
    rows = _rows(result)
    assert rows.loc["covidgr/N/n1.jpg", "label"] == "control"
    assert pd.isna(rows.loc["covidgr/N/n1.jpg", "severity"])
    assert rows.loc["covidgr/P/p1.jpg", "severity"] == "normal_pcr_pos"
    assert rows.loc["covidgr/P/p2.jpg", "severity"] == "moderate"  # Name without extension
    assert pd.isna(rows.loc["covidgr/P/p3.jpg", "severity"])
    assert (rows["projection"] == "PA").all() and rows["sex"].isna().all()
    assert rows["patient_id"].nunique() == 5
    plan = result.split_plan
    assert list(plan.columns) == ["image_id", "group", "repetition", "fold"]
    assert plan[["image_id", "repetition", "fold"]].values.tolist() == [
        ["covidgr/N/n1.jpg", 0, 0], ["covidgr/N/n2.jpg", 0, 1], ["covidgr/P/p1.jpg", 0, 0],
        ["covidgr/P/p2.jpg", 0, 1], ["covidgr/P/p3.jpg", 0, 1]]
    assert plan["group"].tolist() == rows.loc[plan["image_id"], "qc_patient_group"].tolist()
    assert result.meta["split_plan_unmatched"] == 1
    assert result.meta["split_plan_skipped"] == {1: "test folders hold 1 of 5 images"}


# ------------------------------------------------------------------------------------- NIH
def test_nih(tmp_path):
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
    _write(tmp_path / "Data_Entry_2017.csv", header + "\n"
           "00000001_000.png,No Finding,0,1,58,M,PA,2682,2749,0.143,0.143\n"
           "00000001_001.png,Pneumonia,1,1,58,M,AP,2500,2048,0.168,0.168\n"
           "00000002_000.png,Pneumonia|Effusion,0,2,81,F,PA,2048,2500,0.168,0.168\n"
           "00000003_000.png,No Finding,0,3,414,F,PA,2048,2500,0.168,0.168\n"
           "00000004_000.png,No Finding,0,4,30,F,PA,2048,2500,0.168,0.168\n")
    for k, name in enumerate(["00000001_000", "00000001_001", "00000002_000", "00000003_000"]):
        write_png(tmp_path / "images_001" / "images" / f"{name}.png", k)
    result = _import("nih", tmp_path)
    rows = _rows(result)
    first, second = rows.loc["nih/00000001_000.png"], rows.loc["nih/00000001_001.png"]
    assert (first.label, first.sex, first.age, first.projection, first.sensor) == \
        ("control", "M", 58.0, "PA", "DX")
    assert (second.label, second.projection) == ("pneumonia", "AP")
    assert first.patient_id == second.patient_id
    assert first.path == "images_001/images/00000001_000.png"
    assert (rows["source"] == "CRX8").all()  # the paper's name, as the synthetic cohort has it
    assert np.isnan(rows.loc["nih/00000003_000.png", "age"])  # 414 years: an error, left empty
    dropped = _dropped(result)
    assert "not used" in dropped["nih/00000002_000.png"]
    assert dropped["nih/00000004_000.png"].startswith("image file not found")
    _assert_nothing_lost(result, 5)


# -------------------------------------------------------------------------------- CheXpert
def test_chexpert(tmp_path):
    labels = ("No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,"
              "Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,"
              "Pleural Other,Fracture,Support Devices")
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + labels

    def row(path, sex, age, fl, appa, no_finding="", pneumonia="", edema=""):
        cells = [no_finding, "", "", "", "", edema, "", pneumonia] + [""] * 6
        return ",".join([path, sex, age, fl, appa] + cells)

    base = "CheXpert-v1.0-small/train/patient00001/study1"
    _write(tmp_path / "train.csv", header + "\n" + "\n".join([
        row(f"{base}/view1_frontal.jpg", "Male", "68", "Frontal", "AP", pneumonia="1.0",
            edema="1.0"),
        row(f"{base}/view2_lateral.jpg", "Male", "68", "Lateral", "", pneumonia="1.0"),
        row("CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg", "Female", "0",
            "Frontal", "PA", no_finding="1.0"),
        row("CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg", "Unknown", "50",
            "Frontal", "PA", pneumonia="-1.0"),
        row("CheXpert-v1.0-small/train/patient00004/study1/view1_frontal.jpg", "Female", "50",
            "Frontal", "PA", edema="1.0"),
    ]) + "\n")
    for k, p in enumerate(["patient00001/study1/view1_frontal.jpg",
                           "patient00001/study1/view2_lateral.jpg",
                           "patient00002/study1/view1_frontal.jpg",
                           "patient00003/study1/view1_frontal.jpg",
                           "patient00004/study1/view1_frontal.jpg"]):
        write_png(tmp_path / "train" / p, k)
    result = _import("chexpert", tmp_path)
    rows = _rows(result)
    front = rows.loc["chexpert/train/patient00001/study1/view1_frontal.jpg"]
    assert (front.label, front.sex, front.age, front.projection) == ("pneumonia", "M", 68.0, "AP")
    lateral = rows.loc["chexpert/train/patient00001/study1/view2_lateral.jpg"]
    assert lateral.projection == "LAT" and lateral.patient_id == front.patient_id
    control = rows.loc["chexpert/train/patient00002/study1/view1_frontal.jpg"]
    assert (control.label, control.sex, control.projection) == ("control", "F", "PA")
    assert np.isnan(control.age)  # age 0 means unknown
    dropped = _dropped(result)
    assert dropped["chexpert/train/patient00003/study1/view1_frontal.jpg"] == \
        "Pneumonia is uncertain (-1)"
    assert "neither" in dropped["chexpert/train/patient00004/study1/view1_frontal.jpg"]
    _assert_nothing_lost(result, 5)


# ----------------------------------------------------------------------------------- MIMIC
def test_mimic_requires_labeller_agreement(tmp_path):
    _write(tmp_path / "mimic-cxr-2.0.0-metadata.csv",
           "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,"
           "Columns,StudyDate,StudyTime\n"
           "d1,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531\n"
           "d2,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,21800506,213014.531\n"
           "d3,10000764,57375967,CHEST (PORTABLE AP),AP,3056,2544,21321015,211349.0\n"
           "d4,10000898,50771383,CHEST (PA AND LAT),PA,3056,2544,21501016,101010.0\n")
    labels = "subject_id,study_id,No Finding,Pneumonia,Edema\n"
    _write(tmp_path / "mimic-cxr-2.0.0-chexpert.csv", labels +
           "10000032,50414267,,1.0,\n10000764,57375967,1.0,,\n10000898,50771383,,1.0,\n")
    _write(tmp_path / "mimic-cxr-2.0.0-negbio.csv", labels +
           "10000032,50414267,,1.0,\n10000764,57375967,1.0,,\n10000898,50771383,,-1.0,\n")
    for k, (subject, study, dicom_id) in enumerate([("10000032", "50414267", "d1"),
                                                    ("10000032", "50414267", "d2"),
                                                    ("10000764", "57375967", "d3"),
                                                    ("10000898", "50771383", "d4")]):
        write_png(tmp_path / f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg", k)
    result = _import("mimic", tmp_path)
    rows = _rows(result)
    d1 = rows.loc["mimic/files/p10/p10000032/s50414267/d1.jpg"]
    assert (d1.label, d1.projection, d1.study_date) == ("pneumonia", "PA", "2180-05-06")
    assert rows.loc["mimic/files/p10/p10000032/s50414267/d2.jpg", "projection"] == "LAT"
    assert rows.loc["mimic/files/p10/p10000764/s57375967/d3.jpg", "label"] == "control"
    assert rows["sex"].isna().all() and rows["age"].isna().all()
    assert "disagree" in _dropped(result)["mimic/files/p10/p10000898/s50771383/d4.jpg"]
    _assert_nothing_lost(result, 4)


# -------------------------------------------------------------------------------- PadChest
def test_padchest(tmp_path):
    header = ("ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,PatientSex_DICOM,"
              "ViewPosition_DICOM,Projection,MethodProjection,Modality_DICOM,Manufacturer_DICOM,"
              "Labels,ReportID")
    _write(tmp_path / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", header + "\n"
           "a.png,0,20150203,s1,P1,1950.0,M,POSTEROANTERIOR,PA,Manual,CR,Philips,['normal'],1\n"
           "b.png,1,20120710,s2,P2,1930,F,AP,AP_horizontal,Manual,DX,GE,"
           "\"['pneumonia', 'infiltrates']\",2\n"
           "c.png,1,20120710,s3,P2,1930,F,,COSTAL,Manual,DX,GE,['normal'],3\n"
           "d.png,0,20120710,s4,P3,1960,F,PA,PA,Manual,CR,GE,['cardiomegaly'],4\n")
    write_png(tmp_path / "0/a.png", 0, bits=16)
    write_png(tmp_path / "1/b.png", 1, bits=16)
    write_png(tmp_path / "1/c.png", 2, bits=16)
    write_png(tmp_path / "0/d.png", 3, bits=16)
    result = _import("padchest", tmp_path)
    rows = _rows(result)
    a, b = rows.loc["padchest/a.png"], rows.loc["padchest/b.png"]
    assert (a.label, a.projection, a.sensor, a.sex, a.age, a.study_date, a.path) == \
        ("control", "PA", "CR", "M", 65.0, "2015-02-03", "0/a.png")
    assert (b.label, b.projection, b.sensor, b.age) == ("pneumonia", "AP", "DX", 82.0)
    dropped = _dropped(result)
    assert dropped["padchest/c.png"].startswith("Projection COSTAL")
    assert "not used" in dropped["padchest/d.png"]
    _assert_nothing_lost(result, 4)


def test_padchest_birth_year_never_reaches_any_output(tmp_path):
    """PatientBirth is read only to compute the age: the distinctive years 1917.0 (kept row)
    and 1919 (dropped row) must appear in no file the import writes."""
    root = tmp_path / "padchest"
    header = ("ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,PatientSex_DICOM,"
              "ViewPosition_DICOM,Projection,MethodProjection,Modality_DICOM,Manufacturer_DICOM,"
              "Labels,ReportID")
    _write(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", header + "\n"
           "a.png,0,20150203,s1,P1,1917.0,M,POSTEROANTERIOR,PA,Manual,CR,Philips,['normal'],1\n"
           "b.png,0,20150203,s2,P2,1919,F,,COSTAL,Manual,CR,Philips,['normal'],2\n")
    write_png(root / "0/a.png", 0, bits=16)
    write_png(root / "0/b.png", 1, bits=16)
    out_dir = tmp_path / "manifests"
    assert cli_main(["import", "padchest", str(root), "-o", str(out_dir / "padchest.csv"),
                     "--cache", str(tmp_path / "cache"), "--key-file", str(tmp_path / "key"),
                     "--quiet"]) == 0
    manifest = load_manifest(out_dir / "padchest.csv")
    assert manifest["age"].tolist() == [98.0]  # 2015 - 1917: the year was used
    report = pd.read_csv(out_dir / "padchest.qc.csv")
    assert report["image_id"].tolist() == ["padchest/b.png"]
    outputs = [p for p in out_dir.rglob("*") if p.is_file()]
    assert {p.name for p in outputs} >= {"padchest.csv", "padchest.qc.csv"}
    year = re.compile(rb"(?<![0-9a-f.])19(17|19)(?![0-9a-f])")  # not inside a hash or a number
    for path in outputs:
        data = path.read_bytes()
        assert b"1917.0" not in data and not year.search(data), f"a birth year leaked into {path}"


# ------------------------------------------------------------------------------------ RSNA
@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")  # RSNA ships ages like '51'
def test_rsna(tmp_path):
    _write(tmp_path / "stage_2_train_labels.csv", "patientId,x,y,width,height,Target\n"
           "aaa,4,2,10,6,1\naaa,20,20,4,4,1\nbbb,,,,,0\nccc,,,,,0\nddd,,,,,0\n")
    _write(tmp_path / "stage_2_detailed_class_info.csv", "patientId,class\naaa,Lung Opacity\n"
           "aaa,Lung Opacity\nbbb,Normal\nccc,No Lung Opacity / Not Normal\nddd,Normal\n")
    images = tmp_path / "stage_2_train_images"
    _dcm(images / "aaa.dcm", 0, {"PatientID": "aaa", "PatientSex": "M", "PatientAge": "51",
                                 "ViewPosition": "PA", "Modality": "CR"})
    _dcm(images / "bbb.dcm", 1, {"PatientID": "bbb", "PatientSex": "F", "PatientAge": "38",
                                 "ViewPosition": "AP", "Modality": "CR"})
    _dcm(images / "ccc.dcm", 2, {"PatientID": "ccc", "Modality": "CR"})
    result = _import("rsna", tmp_path)
    rows = _rows(result)
    a = rows.loc["rsna/aaa"]
    assert (a.label, a.sex, a.age, a.projection, a.sensor) == ("pneumonia", "M", 51.0, "PA", "CR")
    mask = np.asarray(Image.open(tmp_path / a.lesion_mask_path))
    expected = np.zeros((32, 32), np.uint8)
    expected[2:8, 4:14] = 255
    expected[20:24, 20:24] = 255
    np.testing.assert_array_equal(mask, expected)
    b = rows.loc["rsna/bbb"]
    assert (b.label, b.sex, b.projection) == ("control", "F", "AP") and pd.isna(b.lesion_mask_path)
    dropped = _dropped(result)
    assert "neither control nor pneumonia" in dropped["rsna/ccc"]
    assert dropped["rsna/ddd"].startswith("image file not found")
    _assert_nothing_lost(result, 4)


# ------------------------------------------------------------------ Shenzhen and Montgomery
def test_parse_clinical_reading():
    assert parse_clinical_reading("Male 35yrs\nnormal") == ("M", 35.0)
    assert parse_clinical_reading("female  42 yrs\nPTB in the left upper field") == ("F", 42.0)
    assert parse_clinical_reading("Patient's Sex: F\nPatient's Age: 045Y\n") == ("F", 45.0)
    assert parse_clinical_reading("male 8month\n") == ("M", round(8 / 12, 2))
    assert parse_clinical_reading("normal\n") == (None, None)


def test_shenzhen(tmp_path):
    root = tmp_path / "ChinaSet_AllFiles"
    write_png(root / "CXR_png/CHNCXR_0001_0.png", 0)
    write_png(root / "CXR_png/CHNCXR_0002_1.png", 1)
    _write(root / "ClinicalReadings/CHNCXR_0001_0.txt", "Male 35yrs\nnormal\n")
    _write(root / "ClinicalReadings/CHNCXR_0002_1.txt", "female 42yrs\nPTB in the left\n")
    _write(root / "ClinicalReadings/CHNCXR_0003_1.txt", "male 50yrs\nPTB\n")
    result = _import("shenzhen", tmp_path)
    rows = _rows(result)
    normal, tb = rows.loc["shenzhen/CHNCXR_0001_0.png"], rows.loc["shenzhen/CHNCXR_0002_1.png"]
    assert (normal.label, normal.sex, normal.age, normal.projection, normal.sensor) == \
        ("control", "M", 35.0, "PA", "DX")
    assert (tb.label, tb.sex, tb.age) == ("pneumonia", "F", 42.0)
    assert result.source == "ChinaSet" and (rows["source"] == "ChinaSet").all()
    assert _dropped(result)["shenzhen/CHNCXR_0003_1.png"].startswith("image file not found")
    _assert_nothing_lost(result, 3)


def test_montgomery_joins_lung_masks(tmp_path):
    root = tmp_path / "MontgomerySet"
    write_png(root / "CXR_png/MCUCXR_0001_0.png", 0, shape=(8, 8))
    _write(root / "ClinicalReadings/MCUCXR_0001_0.txt",
           "Patient's Sex: F\nPatient's Age: 045Y\nnormal\n")
    left, right = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
    left[1:7, 1:3], right[1:7, 5:7] = 255, 255
    for side, mask in (("left", left), ("right", right)):
        (root / f"ManualMask/{side}Mask").mkdir(parents=True)
        Image.fromarray(mask).save(root / f"ManualMask/{side}Mask/MCUCXR_0001_0.png")
    result = _import("montgomery", root)
    row = _rows(result).loc["montgomery/MCUCXR_0001_0.png"]
    assert (row.label, row.sex, row.age, row.projection, row.sensor) == \
        ("control", "F", 45.0, "PA", "CR")
    joined = np.asarray(Image.open(root / row.lung_mask_path))
    np.testing.assert_array_equal(joined, np.maximum(left, right))


# ---------------------------------------------------------------------------------- generic
def test_folders_with_mapping(tmp_path):
    root = tmp_path / "kaggle"
    write_png(root / "NORMAL/person1_a.png", 0)
    write_png(root / "PNEUMONIA/virus/person1_b.jpeg", 1)
    _dcm(root / "PNEUMONIA/person2_c.dcm", 2, {"Modality": "DX", "PatientSex": "F",
                                               "ViewPosition": "AP"})
    write_png(root / "OTHER/person3_d.png", 3)
    write_png(root / "NORMAL/nobody.png", 4)
    write_png(root / "stray.png", 5)
    mapping = _write(tmp_path / "map.yaml", "source: kaggle\nlabels: {NORMAL: control, "
                     "PNEUMONIA: pneumonia}\npatient_regex: '^(person\\d+)_'\n"
                     "constants: {projection: PA}\n")
    result = _import("folders", root, mapping=mapping)
    rows = _rows(result)
    assert rows.loc["kaggle/NORMAL/person1_a.png", "label"] == "control"
    assert rows.loc["kaggle/PNEUMONIA/virus/person1_b.jpeg", "label"] == "pneumonia"
    assert rows.loc["kaggle/NORMAL/person1_a.png", "patient_id"] == \
        rows.loc["kaggle/PNEUMONIA/virus/person1_b.jpeg", "patient_id"]
    dicom_row = rows.loc["kaggle/PNEUMONIA/person2_c.dcm"]
    assert (dicom_row.sex, dicom_row.sensor, dicom_row.projection) == ("F", "DX", "PA")
    assert dicom_row.path.endswith(".png")  # constants win over the DICOM tags
    dropped = _dropped(result)
    assert "'OTHER' is not mapped" in dropped["kaggle/OTHER/person3_d.png"]
    assert "does not match" in dropped["kaggle/NORMAL/nobody.png"]
    assert "outside any class folder" in dropped["kaggle/stray.png"]
    _assert_nothing_lost(result, 6)


def test_folders_without_mapping_uses_dicom_patient(tmp_path):
    root = tmp_path / "set"
    _dcm(root / "covid19/a.dcm", 0, {"PatientID": "X1", "Modality": "CR"})
    _dcm(root / "covid19/b.dcm", 1, {"PatientID": "X1", "Modality": "CR"})
    write_png(root / "control/c.png", 2)
    result = _import("folders", root)
    rows = _rows(result)
    assert result.source == "set"
    assert rows.loc["set/covid19/a.dcm", "patient_id"] == rows.loc["set/covid19/b.dcm",
                                                                   "patient_id"]
    assert rows.loc["set/covid19/a.dcm", "patient_id"] == pseudonymize("X1", KEY, "set")
    assert rows.loc["set/control/c.png", "patient_id"] != rows.loc["set/covid19/a.dcm",
                                                                   "patient_id"]


def test_csv_with_mapping(tmp_path):
    _write(tmp_path / "meta.csv", "image_id,Patient,Sex,Diagnosis,Age,View\n"
           "im1,P1,f,virus,34,PA\nim2,P1,m,normal,35,LL\nim3,P2,x,bacteria,40,PA\n"
           "im4,P3,f,normal,abc,PA\nim5,P4,m,normal,20,PA\n")
    for k in range(1, 5):
        write_png(tmp_path / f"png/im{k}.png", k)
    mapping = _write(tmp_path / "map.yaml", """
source: mine
csv: meta.csv
columns: {Patient: patient_id, Sex: sex, Diagnosis: label, Age: age, View: projection}
values:
  sex: {f: F, m: M}
  label: {virus: pneumonia, normal: control}
path: "png/{image_id}.png"
constants: {sensor: DX}
""")
    result = _import("csv", tmp_path, mapping=mapping)
    rows = _rows(result)
    one = rows.loc["mine/png/im1.png"]
    assert (one.label, one.sex, one.age, one.projection, one.sensor) == \
        ("pneumonia", "F", 34.0, "PA", "DX")
    assert rows.loc["mine/png/im2.png", "projection"] == "LAT"
    assert rows.loc["mine/png/im2.png", "patient_id"] == one.patient_id
    assert np.isnan(rows.loc["mine/png/im4.png", "age"])
    dropped = _dropped(result)
    assert dropped["mine/png/im3.png"] == "unknown label bacteria"
    assert dropped["mine/png/im5.png"].startswith("image file not found")
    flagged = result.report[result.report["action"] == "flagged"]
    assert "age value 'abc' is not in the schema" in " ".join(flagged["reason"])
    assert "sex value 'x'" in " ".join(flagged["reason"])
    _assert_nothing_lost(result, 5)


def test_csv_with_separator_and_dicom_paths(tmp_path):
    _write(tmp_path / "list.txt", "file;dx\na.dcm;covid\n")
    _dcm(tmp_path / "a.dcm", 0, {"Modality": "CR", "PatientID": "Q9", "ViewPosition": "PA"})
    mapping = {"source": "semi", "csv": "list.txt", "sep": ";",
               "columns": {"file": "path", "dx": "label"},
               "values": {"label": {"covid": "covid19"}}}
    result = _import("csv", tmp_path, mapping=mapping)
    row = _rows(result).loc["semi/a.dcm"]
    assert (row.label, row.sensor, row.projection) == ("covid19", "CR", "PA")
    assert row.patient_id == pseudonymize("Q9", KEY, "semi")  # from the DICOM PatientID


def test_csv_mapping_errors(tmp_path):
    _write(tmp_path / "meta.csv", "a,b\n1,2\n")
    bad_key = _write(tmp_path / "bad.yaml", "source: s\ncsv: meta.csv\ncolumn: {a: label}\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['column'\]"):
        _import("csv", tmp_path, mapping=bad_key)
    bad_target = _write(tmp_path / "t.yaml", "source: s\ncsv: meta.csv\n"
                        "columns: {a: Sex}\npath: '{b}.png'\n")
    with pytest.raises(ValueError, match="not manifest columns"):
        _import("csv", tmp_path, mapping=bad_target)
    bad_template = _write(tmp_path / "p.yaml", "source: s\ncsv: meta.csv\npath: '{zzz}.png'\n")
    with pytest.raises(ValueError, match="names column 'zzz'"):
        _import("csv", tmp_path, mapping=bad_template)
    with pytest.raises(ValueError, match="mapping file is required"):
        _import("csv", tmp_path)


# ------------------------------------------------------------------------------ pseudonyms
def test_pseudonyms_are_keyed_namespaced_and_skip_missing_ids():
    ids = pd.Series(["P1", " P1 ", None, pd.NA, "", "P2"], dtype=object)
    out = pseudonymize_series(ids, KEY, "src")
    assert out[0] == out[1] == pseudonymize("P1", KEY, "src")
    assert out[2:5].isna().all() and out[5] != out[0]
    assert PSEUDONYM.match(out[0]) and "P1" not in out[0]
    assert pseudonymize("P1", KEY, "other") != out[0]
    assert pseudonymize("P1", b"another-key-0123456789", "src") != out[0]


def test_key_file_is_created_once_from_the_environment(tmp_path, monkeypatch):
    key_file = tmp_path / "conf" / "pseudonym.key"
    monkeypatch.setenv("CXR_PSEUDONYM_KEY_FILE", str(key_file))
    first = load_or_create_key()
    assert key_file.is_file() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert load_or_create_key() == first and len(first) == 32
    assert key_fingerprint(first) == key_fingerprint(resolve_key(key_file))
    key_file.write_text("not hex")
    with pytest.raises(ValueError, match="does not hold a hex key"):
        load_or_create_key()
    with pytest.raises(ValueError, match="too short"):
        resolve_key(b"short")


# ----------------------------------------------------------------------------- PHI canary
CANARIES = ("CANARY^Zebulon", "Zebulon", "19450317", "1945-03-17", "ACC-CANARY-77123",
            "Canary General Hospital", "PID-CANARY-5531")


def test_phi_canary_never_reaches_any_output(tmp_path):
    root = tmp_path / "hospital"
    phi = {"PatientName": "CANARY^Zebulon", "PatientBirthDate": "19450317",
           "AccessionNumber": "ACC-CANARY-77123", "InstitutionName": "Canary General Hospital",
           "PatientID": "PID-CANARY-5531", "PatientSex": "M", "PatientAge": "075Y",
           "StudyDate": "20200402"}
    _dcm(root / "covid19/img1.dcm", 0, {**phi, "Modality": "DX", "ViewPosition": "PA"})
    _dcm(root / "covid19/img2.dcm", 1, {**phi, "Modality": "CR", "ViewPosition": "LL"},
         photometric="MONOCHROME1", window=(2000, 3000))
    _dcm(root / "covid19/ct.dcm", 2, {**phi, "Modality": "CT"})
    trunc = _dcm(root / "covid19/trunc.dcm", 3, {**phi, "Modality": "DX"})
    trunc.write_bytes(trunc.read_bytes()[:-1500])
    out_dir = tmp_path / "manifests"
    cache = tmp_path / "cache"
    key_file = tmp_path / "key"
    code = cli_main(["import", "folders", str(root), "-o", str(out_dir / "canary.csv"),
                     "--cache", str(cache), "--key-file", str(key_file), "--quiet"])
    assert code == 0
    manifest = load_manifest(out_dir / "canary.csv")
    assert len(manifest) == 2 and manifest["study_date"].eq("2020-04-02").all()
    report = pd.read_csv(out_dir / "canary.qc.csv")
    assert len(report[report["action"] == "dropped"]) == 2
    outputs = [p for folder in (out_dir, cache) for p in folder.rglob("*") if p.is_file()]
    assert len(outputs) >= 5  # manifest, sidecar, QC report, two cached PNGs
    for path in outputs:
        data = path.read_bytes().lower()
        for canary in CANARIES:
            assert canary.lower().encode() not in data, f"{canary!r} leaked into {path}"


# -------------------------------------------------------------------------------------- CLI
def test_cli_import_writes_manifest_report_and_split_plan(tmp_path, capsys):
    root = tmp_path / "covidgr"
    write_png(root / "N/n1.jpg", 0)
    write_png(root / "P/p1.jpg", 1)
    write_png(root / "COVIDGR1.05fcv1/partition0/test/P/p1.jpg", 1)
    write_png(root / "COVIDGR1.05fcv1/partition1/test/N/n1.jpg", 0)
    out = tmp_path / "out" / "covidgr.csv"
    code = cli_main(["import", "covidgr", str(root), "-o", str(out),
                     "--key-file", str(tmp_path / "key"), "--quiet"])
    assert code == 0
    manifest = load_manifest(out)
    assert sorted(manifest["label"]) == ["control", "covid19"]
    assert manifest.attrs["meta"]["key_fingerprint"]
    assert (tmp_path / "key").is_file()  # created on first use
    assert (out.parent / "covidgr.qc.csv").is_file()
    plan = pd.read_csv(out.parent / "covidgr.split_plan.csv")
    assert plan[["image_id", "repetition", "fold"]].values.tolist() == [
        ["covidgr/N/n1.jpg", 0, 1], ["covidgr/P/p1.jpg", 0, 0]]
    assert "COVIDGR: 2 image(s) (control 1, pneumonia 0, covid19 1)" in capsys.readouterr().out


def test_cli_import_bad_input_exit_code(tmp_path, capsys):
    assert cli_main(["import", "csv", str(tmp_path), "-o", str(tmp_path / "x.csv")]) == 2
    assert "needs --mapping" in capsys.readouterr().err
    assert cli_main(["import", "nih", str(tmp_path / "nowhere"), "-o",
                     str(tmp_path / "x.csv"), "--key-file", str(tmp_path / "k")]) == 2
    assert "nih: none of" in capsys.readouterr().err


# ----------------------------------------------- files as distributions ship them (issue 13)
def _save(path, seed, fmt, bits=8):
    """A noise image saved in ``fmt`` (a Pillow format name) whatever the name's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).random((40, 32))
    array = (noise * 65535).astype(np.uint16) if bits == 16 else (noise * 255).astype(np.uint8)
    Image.fromarray(array).save(path, format=fmt)
    return path


def _mixed_folder_set(root):
    """A folder set with every way a real one names its files; returns the expected outcome."""
    _save(root / "covid19/a.jfif", 0, "JPEG")
    _save(root / "covid19/b.jpe", 1, "JPEG")
    _save(root / "covid19/c.JPG", 2, "JPEG")
    _save(root / "control/d.PNG", 3, "PNG")
    _save(root / "control/e.tif", 4, "TIFF", bits=16)
    _dcm(root / "covid19/scan", 5, {"Modality": "DX", "PatientID": "Z1"})  # no extension
    _write(root / "control/readme.txt", "scanned at 38.5\xb0C\n")
    (root / "control/garbage.png").write_bytes(bytes(range(256)) * 4)
    (root / "control/.DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 40)
    kept = {"a.jfif", "b.jpe", "c.JPG", "d.PNG", "e.tif", "scan"}
    return kept, 9


def test_image_format_is_told_by_content(tmp_path):
    assert image_format(_save(tmp_path / "x.jfif", 0, "JPEG")) == "jpeg"
    assert image_format(_save(tmp_path / "x.PNG", 0, "PNG")) == "png"
    assert image_format(_save(tmp_path / "x.png", 0, "JPEG")) == "jpeg"  # the name lies
    assert image_format(_save(tmp_path / "x.tif", 0, "TIFF", bits=16)) == "tiff"
    assert image_format(_dcm(tmp_path / "noext", 0, {"Modality": "DX"})) == "dicom"
    assert image_format(write_bare_dicom(tmp_path / "1.2.840.7", 1)) == "dicom"
    assert image_format(_write(tmp_path / "notes.txt", "PA view\n")) is None
    assert image_format(tmp_path / "absent.png") is None
    assert is_dicom_file(tmp_path / "noext") and not is_dicom_file(tmp_path / "notes.txt")


def test_read_image_reads_dicom_without_extension(tmp_path):
    reference = read_image(_dcm(tmp_path / "ref.dcm", 3, {"Modality": "DX"}))
    assert np.array_equal(read_image(_dcm(tmp_path / "scan", 3, {"Modality": "DX"})), reference)
    bare = read_image(write_bare_dicom(tmp_path / "1.2.840.9", 3))
    assert bare.shape == (32, 32) and np.array_equal(bare, reference)


def test_folders_imports_images_by_content_and_reports_other_files(tmp_path):
    root = tmp_path / "set"
    kept, n_files = _mixed_folder_set(root)
    result = _import("folders", root)
    assert {Path(p).name for p in result.manifest["image_id"]} == kept
    rows = _rows(result)
    assert rows.loc["set/covid19/scan", "path"].startswith("cxrlib_cache/dicom/")
    assert rows.loc["set/covid19/scan", "patient_id"] == pseudonymize("Z1", KEY, "set")
    assert rows.loc["set/covid19/a.jfif", "label"] == "covid19"
    assert rows.loc["set/control/e.tif", "label"] == "control"
    dropped = _dropped(result)
    assert dropped["set/control/readme.txt"] == "not an image: text file"
    assert dropped["set/control/garbage.png"].startswith("unrecognised file format")
    assert "00 01 02 03" in dropped["set/control/garbage.png"]
    assert dropped["set/control/.DS_Store"].startswith("unrecognised file format")
    _assert_nothing_lost(result, n_files)


def test_cli_import_prints_the_accounting(tmp_path, capsys):
    root = tmp_path / "set"
    kept, n_files = _mixed_folder_set(root)
    code = cli_main(["import", "folders", str(root), "-o", str(tmp_path / "out/set.csv"),
                     "--key-file", str(tmp_path / "key"), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert (f"accounting: {n_files} candidates = {len(kept)} in the manifest + "
            f"{n_files - len(kept)} left out (QC report)") in out
    assert "not an image" in out
    report = pd.read_csv(tmp_path / "out/set.qc.csv")
    assert (report["action"] == "dropped").sum() == n_files - len(kept)


def test_read_text_file_encodings(tmp_path):
    text = "notes\n38.5\u00b0C, S\u00e3o Paulo\n"
    cases = {"plain.csv": (text.encode("utf-8"), "utf-8"),
             "bom.csv": (text.encode("utf-8-sig"), "utf-8-sig"),
             "win.csv": (text.encode("cp1252"), "cp1252"),
             "utf16.txt": (text.encode("utf-16"), "utf-16")}
    for name, (data, encoding) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert read_text_file(tmp_path / name) == (text, encoding), name
    (tmp_path / "odd.txt").write_bytes(b"a\x81b\xb0")  # 0x81 is undefined in cp1252
    assert read_text_file(tmp_path / "odd.txt") == ("a\x81b\xb0", "latin-1")
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(text.encode("cp1252")))
    assert read_text_file(tmp_path / "t.csv.gz") == (text, "cp1252")


@pytest.mark.parametrize("encoding", ["cp1252", "utf-8-sig"])
def test_figure1_metadata_in_cp1252_or_with_bom(tmp_path, encoding):
    """The Figure 1 release's metadata.csv holds a degree sign in cp1252; others carry a BOM."""
    header = ACTUALMED_HEADER.replace(",imagename", "")
    text = (header + "\n"
            "COVID-00001,,F,50,COVID-19,,38.5\u00b0C,,PA,X-ray,,fever 38.5\u00b0C\n"
            "COVID-00002,,M,61,,,,,PA,X-ray,,T 39\u00b0C S\u00e3o Paulo\n")
    (tmp_path / "metadata.csv").write_bytes(text.encode(encoding))
    _save(tmp_path / "images/COVID-00001.jfif", 1, "JPEG")
    write_png(tmp_path / "images/COVID-00002.png", 2)
    write_png(tmp_path / "images/unlisted.png", 3)
    result = _import("actualmed", tmp_path)
    rows = _rows(result)
    first = rows.loc["figure1/images/COVID-00001.jfif"]
    assert (first.label, first.sex, first.age) == ("covid19", "F", 50.0)
    assert first.patient_id == pseudonymize("COVID-00001", KEY, "figure1")
    dropped = _dropped(result)
    assert dropped["figure1/images/COVID-00002.png"] == \
        "finding is blank (notes: T 39\u00b0C S\u00e3o Paulo)"
    assert dropped["figure1/images/unlisted.png"] == "image file not listed in the metadata"
    _assert_nothing_lost(result, 3)
    assert result.meta["metadata_encodings"] == {"metadata.csv": encoding}
    written = write_import_result(result, tmp_path / "out" / "figure1.csv")
    sidecar = json.loads(sidecar_path(written["manifest"]).read_text())
    assert sidecar["metadata_encodings"] == {"metadata.csv": encoding}


def test_metadata_importers_report_unlisted_and_non_image_files(tmp_path):
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position")
    _write(tmp_path / "Data_Entry_2017.csv", header + "\n"
           "00000001_000.png,No Finding,0,1,58,M,PA\n00000002_000.png,No Finding,0,2,40,F,PA\n")
    write_png(tmp_path / "images_001/images/00000001_000.png", 0)
    _write(tmp_path / "images_001/images/00000002_000.png", "<html>quota exceeded</html>\n")
    write_png(tmp_path / "images_002/images/00000001_000.png", 1)  # a second copy
    write_png(tmp_path / "images_002/images/00009999_000.png", 2)
    _write(tmp_path / "README", "ChestX-ray8\n")  # neither an image nor listed: not a candidate
    result = _import("nih", tmp_path)
    assert list(result.manifest["image_id"]) == ["nih/00000001_000.png"]
    dropped = _dropped(result)
    assert dropped["nih/00000002_000.png"] == "not an image: text file"
    assert dropped["nih/images_002/images/00009999_000.png"] == \
        "image file not listed in the metadata"
    assert dropped["nih/images_002/images/00000001_000.png"] == (
        "image file not listed in the metadata (the metadata row of that name uses "
        "images_001/images/00000001_000.png)")
    _assert_nothing_lost(result, 4)


def test_covidgr_reports_stray_files_and_severity_rows_without_image(tmp_path):
    root = tmp_path / "COVIDGR-1.0"
    write_png(root / "N/n1.jpg", 0)
    _save(root / "P/p1.JPG", 1, "JPEG")
    (root / "P/Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64)
    (root / "severity.csv").write_bytes("Name,Severity\np1.JPG,MILD\np7.jpg,SEVERE\n"
                                        .encode("utf-8-sig"))
    result = _import("covidgr", root)
    rows = _rows(result)
    assert rows.loc["covidgr/P/p1.JPG", "severity"] == "mild"
    dropped = _dropped(result)
    assert dropped["covidgr/P/Thumbs.db"].startswith("unrecognised file format")
    assert dropped["covidgr/P/p7.jpg"] == "image file not found: P/p7.jpg"
    assert result.meta["metadata_encodings"] == {"severity.csv": "utf-8-sig"}
    _assert_nothing_lost(result, 4)


def test_shenzhen_reads_cp1252_readings_and_reports_stray_files(tmp_path):
    root = tmp_path / "ChinaSet_AllFiles"
    write_png(root / "CXR_png/CHNCXR_0001_0.png", 0)
    (root / "CXR_png/Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\x00" * 60)
    (root / "ClinicalReadings").mkdir()
    (root / "ClinicalReadings/CHNCXR_0001_0.txt").write_bytes("Male 35yrs\nT 38\xb0C\n"
                                                               .encode("cp1252"))
    result = _import("shenzhen", tmp_path)
    row = _rows(result).loc["shenzhen/CHNCXR_0001_0.png"]
    assert (row.sex, row.age) == ("M", 35.0)
    assert _dropped(result)["shenzhen/ChinaSet_AllFiles/CXR_png/Thumbs.db"].startswith(
        "unrecognised file format")
    assert result.meta["metadata_encodings"] == {"ClinicalReadings (*.txt)": "cp1252"}
    _assert_nothing_lost(result, 2)


def test_hm_reads_a_cp1252_semicolon_table(tmp_path):
    table = ("PATIENT ID;EDAD/AGE;SEXO/SEX;DIAG ING/INPAT;MOTIVO\n"
             "1001;72;MALE;COVID19 - POSITIVO;fiebre 38,5\u00baC, tos\n")
    (tmp_path / "CDSL_01.csv").write_bytes(table.encode("cp1252"))
    _dcm(tmp_path / "1001/a.dcm", 0, {"PatientID": "1001", "Modality": "DX",
                                      "ViewPosition": "PA"})
    result = _import("hm", tmp_path)
    assert _rows(result).loc["hm/1001/a.dcm", "label"] == "covid19"
    assert result.meta["metadata_encodings"] == {"CDSL_01.csv": "cp1252"}
    _assert_nothing_lost(result, 1)


def test_bimcv_reports_broken_sidecars_and_foreign_names(tmp_path):
    rx = tmp_path / "sub-S0001/ses-E0001/mod-rx"
    write_png(rx / "sub-S0001_ses-E0001_run-1_bp-chest_vp-pa_cr.png", 0)
    _write(rx / "sub-S0001_ses-E0001_run-1_bp-chest_vp-pa_cr.json", "{not json")
    write_png(rx / "sub-S0001_ses-E0001_run-2_bp-chest_vp-ap_cr.png", 1)
    _write(rx / "sub-S0001_ses-E0001_run-2_bp-chest_vp-ap_cr.json",
           '{"00100040": {"vr": "CS", "Value": ["F"]}}')
    write_png(rx / "sub-S0001.png", 2)
    result = _import("bimcv", tmp_path)
    assert _rows(result)["sex"].tolist() == ["F"]
    dropped = _dropped(result)
    assert "is not valid JSON" in next(v for k, v in dropped.items() if "run-1" in k)
    assert "is not a BIMCV" in next(v for k, v in dropped.items() if k.endswith("S0001.png"))
    assert result.meta["metadata_encodings"] == {"sidecars (*.json)": "utf-8"}
    _assert_nothing_lost(result, 3)
