"""Corpus composition: class rules, common data root, QC, and the bad-input corpus."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from conftest import write_png
from cxrlib.data.corpus import carry_split_plans, compose_corpus, load_corpus_config, write_corpus
from cxrlib.data.dicom import write_dicom
from cxrlib.data.importers import ImportOptions, run_importer
from cxrlib.__main__ import main as cli_main
from cxrlib.data.importers.common import write_import_result
from cxrlib.data.manifest import ManifestError, load_manifest, write_manifest
from cxrlib.paths import MANIFESTS_DIR

KEY = b"test-key-0123456789abcdef"


def _manifest(rows):
    return pd.DataFrame(rows, columns=["image_id", "path", "patient_id", "source", "label",
                                       "projection"])


def _config(path, sources, **extra):
    lines = [f"name: {path.stem}"] + [f"{k}: {v}" for k, v in extra.items()] + ["sources:"]
    for manifest, labels in sources:
        lines.append(f"  - manifest: {manifest}")
        if labels is not None:
            lines.append(f"    labels: [{', '.join(labels)}]")
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_raw_manifest(csv_path, df, data_root):
    """A manifest CSV written without validation (as a user's hand-edited file could be)."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(csv_path, index=False)
    csv_path.with_name(csv_path.stem + ".meta.json").write_text(
        json.dumps({"data_root": str(data_root)}))
    return csv_path


def test_shipped_configs_follow_the_papers():
    arias = load_corpus_config(MANIFESTS_DIR / "arias2020_corpus.yaml")
    rules = {s.manifest.name: set(s.labels) for s in arias.sources}
    assert rules == {
        "bimcv.csv": {"covid19"}, "hm.csv": {"covid19"}, "actualmed.csv": {"covid19", "control"},
        "shenzhen.csv": {"control", "pneumonia"}, "montgomery.csv": {"control", "pneumonia"},
        "nih.csv": {"control", "pneumonia"}, "chexpert.csv": {"pneumonia"},
        "mimic.csv": {"pneumonia"}}
    assert arias.frontal_only and arias.name == "arias2020"
    tabik = load_corpus_config(MANIFESTS_DIR / "tabik2020_corpus.yaml")
    assert [(s.manifest.name, set(s.labels)) for s in tabik.sources] == \
        [("covidgr.csv", {"control", "covid19"})]


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['sorces'\]"):
        load_corpus_config(_config(tmp_path / "c.yaml", [], sorces="x"))
    with pytest.raises(ValueError, match=r"labels \['covid'\] are not in"):
        load_corpus_config(_config(tmp_path / "c.yaml", [("a.csv", ["covid"])]))
    with pytest.raises(FileNotFoundError, match="corpus config not found"):
        load_corpus_config(tmp_path / "none.yaml")


def test_merge_prefixes_paths_under_the_common_root(tmp_path):
    root_a, root_b = tmp_path / "data" / "A", tmp_path / "data" / "B" / "deep"
    write_png(root_a / "img/1.png", 1)
    write_png(root_a / "img/2.png", 2)
    write_png(root_b / "x.png", 3)
    write_png(root_b / "m.png", 4)
    manifests = tmp_path / "manifests"
    write_manifest(_manifest([("a/1", "img/1.png", "p1", "a", "covid19", "PA"),
                              ("a/2", "img/2.png", "p2", "a", "control", "PA")]),
                   manifests / "a.csv", data_root=root_a)
    b = _manifest([("b/x", "x.png", "q1", "b", "pneumonia", "AP")])
    b["lung_mask_path"] = ["m.png"]
    write_manifest(b, manifests / "b.csv", data_root=root_b)
    config = load_corpus_config(_config(manifests / "mix.yaml", [("a.csv", ["covid19"]),
                                                                 ("b.csv", None)]))
    result = compose_corpus(config)
    assert result.data_root == (tmp_path / "data").resolve()
    assert result.manifest["path"].tolist() == ["A/img/1.png", "B/deep/x.png"]
    assert result.manifest["lung_mask_path"].tolist()[1] == "B/deep/m.png"
    assert result.counts.loc["all", "all"] == 2 and result.counts.loc["a", "covid19"] == 1
    assert result.report.set_index("image_id").loc["a/2", "reason"].startswith(
        "class control is not taken from a.csv")
    written = write_corpus(result, tmp_path / "out" / "mix.csv")
    loaded = load_manifest(written["manifest"])  # files resolve from the stored common root
    assert loaded.attrs["data_root"] == str((tmp_path / "data").resolve())


def test_missing_manifest(tmp_path):
    config = load_corpus_config(_config(tmp_path / "c.yaml", [("gone.csv", None)]))
    with pytest.raises(FileNotFoundError, match="python -m cxrlib import"):
        compose_corpus(config)
    root = tmp_path / "r"
    write_png(root / "1.png", 1)
    write_manifest(_manifest([("a/1", "1.png", "p", "a", "control", "PA")]), tmp_path / "a.csv",
                   data_root=root)
    config = load_corpus_config(_config(tmp_path / "c.yaml", [("gone.csv", None),
                                                              ("a.csv", None)]))
    result = compose_corpus(config, allow_missing=True)
    assert len(result.manifest) == 1 and result.meta["missing_sources"][0].endswith("gone.csv")


def test_bad_input_corpus_gives_an_error_or_a_flag_for_each_case(tmp_path):
    """truncated DICOM, missing pixel data, MONOCHROME1, missing window tags, RGB DICOM, 16-bit
    PNG, 8-bit JPEG, lateral view, CT slice, manifest with a missing column, manifest pointing
    at a missing file, unknown label, duplicate image across two sources."""
    root = tmp_path / "bad"
    stored = (np.random.default_rng(0).random((32, 32)) * 4095).astype(np.uint16)
    stored[0, 0], stored[0, 1] = 0, 4095
    write_dicom(stored, root / "covid19/mono1.dcm", {"Modality": "CR", "ViewPosition": "PA"},
                photometric="MONOCHROME1", bits_stored=12)
    write_dicom(stored[::-1].copy(), root / "covid19/nowindow.dcm",
                {"Modality": "DX", "ViewPosition": "AP"}, bits_stored=12)
    write_dicom(stored.T.copy(), root / "covid19/lateral.dcm", {"Modality": "DX",
                                                               "ViewPosition": "LL"},
                bits_stored=12)
    write_dicom(stored, root / "covid19/ct.dcm", {"Modality": "CT"}, bits_stored=12)
    write_dicom(np.zeros((32, 32, 3), np.uint8), root / "covid19/rgb.dcm", {"Modality": "DX"},
                photometric="RGB")
    truncated = write_dicom(stored, root / "covid19/truncated.dcm", {}, bits_stored=12)
    truncated.write_bytes(truncated.read_bytes()[:-700])
    nopixels = write_dicom(stored, root / "covid19/nopixels.dcm", {}, bits_stored=12)
    ds = pydicom.dcmread(nopixels)
    del ds.PixelData
    ds.save_as(nopixels)
    write_png(root / "control/png16.png", 5, bits=16)
    Image.fromarray((np.random.default_rng(6).random((40, 32)) * 255).astype(np.uint8)).save(
        root / "control/jpeg8.jpg", quality=90)

    manifests = tmp_path / "manifests"
    result = run_importer("folders", root, ImportOptions(key=KEY))
    write_import_result(result, manifests / "bad.csv")
    rows = result.manifest.set_index("image_id")
    assert set(rows.index) == {"bad/covid19/mono1.dcm", "bad/covid19/nowindow.dcm",
                               "bad/covid19/lateral.dcm", "bad/control/png16.png",
                               "bad/control/jpeg8.jpg"}
    dropped = dict(zip(result.report["image_id"], result.report["reason"]))
    assert "cannot decode pixel data" in dropped["bad/covid19/truncated.dcm"]
    assert "no pixel data" in dropped["bad/covid19/nopixels.dcm"]
    assert "colour DICOM" in dropped["bad/covid19/rgb.dcm"]
    assert "modality 'CT'" in dropped["bad/covid19/ct.dcm"]
    mono1 = np.asarray(Image.open(root / rows.loc["bad/covid19/mono1.dcm", "path"]))
    assert mono1[0, 0] == 65535 and mono1[0, 1] == 0  # stored 0 is white in MONOCHROME1
    nowindow = np.asarray(Image.open(root / rows.loc["bad/covid19/nowindow.dcm", "path"]))
    assert nowindow.min() == 0 and nowindow.max() == 65535  # min..max stretch
    assert rows.loc["bad/covid19/lateral.dcm", "projection"] == "LAT"

    other_root = tmp_path / "other"
    other_root.mkdir()
    (other_root / "copy.png").write_bytes((root / "control/png16.png").read_bytes())
    write_png(other_root / "fine.png", 7)
    other = _manifest([("o/copy", "copy.png", "z1", "o", "control", "PA"),
                       ("o/gone", "gone.png", "z2", "o", "control", "PA"),
                       ("o/fine", "fine.png", "z3", "o", "control", "PA")])
    _write_raw_manifest(manifests / "other.csv", other, other_root)
    _write_raw_manifest(manifests / "nolabel.csv", other.drop(columns="label"), other_root)
    unknown = other.copy()
    unknown.loc[2, "label"] = "covid"
    _write_raw_manifest(manifests / "unknown.csv", unknown, other_root)

    with pytest.raises(ManifestError, match=r"missing required column\(s\) \['label'\]"):
        compose_corpus(load_corpus_config(_config(manifests / "c1.yaml",
                                                  [("nolabel.csv", None)])))
    with pytest.raises(ManifestError, match=r"row 2, column 'label': unknown value 'covid'"):
        compose_corpus(load_corpus_config(_config(manifests / "c2.yaml",
                                                  [("unknown.csv", None)])))

    config = load_corpus_config(_config(manifests / "corpus.yaml", [("bad.csv", None),
                                                                     ("other.csv", None)]))
    corpus = compose_corpus(config)
    kept = set(corpus.manifest["image_id"])
    assert kept == {"bad/covid19/mono1.dcm", "bad/covid19/nowindow.dcm", "bad/control/png16.png",
                    "bad/control/jpeg8.jpg", "o/fine"}
    reasons = corpus.report[corpus.report["action"] == "dropped"].set_index("image_id")["reason"]
    assert reasons["bad/covid19/lateral.dcm"] == "not a frontal view (projection LAT)"
    assert reasons["o/copy"] == "exact duplicate of bad/control/png16.png"
    assert reasons["o/gone"].startswith("path file not found")
    assert len(kept) + len(reasons) == len(result.manifest) + len(other)  # nothing lost


def test_tabik_config_carries_the_shipped_folds(tmp_path, capsys):
    root = tmp_path / "COVIDGR-1.0"
    for k, name in enumerate(["N/n1.jpg", "N/n2.jpg", "P/p1.jpg"]):
        write_png(root / name, k)
        write_png(root / f"COVIDGR1.05fcv1/partition{k % 2}/test" / name, k)
    manifests = tmp_path / "manifests"
    result = run_importer("covidgr", root, ImportOptions(key=KEY))
    write_import_result(result, manifests / "covidgr.csv")
    config = manifests / "tabik2020_corpus.yaml"
    config.write_text((MANIFESTS_DIR / "tabik2020_corpus.yaml").read_text())
    code = cli_main(["corpus", "--config", str(config), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "corpus tabik2020: 3 image(s)" in out and "COVIDGR" in out
    corpus = load_manifest(manifests / "tabik2020.csv")
    assert corpus["path"].tolist() == ["N/n1.jpg", "N/n2.jpg", "P/p1.jpg"]
    assert corpus["qc_patient_group"].nunique() == 3
    plan = pd.read_csv(manifests / "tabik2020.split_plan.csv")
    assert plan["fold"].tolist() == [0, 1, 0]
    assert plan["group"].tolist() == corpus["qc_patient_group"].tolist()


def test_shipped_plan_is_rejected_when_duplicates_straddle_its_folds():
    kept = pd.DataFrame({"image_id": ["a", "b", "c"], "patient_id": ["p1", "p2", "p3"],
                         "qc_patient_group": ["p1", "p1", "p3"]})  # a and b: near duplicates
    plan = pd.DataFrame({"image_id": ["a", "b", "c", "gone"], "group": ["x"] * 4,
                         "repetition": 0, "fold": [0, 1, 1, 0]})
    carried, why = carry_split_plans([plan], kept)
    assert carried is None and "group 'p1' appears in 2 folds" in why
    plan["fold"] = [0, 0, 1, 1]
    carried, why = carry_split_plans([plan], kept)
    assert why is None
    assert carried.values.tolist() == [["a", "p1", 0, 0], ["b", "p1", 0, 0], ["c", "p3", 0, 1]]


def test_cli_corpus_bad_config(tmp_path, capsys):
    bad = _config(tmp_path / "c.yaml", [("gone.csv", None)])
    assert cli_main(["corpus", "--config", str(bad), "--quiet"]) == 2
    assert "gone.csv not found" in capsys.readouterr().err
