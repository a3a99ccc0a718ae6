"""``python -m cxrlib compare``: the differences between two run folders, built here by hand
(a run.json and a few tables; no study is run)."""
import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from cxrlib.report.compare import (
    compare_runs,
    compare_tables,
    format_comparison,
    load_run,
    provenance_differences,
    table_differences,
)
from cxrlib.profiles import get_profile


def _record(seed=0, parameters=None, overrides=None, commit="a" * 40, packages=None):
    prof = get_profile("smoke", overrides or {})
    return {
        "profile": "smoke", "out_dir": "x", "seed": seed, "manifest": None,
        "cohorts": ["covidgr"], "started": "2026-01-01T00:00:00", "status": "ok",
        "parameters": parameters or {}, "profile_overrides": overrides or {},
        "settings_hash": f"hash-{seed}-{sorted((parameters or {}).items())}",
        "manifest_hashes": {"covidgr": "m" * 64}, "profile_fields": prof.as_dict(),
        "provenance": {
            "git": {"commit": commit, "dirty": False},
            "manifests": {"covidgr": {"sha256": "c" * 64, "sidecar_sha256": "s" * 64,
                                      "images": 64, "images_per_source": {"a": 64}}},
            "system": {"python": "3.11.9", "os": "Linux", "cpu": "cpu", "cpu_count": 2,
                       "gpus": []},
            "packages": packages or ["numpy==2.0.0", "pandas==2.2.0"],
        },
        "results": [],
    }


def _run_folder(root, record, tables):
    """A run folder with ``run.json`` and ``covidgr/tables/<name>.csv`` for each table."""
    (root / "covidgr" / "tables").mkdir(parents=True)
    (root / "run.json").write_text(json.dumps(record))
    for name, df in tables.items():
        df.to_csv(root / "covidgr" / "tables" / f"{name}.csv", index=False)
    return root


def _metrics(auc=0.9):
    return pd.DataFrame({"model": ["resnet", "covidnet"], "auc": [auc, 0.8],
                         "ci": ["0.8-0.9", "0.7-0.9"], "n": [64, 64]})


def test_two_runs_with_the_same_settings_do_not_differ(tmp_path):
    a = _run_folder(tmp_path / "a", _record(), {"metrics": _metrics(), "flow": _metrics()})
    b = _run_folder(tmp_path / "b", _record(), {"metrics": _metrics(), "flow": _metrics()})
    result = compare_runs(a, b)
    assert result["provenance"].empty
    assert list(result["tables"]["status"]) == ["same", "same"]
    assert (result["tables"]["max_abs_diff"] == 0).all()
    text = format_comparison(result, a, b)
    assert "Provenance: no differences." in text and "2 in all, 2 the same, 0 not" in text


def test_another_seed_names_the_setting_and_the_tables_that_changed(tmp_path):
    a = _run_folder(tmp_path / "a", _record(seed=0, parameters={"note": "x"}),
                    {"metrics": _metrics(0.9), "flow": _metrics(), "old": _metrics()})
    b = _run_folder(tmp_path / "b", _record(seed=1, parameters={"note": "y"},
                                            overrides={"epochs": 3}, commit="b" * 40,
                                            packages=["numpy==2.1.0", "pandas==2.2.0"]),
                    {"metrics": _metrics(0.75), "flow": _metrics()})
    prov = provenance_differences(load_run(a), load_run(b))
    changed = {(r.section, r.name): (r.run_a, r.run_b) for r in prov.itertuples()}
    assert changed[("settings", "seed")] == (0, 1)
    assert changed[("parameter", "note")] == ("x", "y")
    assert changed[("profile", "epochs")] == (1, 3)
    assert changed[("commit", "commit")] == ("a" * 40, "b" * 40)
    assert changed[("package", "numpy")] == ("2.0.0", "2.1.0")
    assert ("package", "pandas") not in changed
    tables = table_differences(a, b).set_index("table")
    assert tables.loc["metrics", "status"] == "differs"
    assert tables.loc["metrics", "max_abs_diff"] == pytest.approx(0.15)
    assert "auc" in tables.loc["metrics", "note"]
    assert tables.loc["flow", "status"] == "same" and tables.loc["old", "status"] == "only in A"
    text = format_comparison(compare_runs(a, b), a, b)
    assert "seed: 0 in A, 1 in B" in text
    assert "covidgr/tables/metrics.csv: differs, largest difference 0.15" in text


def test_tables_of_other_shape_text_or_nan(tmp_path):
    def write(name, df):
        df.to_csv(tmp_path / name, index=False)
        return tmp_path / name

    base = pd.DataFrame({"a": [1.0, float("nan")], "b": ["x", "y"]})
    same_nan = write("1.csv", base)
    assert compare_tables(same_nan, write("2.csv", base.copy())) == (False, 0.0, "")
    differ, largest, note = compare_tables(same_nan, write("3.csv", base.assign(b=["x", "z"])))
    assert differ and math.isnan(largest) and note == "columns that differ: b"
    differ, largest, note = compare_tables(same_nan, write("4.csv", base.iloc[:1]))
    assert differ and "2 rows in A, 1 in B" in note
    renamed = base.rename(columns={"b": "c"})
    differ, largest, note = compare_tables(same_nan, write("5.csv", renamed))
    assert differ and "only in A: ['b']" in note
    differ, largest, _ = compare_tables(same_nan, write("6.csv", base.assign(a=[1.0, 2.0])))
    assert differ and largest == math.inf  # a value on one side, NaN on the other


def test_cli_prints_the_differences_and_exits_0(tmp_path):
    a = _run_folder(tmp_path / "a", _record(seed=0), {"metrics": _metrics(0.9)})
    b = _run_folder(tmp_path / "b", _record(seed=1), {"metrics": _metrics(0.8)})
    res = subprocess.run([sys.executable, "-m", "cxrlib", "compare", str(a), str(b)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "seed: 0 in A, 1 in B" in res.stdout and "metrics.csv: differs" in res.stdout
    res = subprocess.run([sys.executable, "-m", "cxrlib", "compare", str(a), str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "has no run.json" in res.stderr
