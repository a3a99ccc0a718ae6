"""open_study's stamp and the lookup of a cohort's shortcut-free twin run."""
import json

import numpy as np
import pandas as pd
import pytest

from cxrlib.profiles import get_profile
from cxrlib.run_folder import RunFolder
from cxrlib.study import STAMP_FILE, Study, beside_twin, shortcut_twin_run


def _study(root, cohort="arias", knob=1.0, seed=0, profile="smoke", preset="arias"):
    manifest = pd.DataFrame({"image_id": ["a", "b"]})
    if knob is not None:
        manifest["synth_shortcut"] = knob
    study = Study(profile=get_profile(profile), cohort=cohort, preset=preset, manifest=manifest,
                  manifest_path=root / "manifest.csv", run=RunFolder(root / cohort), seed=seed)
    study.run.artifact(STAMP_FILE).write_text(json.dumps(study.stamp()))
    return study


def test_stamp_says_what_the_run_is(tmp_path):
    study = _study(tmp_path, knob=0.0, seed=3)
    assert study.stamp() == {"cohort": "arias", "preset": "arias", "shortcut": 0.0,
                             "profile": "smoke", "seed": 3, "profile_overrides": {}}
    assert _study(tmp_path, knob=None).shortcut is None
    # a profile changed from the command line is part of what the run is
    changed = get_profile("smoke", {"cls_folds": 1, "cam_road_percentiles": [20, 80]})
    stamp = Study(profile=changed, cohort="arias", preset="arias", manifest=study.manifest,
                  manifest_path=tmp_path / "m.csv", run=study.run, seed=3).stamp()
    assert stamp["profile"] == "smoke"
    assert stamp["profile_overrides"] == {"cls_folds": 1, "cam_road_percentiles": [20, 80]}


def test_twin_run_with_other_profile_overrides_is_refused(tmp_path):
    planted = _study(tmp_path, knob=1.0)
    _study(tmp_path, cohort="arias-noshortcut", knob=0.0)
    assert shortcut_twin_run(planted)[0] is not None
    twin_stamp = planted.run.root.parent / "arias-noshortcut" / "artifacts" / STAMP_FILE
    stamp = json.loads(twin_stamp.read_text())
    twin_stamp.write_text(json.dumps({**stamp, "profile_overrides": {"cls_folds": 1}}))
    folder, why = shortcut_twin_run(planted)
    assert folder is None and "profile_overrides" in why


def test_planted_cohort_finds_its_twin_only_when_it_matches(tmp_path):
    planted = _study(tmp_path)
    folder, why = shortcut_twin_run(planted)
    assert folder is None and "has not been run" in why and "`arias-noshortcut`" in why
    _study(tmp_path, cohort="arias-noshortcut", knob=0.0)
    assert shortcut_twin_run(planted) == (tmp_path / "arias-noshortcut", "")
    # a twin left from a run with another seed is refused, naming the difference
    _study(tmp_path, cohort="arias-noshortcut", knob=0.0, seed=1)
    folder, why = shortcut_twin_run(planted)
    assert folder is None and "seed 1" in why and "seed" in why
    # an explicit folder must hold a lower knob
    other = _study(tmp_path / "elsewhere", cohort="arias", knob=1.0)
    folder, why = shortcut_twin_run(planted, twin_run_dir=other.run.root)
    assert folder is None and "not below" in why


def test_no_twin_comparison_from_the_clean_or_an_unknown_cohort(tmp_path):
    folder, why = shortcut_twin_run(_study(tmp_path, cohort="arias-noshortcut", knob=0.0))
    assert folder is None and "no planted shortcut (knob 0)" in why and "`arias`" in why
    folder, why = shortcut_twin_run(_study(tmp_path, cohort="covidgr", preset="covidgr"))
    assert folder is None and "no shortcut twin" in why
    folder, why = shortcut_twin_run(_study(tmp_path, cohort="my_corpus", knob=None, preset=None))
    assert folder is None and "no synthetic shortcut knob" in why


@pytest.mark.parametrize("bad", ["profile", "preset"])
def test_twin_with_another_profile_or_preset_is_refused(tmp_path, bad):
    planted = _study(tmp_path)
    kwargs = {"profile": "default"} if bad == "profile" else {"preset": "covidgr"}
    _study(tmp_path, cohort="arias-noshortcut", knob=0.0, **kwargs)
    folder, why = shortcut_twin_run(planted)
    assert folder is None and bad in why


def test_beside_twin_pairs_rows_with_missing_keys_and_subtracts():
    def table(values):
        return pd.DataFrame({"experiment": ["exp1", "exp1", "exp3"], "factor": "source",
                             "within": [np.nan, "label", np.nan], "above_chance_mean": values})
    planted = table([0.30, 0.12, 0.20])
    clean = table([0.05, -0.01, 0.02]).iloc[:2]  # exp3 only in the planted cohort
    beside = beside_twin(planted, clean, ["experiment", "factor", "within"], "above_chance_mean")
    assert len(beside) == 2 and list(beside["within"]) == ["", "label"]
    assert beside["difference"].tolist() == pytest.approx([0.25, 0.13])
    assert beside["above_chance_mean_clean"].tolist() == pytest.approx([0.05, -0.01])
    assert beside["above_chance_mean_planted"].tolist() == pytest.approx([0.30, 0.12])
