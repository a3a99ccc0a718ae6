"""The hand-offs between notebooks (cxrlib.artifacts): every reader checks its columns and says
which notebook writes a missing file; the QC filter of the views is applied on read."""
import pandas as pd
import pytest

from cxrlib import artifacts
from cxrlib.artifacts import read_views
from cxrlib.data.splits import make_split_plan


def _manifest():
    return pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e", "f"],
        "label": ["covid19", "covid19", "covid19", "covid19", "control", "control"],
        "patient_id": ["p1", "p1", "p2", "p3", "p4", "p5"],
    })


def test_read_views_needs_notebook_01(tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebook 01"):
        read_views(tmp_path, _manifest())


def test_read_views_excludes_qc_failures_and_resolves_paths(tmp_path):
    pd.DataFrame({"image_id": ["a", "a", "b", "zz"], "view": ["exp1", "exp3", "exp1", "exp1"],
                  "path": ["views/a1.png", "/abs/a3.png", "views/b1.png", "x.png"]}
                 ).to_csv(tmp_path / "views.csv", index=False)
    pd.DataFrame({"image_id": ["a", "b"], "qc_pass": [False, True]}).to_csv(
        tmp_path / "segmentation_qc.csv", index=False)
    read = read_views(tmp_path, _manifest())
    assert read.excluded == ["a"] and not read.qc_exclusion_skipped
    assert list(read.views["image_id"]) == ["b"]  # "zz" is not in the manifest
    assert read.views["path"].iloc[0] == str(tmp_path / "views" / "b1.png")
    read = read_views(tmp_path, _manifest(), exclude_qc_failed=False)
    assert read.excluded == [] and list(read.views["path"])[:2] == [
        str(tmp_path / "views/a1.png"), "/abs/a3.png"]


def test_read_views_keeps_everything_when_qc_would_empty_a_class(tmp_path):
    pd.DataFrame({"image_id": list("abcdef"), "view": "exp1", "path": "/x.png"}).to_csv(
        tmp_path / "views.csv", index=False)
    pd.DataFrame({"image_id": list("abcdef"), "qc_pass": [True] * 4 + [False] * 2}).to_csv(
        tmp_path / "segmentation_qc.csv", index=False)
    with pytest.warns(UserWarning, match="0 image\\(s\\) of class 'control'"):
        read = read_views(tmp_path, _manifest(), min_per_class=1)
    assert read.excluded == [] and len(read.views) == 6 and read.qc_exclusion_skipped
    read = read_views(tmp_path, _manifest())
    assert read.excluded == ["e", "f"] and not read.qc_exclusion_skipped


def test_views_round_trip_with_boxes_and_relative_paths(tmp_path):
    views = pd.DataFrame({"image_id": ["a", "b"], "view": ["exp3", "exp3"],
                          "path": [str(tmp_path / "v" / "a.png"), "/elsewhere/b.png"],
                          "cached": [True, False], "box_row0": [1, 2], "box_row1": [9, 8],
                          "box_col0": [0, 3], "box_col1": [7, 6]})
    path = artifacts.write_views(tmp_path, views)
    stored = pd.read_csv(path)
    assert list(stored.columns) == ["image_id", "view", "path", "box_row0", "box_row1",
                                    "box_col0", "box_col1"]  # "cached" is not a hand-off
    assert list(stored["path"]) == ["v/a.png", "/elsewhere/b.png"]
    artifacts.write_segmentation_qc(tmp_path, pd.DataFrame({"image_id": ["a", "b"],
                                                            "qc_pass": [True, False]}))
    read = read_views(tmp_path, _manifest())
    assert read.excluded == ["b"]
    assert read.views.to_dict("records") == [{
        "image_id": "a", "view": "exp3", "path": str(tmp_path / "v" / "a.png"),
        "box_row0": 1, "box_row1": 9, "box_col0": 0, "box_col1": 7}]


def test_qc_reader_refuses_a_qc_pass_that_is_not_boolean(tmp_path):
    pd.DataFrame({"image_id": ["a", "b"], "qc_pass": ["yes", "no"]}).to_csv(
        tmp_path / "segmentation_qc.csv", index=False)
    with pytest.raises(ValueError, match="qc_pass holds"):
        artifacts.read_segmentation_qc(tmp_path)
    pd.DataFrame({"image_id": ["007", "b"], "qc_pass": [1, 0]}).to_csv(
        tmp_path / "segmentation_qc.csv", index=False)
    qc = artifacts.read_segmentation_qc(tmp_path)
    assert qc["qc_pass"].tolist() == [True, False] and qc["image_id"].tolist() == ["007", "b"]
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['qc_pass'\]"):
        artifacts.write_segmentation_qc(tmp_path, pd.DataFrame({"image_id": ["a"]}))


def test_split_plan_round_trip_is_checked_both_ways(tmp_path):
    manifest = _manifest()
    plan = make_split_plan(manifest, folds=2, repetitions=1, seed=0)
    artifacts.write_split_plan(tmp_path, plan)
    back = artifacts.read_split_plan(tmp_path)
    pd.testing.assert_frame_equal(back[list(plan.columns)], plan.reset_index(drop=True),
                                  check_dtype=False)
    assert set(artifacts.read_split_plan(tmp_path, ["a", "c"])["image_id"]) == {"a", "c"}
    leaking = plan.copy()
    leaking.loc[leaking["image_id"] == "b", "fold"] = 1 - leaking.loc[
        leaking["image_id"] == "a", "fold"].iloc[0]  # patient p1 in two folds
    with pytest.raises(ValueError, match="appears in 2 folds"):
        artifacts.write_split_plan(tmp_path, leaking)
    leaking.to_csv(tmp_path / "split_plan.csv", index=False)
    with pytest.raises(ValueError, match="appears in 2 folds"):
        artifacts.read_split_plan(tmp_path)
    (tmp_path / "split_plan.csv").unlink()
    with pytest.raises(FileNotFoundError, match="run notebook 00"):
        artifacts.read_split_plan(tmp_path)


def test_cam_scores_and_cit_split_readers_name_their_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebook 06"):
        artifacts.read_cam_scores(tmp_path)
    scores = pd.DataFrame({"image_id": ["01", "02"], "experiment": ["exp1", "exp3"],
                           "outside_energy": [0.25, 0.5]})
    artifacts.write_cam_scores(tmp_path, scores)
    pd.testing.assert_frame_equal(artifacts.read_cam_scores(tmp_path), scores)
    (tmp_path / "cit").mkdir()
    pd.DataFrame({"image_id": ["a"], "subset": ["test"]}).to_csv(tmp_path / "cit" / "s.csv",
                                                                 index=False)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['role'\]"):
        artifacts.read_cit_split(tmp_path, "cit/s.csv")
