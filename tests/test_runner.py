"""The runner executes notebooks in order, renders HTML, and reports failures by notebook and cell."""
import json
import subprocess
import sys

import nbformat
import pytest

from cxrlib.manifest import write_manifest
from cxrlib.runner import NotebookFailed, check_kernel, list_notebooks, run_study

PARAMS = 'profile = "smoke"\ncohort = ""\nmanifest = ""\nrun_dir = ""\nseed = 0\ninteractive = False'


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), params]
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)


@pytest.fixture
def fake_study(tmp_path, tiny_cohort):
    df, root = tiny_cohort
    csv = tmp_path / "tiny.csv"
    write_manifest(df, csv, data_root=root)
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(
        nbs / "00_first.ipynb",
        "from cxrlib.study import open_study\n"
        "study = open_study(profile, cohort, manifest, run_dir, seed)\n"
        "study.run.save_table(study.manifest[['image_id', 'label']], 'labels')\n"
        "print('rows', len(study.manifest))",
    )
    _notebook(
        nbs / "01_second.ipynb",
        "import pandas as pd, pathlib\n"
        "t = pd.read_csv(pathlib.Path(run_dir) / 'tables' / 'labels.csv')",
        "assert len(t) == 24\nraise ValueError('deliberate failure')",
        "print('never reached')",
    )
    return csv, nbs, tmp_path / "run"


def test_failure_names_notebook_and_cell_and_keeps_earlier_outputs(fake_study):
    csv, nbs, out = fake_study
    with pytest.raises(NotebookFailed) as info:
        run_study("smoke", manifest=csv, out_dir=out, notebooks_dir=nbs, log=lambda *a: None)
    exc = info.value
    # cell 4 of the executed notebook: markdown, parameters, injected parameters, read, fail
    assert exc.notebook == "01_second.ipynb" and exc.cell == 4
    assert "ValueError: deliberate failure" in str(exc) and "assert len(t) == 24" in str(exc)
    cohort_dir = out / "tiny"
    # the first notebook's outputs are complete; the failed one is kept with its traceback
    assert (cohort_dir / "00_first.html").is_file() and (cohort_dir / "tables" / "labels.csv").is_file()
    assert "deliberate failure" in (cohort_dir / "01_second.ipynb").read_text()
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed"
    assert [r["status"] for r in record["results"]] == ["ok", "failed"]
    index = (out / "index.html").read_text()
    assert "00_first.html" in index and "failed" in index


def test_only_runs_the_named_notebooks_and_html_hides_code(fake_study):
    csv, nbs, out = fake_study
    record = run_study("smoke", manifest=csv, out_dir=out, notebooks_dir=nbs, only=["00"],
                       log=lambda *a: None)
    assert record.status == "ok" and [r.notebook for r in record.results] == ["00_first.ipynb"]
    html = (out / "tiny" / "00_first.html").read_text()
    assert "rows 24" in html  # the output is there
    assert "open_study(profile" not in html  # the code is not (reviewer version)
    executed = nbformat.read(out / "tiny" / "00_first.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert str(csv.resolve()) in injected[0].source and str(out / "tiny") in injected[0].source


def test_list_notebooks_filters_and_rejects_unknown(tmp_path):
    for name in ("00_a.ipynb", "03_b.ipynb", "notes.ipynb"):
        _notebook(tmp_path / name)
    assert [p.name for p in list_notebooks(None, tmp_path)] == ["00_a.ipynb", "03_b.ipynb"]
    assert [p.name for p in list_notebooks(["3"], tmp_path)] == ["03_b.ipynb"]
    with pytest.raises(ValueError, match=r"no notebook numbered \['07'\]"):
        list_notebooks(["07"], tmp_path)


def test_missing_kernel_says_how_to_install():
    with pytest.raises(RuntimeError, match="make setup"):
        check_kernel("no-such-kernel-xyz")


def test_cli_reports_bad_arguments():
    res = subprocess.run([sys.executable, "-m", "cxrlib", "run", "--profile", "smoke", "--only", "98"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "no notebook numbered ['98']" in res.stderr
