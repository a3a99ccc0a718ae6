"""Issue 16: bad input never crashes and never silently loses or corrupts data.

Degenerate pixels (DICOM RescaleSlope 0, constant images), truncated files behind valid magic
bytes, EXIF orientation, manifest paths leaving the data root, unreadable manifest files,
typed corpus configs and mapping files, an import ROOT that is a file; every entry of a scanned
folder accounted for (BMP, links, DICOMs found by content), QC rows that carry their source, an
import or corpus of 0 images, what a corpus can support, and a run folder that belongs to one
manifest and one set of settings.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import write_bare_dicom, write_png
from cxrlib.analysis import audit
from cxrlib.data import qc
from cxrlib.data.corpus import EmptyManifestError, compose_corpus, load_corpus_config, write_corpus
from cxrlib.data.dicom import DicomError, read_dicom, write_dicom
from cxrlib.data.images import DegenerateImageError, read_image
from cxrlib.data.importers import ImportOptions, run_importer
from cxrlib.data.importers.common import accounting, write_import_result
from cxrlib.data.manifest import ManifestError, load_manifest, sidecar_path
from cxrlib.data.pixel_checks import degenerate_reason
from cxrlib.run_folder import (
    RunFolderConflict,
    changed_outputs,
    check_run_settings,
    claim_cohorts,
    failed_outputs,
    output_files,
    run_settings,
    set_aside_outputs,
    write_run_claim,
)

KEY = b"test-key-0123456789abcdef"


def _dcm(path, seed, tags):
    pixels = (np.random.default_rng(seed).random((32, 32)) * 4095).astype(np.uint16)
    return write_dicom(pixels, path, tags, bits_stored=12)


def _folders(root, **options):
    return run_importer("folders", root, ImportOptions(key=KEY, **options),
                        mapping={"source": "set"})


def _dropped(result):
    report = result.report[result.report["action"] == "dropped"]
    return dict(zip(report["image_id"], report["reason"]))


def _assert_accounted(result, n_candidates):
    counts = accounting(result)
    assert counts == {"candidates": n_candidates, "in_manifest": len(result.manifest),
                      "left_out": n_candidates - len(result.manifest)}
    assert result.meta["n_images"] + result.meta["n_dropped"] == n_candidates
    assert result.meta["n_images"] == len(result.manifest)


# ------------------------------------------------------------------- degenerate pixel data
def test_dicom_with_rescale_slope_zero_is_an_error(tmp_path):
    path = _dcm(tmp_path / "slope0.dcm", 0, {"RescaleSlope": 0, "RescaleIntercept": 0})
    with pytest.raises(DegenerateImageError, match="degenerate pixel data: rescale slope 0"):
        read_image(path)
    with pytest.raises(DicomError, match=r"slope0\.dcm: degenerate pixel data"):
        read_dicom(path)


def test_dicom_with_rescale_slope_zero_goes_to_the_qc_report(tmp_path):
    _dcm(tmp_path / "covid19/good.dcm", 1, {"Modality": "DX"})
    _dcm(tmp_path / "covid19/slope0.dcm", 2, {"Modality": "DX", "RescaleSlope": 0,
                                              "RescaleIntercept": 0})
    result = _folders(tmp_path)
    assert result.manifest["image_id"].tolist() == ["set/covid19/good.dcm"]
    assert _dropped(result)["set/covid19/slope0.dcm"] == \
        "degenerate pixel data: rescale slope 0"
    _assert_accounted(result, 2)


def test_constant_png_is_an_error_and_a_qc_row(tmp_path):
    blank = tmp_path / "covid19/blank.png"
    blank.parent.mkdir(parents=True)
    Image.fromarray(np.full((40, 32), 7, np.uint8)).save(blank)
    write_png(tmp_path / "covid19/ok.png", 0)
    with pytest.raises(DegenerateImageError, match="degenerate pixel data: constant image"):
        read_image(blank)
    result = _folders(tmp_path)
    assert result.manifest["image_id"].tolist() == ["set/covid19/ok.png"]
    assert _dropped(result)["set/covid19/blank.png"].startswith(
        "degenerate pixel data: constant image")
    _assert_accounted(result, 2)


def test_degenerate_rule_spares_real_looking_images():
    rng = np.random.default_rng(0)
    assert degenerate_reason(rng.random((64, 64)).astype(np.float32)) is None
    two_level = np.zeros((8, 8), np.uint16)
    two_level[:, 4:] = 4095  # a test pattern: two levels, large spread
    assert degenerate_reason(two_level, 4095.0) is None
    almost_blank = np.zeros((100, 100), np.float32)
    almost_blank[0, 0] = 1.0
    assert "near-constant" in degenerate_reason(almost_blank)
    assert "non-finite" in degenerate_reason(np.array([[0.1, np.nan], [0.3, 0.4]]))


@pytest.mark.parametrize("name, seed", [("cut.png", 3), ("cut.jpg", 4), ("cut.tif", 5)])
def test_truncated_image_with_valid_magic_is_a_qc_row(tmp_path, name, seed):
    write_png(tmp_path / "covid19/ok.png", 0, shape=(64, 64))
    cut = write_png(tmp_path / "covid19" / name, seed, shape=(256, 256))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 3])
    result = _folders(tmp_path)
    assert result.manifest["image_id"].tolist() == ["set/covid19/ok.png"]
    assert _dropped(result)[f"set/covid19/{name}"].startswith("unreadable image: ")
    _assert_accounted(result, 2)
    with pytest.raises(ValueError, match=name):  # the strict helper names the file
        qc.add_image_hashes(pd.DataFrame({"image_id": ["x"], "path": [f"covid19/{name}"]}),
                            tmp_path)


# ------------------------------------------------------------------------ EXIF orientation
def test_exif_orientation_is_applied(tmp_path):
    pixels = (np.random.default_rng(0).random((40, 30)) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "phone.jpg")
    assert image.shape == (30, 40)
    shown = np.rot90(pixels, k=-1).astype(np.float32) / 255
    assert np.abs(image - shown).mean() < 0.1  # JPEG is lossy


# -------------------------------------------------------------------- paths inside the root
def _manifest(folder, paths, meta=None, column="path"):
    folder.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({"image_id": [f"i{k}" for k in range(len(paths))],
                       "path": ["in.png"] * len(paths), "patient_id": "p", "source": "s",
                       "label": "control"})
    df[column] = paths
    csv = folder / "m.csv"
    df.to_csv(csv, index=False)
    sidecar_path(csv).write_text(json.dumps({"data_root": ".", **(meta or {})}))
    return csv


@pytest.mark.parametrize("column", ["path", "lung_mask_path", "lesion_mask_path"])
def test_paths_leaving_the_data_root_are_errors(tmp_path, column):
    write_png(tmp_path / "outside.png", 0)
    write_png(tmp_path / "m/in.png", 1)
    csv = _manifest(tmp_path / "m", ["in.png", "../outside.png"], column=column)
    with pytest.raises(ManifestError, match=rf"row 1, column '{column}'.*leaves the data root"):
        load_manifest(csv)
    csv = _manifest(tmp_path / "m", [str(tmp_path / "outside.png")], column=column)
    with pytest.raises(ManifestError, match=rf"row 0, column '{column}'.*absolute"):
        load_manifest(csv, check_files=False)


def test_paths_outside_the_root_allowed_by_the_sidecar(tmp_path):
    write_png(tmp_path / "outside.png", 0)
    csv = _manifest(tmp_path / "m", ["../outside.png"], {"allow_paths_outside_root": True})
    assert load_manifest(csv)["path"].tolist() == ["../outside.png"]
    sidecar_path(csv).write_text(json.dumps({"allow_paths_outside_root": "yes"}))
    with pytest.raises(ManifestError, match="must be true or false"):
        load_manifest(csv)


def test_import_with_an_outside_cache_marks_its_sidecar(tmp_path):
    root = tmp_path / "data"
    _dcm(root / "covid19/a.dcm", 0, {"Modality": "DX"})
    result = _folders(root, cache_dir=tmp_path / "cache")
    written = write_import_result(result, tmp_path / "out/set.csv")
    assert json.loads(sidecar_path(written["manifest"]).read_text())[
        "allow_paths_outside_root"] is True
    assert load_manifest(written["manifest"])["path"].str.startswith("../cache/").all()
    inside = _folders(root)  # default cache inside ROOT: no key
    assert "allow_paths_outside_root" not in inside.meta


def test_corpus_of_an_outside_cache_import_keeps_the_permission(tmp_path):
    _dcm(tmp_path / "data/covid19/a.dcm", 0, {"Modality": "DX", "ViewPosition": "PA"})
    result = _folders(tmp_path / "data", cache_dir=tmp_path / "cache")
    write_import_result(result, tmp_path / "m/set.csv")
    config = _corpus(tmp_path, "sources: [{manifest: m/set.csv}]\n")
    corpus = compose_corpus(load_corpus_config(config))
    assert corpus.meta["allow_paths_outside_root"] is True
    written = write_corpus(corpus, tmp_path / "m/corpus.csv")
    assert load_manifest(written["manifest"])["path"].str.startswith("../cache/").all()


def test_csv_import_row_pointing_outside_root_is_dropped(tmp_path):
    root = tmp_path / "data"
    write_png(root / "a.png", 0)
    write_png(tmp_path / "escape.png", 1)
    (root / "meta.csv").write_text("file,dx\na.png,normal\n../escape.png,normal\n")
    result = run_importer("csv", root, ImportOptions(key=KEY), mapping={
        "source": "s", "csv": "meta.csv", "columns": {"file": "path"},
        "constants": {"label": "control"}})
    assert result.manifest["path"].tolist() == ["a.png"]
    assert _dropped(result)["s/../escape.png"] == "path outside the source root: ../escape.png"
    _assert_accounted(result, 2)


# ------------------------------------------------------------- manifest files that name it
def test_empty_manifest_csv_names_the_file(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ManifestError, match=r"empty\.csv: the manifest is empty"):
        load_manifest(tmp_path / "empty.csv")
    (tmp_path / "blank.csv").write_text("\n\n")
    with pytest.raises(ManifestError, match=r"blank\.csv"):
        load_manifest(tmp_path / "blank.csv")


def test_cp1252_manifest_is_decoded(tmp_path):
    write_png(tmp_path / "a.png", 0)
    text = "image_id,path,patient_id,source,label\na,a.png,p1,Cl\u00ednica \u00b0,control\n"
    (tmp_path / "m.csv").write_bytes(text.encode("cp1252"))
    assert load_manifest(tmp_path / "m.csv")["source"].tolist() == ["Cl\u00ednica \u00b0"]


def test_corrupt_sidecar_names_the_file(tmp_path):
    write_png(tmp_path / "a.png", 0)
    csv = _manifest(tmp_path, ["a.png"])
    sidecar_path(csv).write_text('{"data_root": ".",')
    with pytest.raises(ManifestError, match=r"m\.meta\.json: manifest sidecar is not valid JSON"):
        load_manifest(csv)
    sidecar_path(csv).write_text("[1, 2]")
    with pytest.raises(ManifestError, match="must hold a JSON object"):
        load_manifest(csv)


# --------------------------------------------------------------------- typed corpus config
def _corpus(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ('frontal_only: "false"\nsources: [{manifest: a.csv}]\n',
     r"'frontal_only' must be true or false, got 'false'"),
    ("keep_unknown_projection: 1\nsources: [{manifest: a.csv}]\n",
     r"'keep_unknown_projection' must be true or false"),
    ("sources:\n  - manifest: a.csv\n    labels: covid19\n",
     r"sources\[0\] 'labels' must be a list of labels such as \[covid19\]"),
    ("near_duplicate_max_distance: twenty\nsources: [{manifest: a.csv}]\n",
     r"'near_duplicate_max_distance' must be an integer, got 'twenty'"),
    ("name: x\nsources:\n\t- manifest: a.csv\n", r"c\.yaml: not valid YAML"),
    ("sources: a.csv\n", r"'sources' must be a list"),
])
def test_corpus_config_values_are_typed(tmp_path, text, message):
    with pytest.raises(ValueError, match=message) as info:
        load_corpus_config(_corpus(tmp_path, text))
    assert "c.yaml" in str(info.value)


def test_corpus_config_real_booleans_still_read(tmp_path):
    config = load_corpus_config(_corpus(
        tmp_path, "frontal_only: false\nnear_duplicate_max_distance: -1\n"
                  "sources: [{manifest: a.csv, labels: [covid19]}]\n"))
    assert config.frontal_only is False and config.near_duplicate_max_distance == -1
    assert config.sources[0].labels == ("covid19",)


# ---------------------------------------------------------------------------- mapping files
@pytest.mark.parametrize("regex, message", [
    ("(abc", r"'patient_regex' '\(abc' is not a valid regular expression"),
    ("abc", r"'patient_regex' 'abc' has no capturing group"),
])
def test_patient_regex_errors_name_the_key(tmp_path, regex, message):
    write_png(tmp_path / "data/covid19/abc_1.png", 0)
    mapping = tmp_path / "map.yaml"
    mapping.write_text(f"source: s\npatient_regex: '{regex}'\n")
    with pytest.raises(ValueError, match=message) as info:
        run_importer("folders", tmp_path / "data", ImportOptions(key=KEY), mapping=mapping)
    assert "map.yaml" in str(info.value)
    with pytest.raises(ValueError, match=message):  # a mapping given as a dict
        run_importer("folders", tmp_path / "data", ImportOptions(key=KEY),
                     mapping={"source": "s", "patient_regex": regex})


def test_tab_indented_mapping_names_the_file(tmp_path):
    write_png(tmp_path / "data/covid19/a.png", 0)
    mapping = tmp_path / "map.yaml"
    mapping.write_text("source: s\nlabels:\n\tN: control\n")
    with pytest.raises(ValueError, match=r"map\.yaml.*tabs"):
        run_importer("folders", tmp_path / "data", ImportOptions(key=KEY), mapping=mapping)


def test_import_root_that_is_a_file(tmp_path):
    root = tmp_path / "data.zip"
    root.write_bytes(b"PK\x03\x04")
    with pytest.raises(NotADirectoryError, match=r"data\.zip is a file, not a folder"):
        run_importer("folders", root, ImportOptions(key=KEY))
    with pytest.raises(ValueError, match="is a file, not a folder"):  # CLI: exit 2
        run_importer("nih", root, ImportOptions(key=KEY))


# ----------------------------------------------- every entry of a scanned folder accounted for
def _odd_entries(folder, outside):
    """A BMP, a dangling link, a link loop and a link to a folder (``outside``) in ``folder``;
    returns entry name -> the start of its QC reason in a folder-per-class import."""
    folder.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(9).random((40, 32)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / "pic.bmp")
    (folder / "gone.png").symlink_to(folder / "missing.png")
    (folder / "loop_a").symlink_to(folder / "loop_b")
    (folder / "loop_b").symlink_to(folder / "loop_a")
    (folder / "more").symlink_to(outside, target_is_directory=True)
    return {"pic.bmp": "unsupported image format BMP", "gone.png": "broken symbolic link",
            "loop_a": "symbolic link loop", "loop_b": "symbolic link loop",
            "more": "symbolic link to a folder, not followed"}


def _assert_one_kept(result, kept, folder, expected):
    """``kept`` (an image_id) alone in the manifest, each entry of ``expected`` (name -> start
    of the reason) in the QC report as ``<folder>/<name>``, every candidate accounted for."""
    assert result.manifest["image_id"].tolist() == [kept]
    dropped = _dropped(result)
    for name, reason in expected.items():
        assert dropped[f"{folder}/{name}"].startswith(reason), name
    _assert_accounted(result, 1 + len(expected))


def test_folders_import_reports_bmp_and_links(tmp_path):
    write_png(tmp_path / "data/covid19/ok.png", 0)
    expected = _odd_entries(tmp_path / "data/covid19", tmp_path / "elsewhere")
    _assert_one_kept(_folders(tmp_path / "data"), "set/covid19/ok.png", "set/covid19", expected)


def test_metadata_import_accounts_for_every_entry_of_its_folders(tmp_path):
    root = tmp_path / "nih"
    root.mkdir()
    (root / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position\na.png,No Finding,0,1,58,M,PA\n")
    write_png(root / "images/a.png", 0)
    expected = _odd_entries(root / "images", tmp_path / "elsewhere")
    expected["pic.bmp"] = "image file not listed in the metadata"
    _dcm(root / "images/scan.IMA", 1, {"Modality": "DX"})  # DICOM by content, any suffix
    write_bare_dicom(root / "images/export.bin", 2)  # no preamble, no file meta
    expected.update({"scan.IMA": "image file not listed", "export.bin": "image file not listed"})
    _assert_one_kept(run_importer("nih", root, ImportOptions(key=KEY)), "nih/a.png",
                     "nih/images", expected)


def test_qc_rows_of_the_value_normaliser_carry_the_source(tmp_path):
    write_png(tmp_path / "covid19/a.png", 0)
    result = run_importer("folders", tmp_path, ImportOptions(key=KEY),
                          mapping={"source": "set", "constants": {"sex": "X"}})
    flagged = result.report[result.report["action"] == "flagged"]
    assert flagged["reason"].tolist() == ["sex value 'X' is not in the schema: left empty"]
    assert flagged["source"].tolist() == ["set"]


# ---------------------------------------------------------------- an import of 0 images
def test_an_import_that_keeps_no_image_leaves_the_earlier_manifest(tmp_path):
    from cxrlib.__main__ import main as cli_main

    image = write_png(tmp_path / "data/covid19/a.png", 0)
    written = write_import_result(_folders(tmp_path / "data"), tmp_path / "m/set.csv")
    files = [*written.values(), sidecar_path(written["manifest"])]
    before = {p: p.read_bytes() for p in files}
    image.write_text("<html>quota exceeded</html>\n")  # the export went wrong
    result = _folders(tmp_path / "data")
    assert len(result.manifest) == 0
    with pytest.raises(EmptyManifestError, match=(
            r"set import kept 0 images, so nothing was written: the earlier manifest "
            r".*set\.csv and its QC report are left as they were\. Left out: 1 not an image "
            r"\(e\.g\. covid19/a\.png\)")):
        write_import_result(result, tmp_path / "m/set.csv")
    assert cli_main(["import", "folders", str(tmp_path / "data"), "-o", str(written["manifest"]),
                     "--key-file", str(tmp_path / "key"), "--quiet"]) == 2
    assert {p: p.read_bytes() for p in files} == before


def test_a_corpus_that_keeps_no_image_is_not_written(tmp_path):
    write_png(tmp_path / "data/covid19/a.png", 0)
    write_import_result(_folders(tmp_path / "data"), tmp_path / "m/set.csv")
    config = _corpus(tmp_path, "name: mine\nsources: [{manifest: m/set.csv, labels: "
                               "[pneumonia]}]\n")
    corpus = compose_corpus(load_corpus_config(config))
    with pytest.raises(EmptyManifestError, match=r"corpus mine kept 0 images, so .*mine\.csv "
                                                 r"was not written\. Left out: 1 class covid19"):
        write_corpus(corpus, tmp_path / "mine.csv")
    assert not (tmp_path / "mine.csv").exists()


# ----------------------------------------------------- what a corpus can support (notebook 00)
def _corpus_of(labels_per_patient):
    rows = [{"image_id": f"{p}_{k}", "patient_id": p, "label": label}
            for p, (label, n) in labels_per_patient.items() for k in range(n)]
    return pd.DataFrame(rows)


def test_corpus_support_counts_patient_groups_against_the_folds():
    df = _corpus_of({"a": ("control", 2), "b": ("control", 1), "c": ("covid19", 3)})
    support = audit.corpus_support(df, folds=2)
    assert support.to_dict("records") == [
        {"class": "control", "images": 3, "patient_groups": 2, "folds": 2, "enough": True},
        {"class": "covid19", "images": 3, "patient_groups": 1, "folds": 2, "enough": False}]
    df["qc_patient_group"] = ["g", "g", "g", "h", "h", "h"]  # duplicates join a and b
    assert audit.corpus_support(df, folds=2)["patient_groups"].tolist() == [1, 1]


@pytest.mark.parametrize("patients, message", [
    ({"a": ("covid19", 1), "b": ("covid19", 1)},
     r"the corpus has 1 class\(es\) \(covid19\); .*need at least two"),
    ({"a": ("covid19", 1), "b": ("covid19", 1), "c": ("control", 1), "d": ("control", 1),
      "e": ("control", 1)},
     r"class covid19 has 2 patient group\(s\), fewer than the 3 folds of profile smoke: a test "
     r"fold would hold no covid19 image; .*\(-p profile\.folds=2\)"),
])
def test_a_corpus_that_cannot_support_the_study_says_why(patients, message):
    support = audit.corpus_support(_corpus_of(patients), folds=3)
    with pytest.raises(audit.CorpusCannotSupport, match=message):
        audit.require_support(support, "smoke")


def test_a_corpus_that_supports_the_study_says_so():
    df = _corpus_of({p: ("control" if k % 2 else "covid19", 1) for k, p in enumerate("abcd")})
    assert audit.require_support(audit.corpus_support(df, folds=2), "smoke").startswith(
        "The corpus supports the study: 2 classes, each with at least 2 patient groups")


@pytest.mark.notebook
def test_notebook_00_stops_a_one_class_corpus_with_the_reason(tmp_path, tiny_cohort):
    from cxrlib.data.manifest import write_manifest
    from cxrlib.runner import NotebookFailed, run_study

    df, root = tiny_cohort
    csv = tmp_path / "one_class.csv"
    write_manifest(df.assign(label="covid19", severity="mild"), csv, data_root=root)
    with pytest.raises(NotebookFailed, match=r"00_data_audit.*CorpusCannotSupport: this corpus "
                                             r"cannot support the study: the corpus has 1 class"):
        run_study("smoke", manifest=csv, out_dir=tmp_path / "run", only=["00"],
                  log=lambda *a: None)
    stale = tmp_path / "run/one_class/stale/00_data_audit/tables/corpus_support.csv"
    assert pd.read_csv(stale)["class"].tolist() == ["covid19"]  # stated, then set aside


# ------------------------------------------------- one run folder, one manifest and settings
def test_run_folder_claim_refuses_other_settings_naming_each(tmp_path):
    run = tmp_path / "run"
    settings = run_settings("smoke", {}, 0, {"threshold": 0.5, "profile.epochs": 2})
    assert settings["parameters"] == {"threshold": 0.5}
    claim = check_run_settings(run, settings)  # no folder yet: a new claim
    run.mkdir()
    write_run_claim(run, claim)
    assert check_run_settings(run, settings)["settings_hash"] == claim["settings_hash"]
    with pytest.raises(RunFolderConflict) as info:
        check_run_settings(run, run_settings("default", {"cls_folds": 1}, 1, {}))
    message = str(info.value)
    for part in ("profile: 'smoke' in the folder, 'default' now", "seed: 0 in the folder, 1 now",
                 "profile.cls_folds: not set in the folder, 1 now",
                 "threshold: 0.5 in the folder, not set now", "--fresh"):
        assert part in message


def test_run_folder_claim_refuses_another_manifest_for_a_cohort(tmp_path):
    write_png(tmp_path / "m/in.png", 0)
    csv = _manifest(tmp_path / "m", ["in.png"])
    settings = run_settings("smoke", {}, 0, {})
    claim = claim_cohorts(check_run_settings(tmp_path / "run", settings), tmp_path / "run",
                          {"m": csv})
    claim_cohorts(claim, tmp_path / "run", {"m": csv})  # the same content: taken
    csv.write_text(csv.read_text().replace("control", "covid19"))
    with pytest.raises(RunFolderConflict, match=r"cohort 'm' was run on another manifest: "
                                                r".*m\.csv \(sha256 \w{12}\) in the folder"):
        claim_cohorts(claim, tmp_path / "run", {"m": csv})
    (tmp_path / "run").mkdir()
    (tmp_path / "run/old.csv").write_text("a\n")
    with pytest.raises(RunFolderConflict, match="holds files but no study.json"):
        check_run_settings(tmp_path / "run", settings)


def test_a_failed_notebook_sets_its_own_outputs_aside(tmp_path):
    cohort = tmp_path / "cohort"
    for rel in ("tables/flow.csv", "tables/a.csv", "artifacts/model.pt"):
        (cohort / rel).parent.mkdir(parents=True, exist_ok=True)
        (cohort / rel).write_text("old\n")
    before = output_files(cohort)
    (cohort / "tables/b.csv").write_text("partial\n")
    (cohort / "tables/flow.csv").write_text("new\n")
    stamp = before["tables/flow.csv"] + 10**9  # rewritten a second later, as by a notebook
    os.utime(cohort / "tables/flow.csv", ns=(stamp, stamp))
    written = changed_outputs(cohort, before)
    assert written == ["tables/b.csv", "tables/flow.csv"]
    notebooks = {"00.ipynb": {"outputs": ["tables/flow.csv"]},
                 "01.ipynb": {"outputs": ["tables/a.csv", "artifacts/model.pt", "tables/c.csv"]}}
    own, shared = failed_outputs(notebooks, "01.ipynb", written)
    assert own == ["artifacts/model.pt", "tables/a.csv", "tables/b.csv", "tables/c.csv"]
    assert shared == ["tables/flow.csv"]
    assert set_aside_outputs(cohort, "01", own) == own[:3]  # c.csv was gone already
    assert sorted(output_files(cohort)) == ["tables/flow.csv"]
    assert (cohort / "stale/01/tables/b.csv").read_text() == "partial\n"
