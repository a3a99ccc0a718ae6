"""The real-data path end to end, as a user with their own corpus takes it: ``import folders`` of a
public-style 3-class folder set, ``corpus``, then ``run --profile smoke --manifest`` through every
notebook with no parameter and no lung mask anywhere.

The folder set holds what real distributions hold: the 12 real radiographs of ``real_sample``
(read from ``../shared``, skipped when it is absent, the test still runs), and images of the
synthetic generator written as JPEG (``.jpg``, ``.jfif``, ``.JPG``), PNG and DICOM without an
extension, under class folders named as a public set names them.
"""
from __future__ import annotations

import ast
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cxrlib.__main__ import main as cli_main
from cxrlib.data.dicom import write_dicom
from cxrlib.data.images import read_image
from cxrlib.data.manifest import load_manifest
from cxrlib.runner import RunRecord, list_notebooks
from cxrlib.data.synthetic import generate_cohort
from cxrlib.preprocess.synthetic_unet import real_sample_dir

pytestmark = pytest.mark.notebook

FOLDERS = {"covid19": "COVID", "control": "Normal", "pneumonia": "Viral Pneumonia"}
PER_CLASS = 16  # synthetic images per class; with the real ones, enough for the smoke folds


def _save(image: np.ndarray, path, kind: str) -> None:
    """Write a float image in [0, 1] as ``kind``: jpeg, png or dicom (any file name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "dicom":
        write_dicom((image * 4095).astype(np.uint16), path,
                    {"Modality": "CR", "ViewPosition": "PA", "PatientSex": "F"}, bits_stored=12)
        return
    pil = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
    pil.save(path, format="JPEG" if kind == "jpeg" else "PNG")


def build_folder_set(root, work) -> dict:
    """Write the public-style folder set under ``root``; return {kind: count} of what was
    written."""
    synth = generate_cohort(work / "synth", preset="arias", n_images=3 * PER_CLASS * 2, size=128,
                            seed=7, progress=False)
    synth_root = work / "synth"
    kinds = [("jpeg", ".jpg"), ("jpeg", ".jfif"), ("png", ".png"), ("dicom", ""), ("jpeg", ".JPG")]
    written = {"synthetic": 0, "real": 0}
    for label, folder in FOLDERS.items():
        rows = synth[synth["label"] == label].head(PER_CLASS)
        for k, rec in enumerate(rows.itertuples()):
            kind, suffix = kinds[k % len(kinds)]
            _save(read_image(synth_root / rec.path), root / folder / f"{label}-{k:03d}{suffix}",
                  kind)
            written["synthetic"] += 1
    sample = real_sample_dir()
    if sample is not None:
        meta = pd.read_csv(sample / "manifest.csv")
        for k, rec in enumerate(meta.itertuples()):
            folder = FOLDERS["covid19" if "COVID-19" in rec.finding else "pneumonia"]
            image = read_image(sample / rec.image)
            name = f"real-{k:02d}" + (".jfif" if k % 3 == 0 else ".png")
            _save(image, root / folder / name, "jpeg" if k % 3 == 0 else "png")
            written["real"] += 1
    return written


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """Import, compose and run the study on the folder set; return what each step left."""
    work = tmp_path_factory.mktemp("real_corpus")
    shared = tmp_path_factory.getbasetemp().parent  # the smoke study's data folder: same cohort
    root, manifests, out = work / "public_set", work / "manifests", work / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("CXR_DATA_DIR", str(shared / "smoke_data"))
    mp.setenv("OMP_NUM_THREADS", "1")
    mp.setenv("MKL_NUM_THREADS", "1")
    try:
        written = build_folder_set(root, work)
        mapping = work / "public_set.yaml"
        mapping.write_text(yaml.safe_dump({"source": "public3",
                                           "labels": {v: k for k, v in FOLDERS.items()}}))
        key = work / "pseudonym.key"
        assert cli_main(["import", "folders", str(root), "-o", str(manifests / "public3.csv"),
                         "--mapping", str(mapping), "--key-file", str(key), "--quiet"]) == 0
        config = manifests / "mine.yaml"
        config.write_text(yaml.safe_dump({"name": "mine", "sources": [
            {"manifest": "public3.csv"}]}))
        assert cli_main(["corpus", "--config", str(config), "--quiet"]) == 0
        code = cli_main(["run", "--profile", "smoke", "--manifest", str(manifests / "mine.csv"),
                         "--out", str(out)])
    finally:
        mp.undo()
    return {"written": written, "manifests": manifests, "out": out, "code": code}


def test_every_notebook_runs_on_a_corpus_without_masks(real_run):
    assert real_run["code"] == 0
    out = real_run["out"]
    record = RunRecord.from_json(out / "run.json")
    assert record.status == "ok" and record.cohorts == ["mine"]
    assert record.parameters == {} and record.profile_overrides == {}
    ran = {r.notebook for r in record.results if r.status == "ok"}
    assert ran == {nb.name for nb in list_notebooks()}


def test_every_file_is_imported(real_run):
    written = real_run["written"]
    manifest = load_manifest(real_run["manifests"] / "public3.csv")
    assert len(manifest) == written["synthetic"] + written["real"]
    assert manifest["lung_mask_path"].isna().all()
    assert manifest["path"].str.endswith(".jfif").sum() >= 3
    corpus = load_manifest(real_run["manifests"] / "mine.csv")
    assert len(corpus) == len(manifest)


def test_the_synthetic_unet_segmented_the_corpus(real_run):
    cohort = real_run["out"] / "mine"
    model = pd.read_csv(cohort / "tables" / "segmentation_model.csv")
    assert model.loc[0, "model"] == "synthetic cohort, adapted to the corpus"
    assert model.loc[0, "held_out_dice"] > 0.5
    if real_sample_dir() is not None:
        assert 0 < model.loc[0, "real_sample_dice"] <= 1
        assert 0 < model.loc[0, "real_sample_dice_adapted"] <= 1
        assert model.loc[0, "real_sample_dir"] == real_sample_dir().name  # no machine path
    qc = pd.read_csv(cohort / "artifacts" / "segmentation_qc.csv")
    corpus = load_manifest(real_run["manifests"] / "mine.csv")
    assert set(qc["image_id"]) == set(corpus["image_id"])
    html = (cohort / "01_lung_segmentation.html").read_text()
    # smoke's seg_ensemble: 2 U-Nets of seeds 0 and 1
    assert "ensemble of 2 U-Nets" in html and "embedded synthetic cohort" in html
    assert model.loc[0, "member_seeds"] == "[0, 1]"
    assert "Adaptation to this corpus" in html


def test_the_synthetic_unet_was_adapted_to_the_corpus_images(real_run):
    cohort = real_run["out"] / "mine"
    model = pd.read_csv(cohort / "tables" / "segmentation_model.csv").iloc[0]
    report = pd.read_csv(cohort / "tables" / "segmentation_adaptation.csv")
    corpus = load_manifest(real_run["manifests"] / "mine.csv")
    assert list(report["image_id"]) == list(corpus["image_id"])
    assert report["used"].sum() == model["adaptation_n_used"] == min(len(corpus), 64)
    used = report[report["used"]]
    assert used[["plausibility_before", "plausibility_after"]].notna().all().all()
    # the first round's targets are the plausible pseudo-masks after the batch-norm step; a
    # later round's, those of the network the round before left
    assert (used["target"] == (used["target_rounds"] > 0)).all()
    assert used["target_rounds"].max() <= model["adaptation_rounds"] <= 2  # smoke's rounds
    if model["adaptation_rounds"] > 0:
        assert (used.loc[used["plausibility_batchnorm"] >= 0.9, "target_rounds"] >= 1).all()
    per_round = ast.literal_eval(model["adaptation_n_targets_per_round"])
    assert len(per_round) == model["adaptation_rounds"]
    assert used["target_rounds"].sum() == sum(per_round)
    for figure in ("segmentation_adaptation_plausibility", "segmentation_adaptation_masks"):
        assert (cohort / "figures" / f"{figure}.png").is_file()


def test_flow_accounts_for_every_image(real_run):
    cohort = real_run["out"] / "mine"
    flow = pd.read_csv(cohort / "tables" / "flow.csv")
    n_in = len(load_manifest(real_run["manifests"] / "mine.csv"))
    first = flow.iloc[0]
    assert first["images"] == n_in
    # every notebook accounts for every image of the corpus: analysed, flagged or left out
    per_step = flow[flow["step"].str.match(r"\d\d_")].groupby("step")["images"].sum()
    assert set(per_step.index) == {nb.stem for nb in list_notebooks()}
    assert (per_step == n_in).all()
    qc = pd.read_csv(cohort / "artifacts" / "segmentation_qc.csv")
    flagged = flow[(flow["step"] == "01_lung_segmentation") & (flow["outcome"] == "flagged")]
    assert flagged["images"].sum() == (~qc["qc_pass"]).sum()
    index = (real_run["out"] / "index.html").read_text()
    assert "flow" in index.lower()
    record = json.loads((real_run["out"] / "run.json").read_text())
    assert record["manifest"].endswith("mine.csv")
