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


@pytest.fixture
def param_study(tmp_path, tiny_cohort):
    """A one-notebook study whose notebook declares ``threshold`` and ``note`` and prints what it
    received, including the profile as overridden."""
    df, root = tiny_cohort
    csv = tmp_path / "tiny.csv"
    write_manifest(df, csv, data_root=root)
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        PARAMS + "\nprofile_overrides = {}\nthreshold = 0.5  # a float\nnote = \"\"  # a string")
    params.metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "cxr-study", "language": "python",
                                 "display_name": "Python (cxr-study)"}
    nb.cells = [params, nbformat.v4.new_code_cell(
        "from cxrlib.profiles import get_profile\n"
        "P = get_profile(profile, profile_overrides)\n"
        "print(f'threshold={threshold!r} note={note!r} cls_folds={P.cls_folds}')")]
    nbformat.write(nb, nbs / "00_params.ipynb")
    return csv, nbs, tmp_path / "run"


def test_parameters_reach_the_notebooks_and_run_json(param_study):
    csv, nbs, out = param_study
    record = run_study("smoke", manifest=csv, out_dir=out, notebooks_dir=nbs, log=lambda *a: None,
                       parameters={"threshold": 1, "note": 2020, "profile.cls_folds": 1})
    executed = (out / "tiny" / "00_params.ipynb").read_text()
    # an int for a float parameter becomes a float, a YAML number for a string parameter text
    assert "threshold=1.0 note='2020' cls_folds=1" in executed
    saved = json.loads((out / "run.json").read_text())
    assert saved["parameters"] == {"threshold": 1, "note": 2020, "profile.cls_folds": 1}
    assert saved["profile_overrides"] == {"cls_folds": 1}
    assert saved["notebook_parameters"] == {"00_params.ipynb": {"threshold": 1.0, "note": "2020"}}
    assert record.profile_overrides == {"cls_folds": 1}
    index = (out / "index.html").read_text()
    assert "Parameters given" in index and "threshold" in index and "(overridden)" in index


@pytest.mark.parametrize("given, message", [
    ({"thresold": 0.2}, r"(?s)no notebook of this run declares thresold.*00_params.ipynb: threshold, "
                        r"note"),
    ({"seed": 3}, "seed is set by the runner: use --seed"),
    ({"threshold": "high"}, "threshold of 00_params.ipynb must be float"),
    ({"profile.cls_fold": 2}, "unknown profile field 'cls_fold'"),
    ({"profile.cls_folds": True}, r"profile.cls_folds must be int, got True"),
])
def test_bad_parameters_are_refused_before_anything_runs(param_study, given, message):
    csv, nbs, out = param_study
    with pytest.raises(ValueError, match=message):
        run_study("smoke", manifest=csv, out_dir=out, notebooks_dir=nbs, log=lambda *a: None,
                  parameters=given)
    assert not (out / "run.json").exists()


def test_cli_takes_p_and_a_params_file(tmp_path, monkeypatch):
    import cxrlib.runner as runner
    from cxrlib.__main__ import main

    seen = {}
    monkeypatch.setattr(runner, "run_study", lambda **kw: seen.update(kw) or (_ for _ in ()).throw(
        ValueError("stop here")))
    params = tmp_path / "p.yaml"
    params.write_text("min_lung_fraction: 0.2\nprofile:\n  cls_folds: 3\nunet_weights: a.pt\n")
    code = main(["run", "--profile", "smoke", "--params", str(params), "-p", "unet_weights=b.pt",
                 "-p", "sweep_lambdas=[0.0, 0.1]", "-p", "profile.epochs=2"])
    assert code == 2
    assert seen["parameters"] == {"min_lung_fraction": 0.2, "profile.cls_folds": 3,
                                  "unet_weights": "b.pt", "sweep_lambdas": [0.0, 0.1],
                                  "profile.epochs": 2}


def test_parse_assignment_and_params_file_errors(tmp_path):
    from cxrlib.parameters import parse_assignment, read_params_file

    assert parse_assignment("x=0.25") == ("x", 0.25)
    assert parse_assignment("flag=false") == ("flag", False)
    assert parse_assignment("path=") == ("path", "")
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_assignment("nothing")
    with pytest.raises(ValueError, match="not valid YAML"):
        parse_assignment("x=[1, 2")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        read_params_file(bad)
    with pytest.raises(FileNotFoundError):
        read_params_file(tmp_path / "none.yaml")


def test_profile_overrides_need_notebooks_that_take_them(fake_study):
    csv, nbs, out = fake_study  # its notebooks declare no profile_overrides
    with pytest.raises(ValueError, match="declare.s. no profile_overrides parameter"):
        run_study("smoke", manifest=csv, out_dir=out, notebooks_dir=nbs, log=lambda *a: None,
                  parameters={"profile.epochs": 2})
