"""The runner executes notebooks in order, renders HTML, and reports failures by notebook and
cell."""
import json
import subprocess
import sys

import nbformat
import pytest

from cxrlib.data.manifest import write_manifest
from cxrlib.runner import NotebookFailed, check_kernel, list_notebooks, run_study

PARAMS = ('profile = "smoke"\ncohort = ""\nmanifest = ""\nrun_dir = ""\nseed = 0\n'
          'interactive = False')


def _notebook(path, *sources, parameters=PARAMS):
    """Write a notebook: a markdown title, the tagged ``parameters`` cell, then ``sources``."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(parameters)
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
    assert (cohort_dir / "00_first.html").is_file()
    assert (cohort_dir / "tables" / "labels.csv").is_file()
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
    res = subprocess.run([sys.executable, "-m", "cxrlib", "run", "--profile", "smoke",
                          "--only", "98"],
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
    ({"thresold": 0.2}, r"(?s)no notebook of this run declares thresold.*"
                        r"00_params.ipynb: threshold, note"),
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


# ----------------------------------------------------------------- one run, one folder
def _quiet(**kwargs):
    return run_study("smoke", log=lambda *a: None, **kwargs)


@pytest.fixture
def one_notebook(tmp_path, tiny_cohort):
    """(manifest CSV, notebooks folder, run folder) of a study of one notebook that opens the
    study and writes a table."""
    df, root = tiny_cohort
    csv = tmp_path / "tiny.csv"
    write_manifest(df, csv, data_root=root)
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "00_first.ipynb",
              "from cxrlib.study import open_study\n"
              "study = open_study(profile, cohort, manifest, run_dir, seed)\n"
              "study.run.save_table(study.manifest[['image_id', 'label']], 'labels')")
    return csv, nbs, tmp_path / "run"


def test_a_run_with_other_settings_is_refused_naming_the_difference(one_notebook):
    from cxrlib.run_folder import RunFolderConflict

    csv, nbs, out = one_notebook
    _quiet(manifest=csv, out_dir=out, notebooks_dir=nbs)
    claim = json.loads((out / "study.json").read_text())
    assert claim["settings"] == {"profile": "smoke", "profile_overrides": {}, "seed": 0,
                                 "parameters": {}}
    assert len(claim["settings_hash"]) == len(claim["cohorts"]["tiny"]["manifest_hash"]) == 64
    assert claim["cohorts"]["tiny"]["notebooks"]["00_first.ipynb"]["outputs"] == [
        "artifacts/study.json", "tables/labels.csv", "tables/labels.md"]
    before = (out / "run.json").read_text()
    with pytest.raises(RunFolderConflict, match=r"other settings: seed: 0 in the folder, 1 now.*"
                                                r"--fresh"):
        _quiet(manifest=csv, out_dir=out, notebooks_dir=nbs, seed=1)
    assert (out / "run.json").read_text() == before  # refused before anything ran


def test_another_manifest_for_the_same_cohort_is_refused(one_notebook, tiny_cohort):
    from cxrlib.run_folder import RunFolderConflict

    csv, nbs, out = one_notebook
    _quiet(manifest=csv, out_dir=out, notebooks_dir=nbs)
    df, root = tiny_cohort
    other = csv.parent / "elsewhere" / "tiny.csv"  # same cohort name, other content
    write_manifest(df.iloc[:12], other, data_root=root)
    with pytest.raises(RunFolderConflict, match=r"cohort 'tiny' was run on another manifest: "
                                                r".*tiny\.csv \(sha256 \w{12}\) in the folder"):
        _quiet(manifest=other, out_dir=out, notebooks_dir=nbs)
    res = subprocess.run([sys.executable, "-m", "cxrlib", "run", "--profile", "smoke",
                          "--manifest", str(other), "--out", str(out), "--seed", "2"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "seed: 0 in the folder, 2 now" in res.stderr


def test_fresh_moves_the_old_content_aside(one_notebook, tiny_cohort):
    csv, nbs, out = one_notebook
    _quiet(manifest=csv, out_dir=out, notebooks_dir=nbs)
    said = []
    record = run_study("smoke", manifest=csv, out_dir=out, notebooks_dir=nbs, seed=1, fresh=True,
                       log=said.append)
    assert record.status == "ok"
    aside = [p for p in out.parent.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and (aside[0] / "tiny" / "tables" / "labels.csv").is_file()
    assert json.loads((aside[0] / "study.json").read_text())["settings"]["seed"] == 0
    assert json.loads((out / "study.json").read_text())["settings"]["seed"] == 1
    assert said[0] == f"--fresh: the earlier content of {out} was moved to {aside[0]}"


def test_a_folder_with_files_but_no_study_json_is_refused(one_notebook):
    from cxrlib.run_folder import RunFolderConflict

    csv, nbs, out = one_notebook
    (out / "tiny" / "tables").mkdir(parents=True)
    (out / "tiny" / "tables" / "old.csv").write_text("a\n1\n")
    with pytest.raises(RunFolderConflict, match="holds files but no study.json"):
        _quiet(manifest=csv, out_dir=out, notebooks_dir=nbs)


def test_a_second_manifest_adds_a_cohort_and_the_index_keeps_both(one_notebook, tiny_cohort):
    csv, nbs, out = one_notebook
    _quiet(manifest=csv, out_dir=out, notebooks_dir=nbs)
    df, root = tiny_cohort
    second = csv.parent / "second.csv"
    write_manifest(df.iloc[:12], second, data_root=root)
    _quiet(manifest=second, out_dir=out, notebooks_dir=nbs)
    index = (out / "index.html").read_text()
    assert "Cohort <code>tiny</code>" in index and "Cohort <code>second</code>" in index
    assert "tiny/00_first.html" in index and "second/00_first.html" in index
    assert set(json.loads((out / "study.json").read_text())["cohorts"]) == {"tiny", "second"}


def test_a_notebook_run_by_hand_cannot_write_into_a_run_of_other_settings(one_notebook):
    from cxrlib.run_folder import RunFolderConflict
    from cxrlib.study import open_study

    csv, nbs, out = one_notebook
    _quiet(manifest=csv, out_dir=out, notebooks_dir=nbs)
    with pytest.raises(RunFolderConflict, match="seed: 0 in the folder, 3 here"):
        open_study("smoke", "tiny", csv, out / "tiny", seed=3)
    with pytest.raises(RunFolderConflict, match="profile cls_folds: 2 in the folder, 1 here"):
        open_study("smoke", "tiny", csv, out / "tiny", profile_overrides={"cls_folds": 1})
    assert open_study("smoke", "tiny", csv, out / "tiny").cohort == "tiny"


def test_a_failed_rerun_sets_its_tables_aside_and_the_index_says_so(tmp_path, tiny_cohort):
    df, root = tiny_cohort
    csv = tmp_path / "tiny.csv"
    write_manifest(df, csv, data_root=root)
    nbs, flag = tmp_path / "notebooks", tmp_path / "fail-now"
    nbs.mkdir()
    save = "from cxrlib.run_folder import RunFolder\nrun = RunFolder(run_dir)\n"
    _notebook(nbs / "00_first.ipynb", save + "run.save_table(__import__('pandas').DataFrame("
              "{'a': [1]}), 'first')")
    _notebook(nbs / "01_second.ipynb", save + "run.save_table(run.read_table('first'), 'second')",
              f"assert not __import__('pathlib').Path({str(flag)!r}).exists(), 'deliberate'")
    _notebook(nbs / "02_third.ipynb", save + "run.save_table(run.read_table('second'), 'third')")
    out = tmp_path / "run"
    assert _quiet(manifest=csv, out_dir=out, notebooks_dir=nbs).status == "ok"
    good_report = (out / "tiny" / "01_second.html").read_text()
    flag.touch()
    with pytest.raises(NotebookFailed, match="deliberate"):
        _quiet(manifest=csv, out_dir=out, notebooks_dir=nbs, only=["01"])
    tables = out / "tiny" / "tables"
    assert (tables / "first.csv").is_file() and (tables / "third.csv").is_file()
    assert not (tables / "second.csv").exists() and not (tables / "second.md").exists()
    assert (out / "tiny" / "stale" / "01_second" / "tables" / "second.csv").is_file()
    assert (out / "tiny" / "01_second.html").read_text() != good_report  # the failure, shown
    states = {n: e["status"] for n, e in json.loads((out / "study.json").read_text())[
        "cohorts"]["tiny"]["notebooks"].items()}
    assert states == {"00_first.ipynb": "ok", "01_second.ipynb": "failed",
                      "02_third.ipynb": "ok"}
    index = (out / "index.html").read_text()
    assert "class='failed'>failed" in index and "moved to tiny/stale/01_second/" in index
    assert "class='stale'>stale" in index and "made before 01_second.ipynb failed" in index
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    flag.unlink()  # a good rerun puts the table back
    _quiet(manifest=csv, out_dir=out, notebooks_dir=nbs, only=["01"])
    assert (tables / "second.csv").is_file()
    assert "class='stale'" not in (out / "index.html").read_text()


def test_reports_show_warnings_without_the_file_they_came_from():
    from cxrlib.runner import plain_warnings

    stderr = ("/tmp/ipykernel_123/456.py:15: UserWarning: QC exclusion not applied\n"
              "  read = read_views(\n"
              "/opt/venv/lib/python3.11/site-packages/torch/jit/_script.py:1491: FutureWarning: "
              "`torch.jit.script` is deprecated.\n  warnings.warn(\nprogress 3/3\n")
    assert plain_warnings(stderr) == ("UserWarning: QC exclusion not applied\n"
                                      "FutureWarning: `torch.jit.script` is deprecated.\n"
                                      "progress 3/3\n")
