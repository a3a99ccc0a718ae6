"""What ``run.json`` records of a run (provenance) and the cell time limit of the runner, on
tiny notebooks (no study is run)."""
import json
import re

import nbformat
import pytest

from cxrlib.data.manifest import write_manifest
from cxrlib.report.provenance import git_state
from cxrlib.runner import NotebookFailed, RunRecord, run_study

from test_runner import PARAMS as RUNNER_PARAMS
from test_runner import _notebook as _runner_notebook

PARAMS = RUNNER_PARAMS + "\nprofile_overrides = {}"


def _notebook(path, *sources):
    _runner_notebook(path, *sources, parameters=PARAMS)


@pytest.fixture
def tiny_study(tmp_path, tiny_cohort):
    df, root = tiny_cohort
    csv = tmp_path / "tiny.csv"
    write_manifest(df, csv, data_root=root)
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    return csv, nbs, tmp_path / "run"


def test_run_json_holds_the_provenance(tiny_study):
    csv, nbs, out = tiny_study
    _notebook(nbs / "00_first.ipynb", "print('hello')")
    record = run_study("smoke", manifest=csv, out_dir=out, notebooks_dir=nbs,
                       parameters={"profile.epochs": 2}, log=lambda *a: None)
    saved = json.loads((out / "run.json").read_text())
    assert RunRecord.from_json(out / "run.json").provenance == record.provenance
    # every profile field as used, with the override
    assert saved["profile_fields"]["epochs"] == 2 and saved["profile_fields"]["name"] == "smoke"
    assert saved["profile_fields"]["cell_timeout_s"] == 600
    prov = saved["provenance"]
    assert set(prov) == {"git", "manifests", "system", "packages"}
    git = prov["git"]
    if git["commit"] is None:  # a copy of the tree without .git
        assert "not a git checkout" in git["error"]
    else:
        assert re.fullmatch(r"[0-9a-f]{40}", git["commit"]) and isinstance(git["dirty"], bool)
    m = prov["manifests"]["tiny"]
    assert m["images"] == 24 and sum(m["images_per_source"].values()) == 24
    assert re.fullmatch(r"[0-9a-f]{64}", m["sha256"]) and m["sidecar"].endswith(".meta.json")
    assert re.fullmatch(r"[0-9a-f]{64}", m["sidecar_sha256"])
    assert m["manifest_hash"] == saved["manifest_hashes"]["tiny"]  # study.json's hash
    assert prov["system"]["python"].startswith("3.") and prov["system"]["cpu"]
    assert isinstance(prov["system"]["gpus"], list)
    assert any(p.startswith("pandas==") for p in prov["packages"]) and len(prov["packages"]) > 50
    [res] = saved["results"]
    assert res["status"] == "ok" and res["started"] <= res["finished"]
    index = (out / "index.html").read_text()
    assert "<h2 id='provenance'>Provenance</h2>" in index and m["sha256"] in index
    assert "installed packages" in index


def test_git_state_outside_a_checkout(tmp_path):
    state = git_state(tmp_path)
    assert state["commit"] is None and state["dirty"] is None
    assert "not a git checkout" in state["error"]


def test_a_cell_past_the_time_limit_fails_naming_the_cell_and_the_limit(tiny_study):
    csv, nbs, out = tiny_study
    _notebook(nbs / "00_first.ipynb",
              "from cxrlib.run_folder import RunFolder\n"
              "RunFolder(run_dir).save_table(__import__('pandas').DataFrame({'a': [1]}), 'done')",
              "import time\ntime.sleep(60)",
              "print('never reached')")
    with pytest.raises(NotebookFailed) as info:
        run_study("smoke", manifest=csv, out_dir=out, notebooks_dir=nbs, log=lambda *a: None,
                  parameters={"profile.cell_timeout_s": 2})
    exc, message = info.value, str(info.value)
    # markdown, parameters, injected parameters, table, sleep
    assert exc.cell == 4 and "cell 4 of the executed notebook" in message
    assert "cell time limit of 2 s" in message and "cell_timeout_s" in message
    # the run folder keeps what was done: the executed notebook, its rendering, the record
    executed = nbformat.read(out / "tiny" / "00_first.ipynb", as_version=4)
    assert "cell time limit of 2 s" in json.dumps(executed.cells[4].outputs)
    assert "cell time limit of 2 s" in (out / "tiny" / "00_first.html").read_text()
    saved = json.loads((out / "run.json").read_text())
    assert saved["status"] == "failed" and "cell time limit" in saved["results"][0]["error"]
    # the failed notebook's table is set aside, as for any failure
    assert (out / "tiny" / "stale" / "00_first" / "tables" / "done.csv").is_file()
