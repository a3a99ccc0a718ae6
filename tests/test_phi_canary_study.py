"""PHI canary through the whole path: DICOMs with identifying tags -> importer -> data-audit
notebook. No identifying string may appear in any file the import or the study run writes."""
import numpy as np
import pytest

from cxrlib.__main__ import main as cli_main
from cxrlib.data.dicom import write_dicom
from cxrlib.runner import run_study

pytestmark = pytest.mark.notebook

CANARIES = ("CANARY^Zebulon", "Zebulon", "19450317", "1945-03-17", "ACC-CANARY-77123",
            "Canary General Hospital", "PID-CANARY-")


def test_no_phi_in_manifest_tables_figures_or_reports(tmp_path):
    root = tmp_path / "hospital"
    rng = np.random.default_rng(0)
    for i in range(8):
        label = "covid19" if i % 2 else "control"
        tags = {"PatientName": "CANARY^Zebulon", "PatientBirthDate": "19450317",
                "AccessionNumber": "ACC-CANARY-77123", "InstitutionName": "Canary General Hospital",
                "PatientID": f"PID-CANARY-{i:04d}", "PatientSex": "MF"[i % 2], "PatientAge": "075Y",
                "StudyDate": "20200402", "Modality": "DX" if i % 3 else "CR", "ViewPosition": "PA"}
        pixels = (rng.random((48, 40)) * 4095).astype(np.uint16)
        (root / label).mkdir(parents=True, exist_ok=True)
        write_dicom(pixels, root / label / f"img{i}.dcm", tags,
                    photometric="MONOCHROME1" if i % 4 == 0 else "MONOCHROME2")
    manifests = tmp_path / "manifests"
    assert cli_main(["import", "folders", str(root), "-o", str(manifests / "canary.csv"),
                     "--cache", str(tmp_path / "cache"), "--key-file", str(tmp_path / "key"),
                     "--quiet"]) == 0
    out = tmp_path / "run"
    record = run_study("smoke", manifest=manifests / "canary.csv", out_dir=out, only=["00"],
                       log=lambda *a: None)
    assert record.status == "ok"
    written = [p for d in (manifests, tmp_path / "cache", out) for p in d.rglob("*") if p.is_file()]
    assert any(p.suffix == ".html" for p in written) and any(p.suffix == ".csv" for p in written)
    for path in written:
        data = path.read_bytes()
        for canary in CANARIES:
            assert canary.encode() not in data, f"{canary!r} found in {path}"
