"""The flow of images: every manifest image is analysed or left out with a reason, per notebook."""
import pandas as pd
import pytest

from cxrlib.flow import flow_sentence, flow_summary, flow_table, funnel, record_flow, record_intake
from cxrlib.run_folder import RunFolder


def test_funnel_gives_the_first_step_that_left_each_image_out():
    reasons = funnel(["a", "b", "c", "d", "e"], [
        ({"b": "failed QC: lungs not found"}, {"a", "c", "d", "e"}),
        ("no view", {"a", "c", "e", "b"}),       # b is already out: keeps its first reason
        ("not in the plan", {"a", "c"}),
    ])
    assert reasons.to_dict() == {"a": "", "b": "failed QC: lungs not found", "c": "",
                                 "d": "no view", "e": "not in the plan"}
    # a mapping without the id falls back on a plain reason; no step keeps everything
    assert funnel(["x"], [({}, [])]).to_dict() == {"x": "left out"}
    assert funnel(["x", "y"], []).to_dict() == {"x": "", "y": ""}


def test_record_flow_writes_rows_and_the_cohort_table(tmp_path):
    run = RunFolder(tmp_path / "cohort")
    manifest = pd.DataFrame({"image_id": ["a", "b", "c", "d"]})
    report = tmp_path / "corpus.qc.csv"
    pd.DataFrame({"source": "S", "image_id": ["z1", "z2", "a"], "path": "p",
                  "action": ["dropped", "dropped", "flagged"],
                  "reason": ["image file not found: x/z1.png", "image file not found: x/z2.png",
                             "projection unknown"]}).to_csv(report, index=False)
    record_intake(run, manifest, report)
    rows = record_flow(run, "01_lung_segmentation", funnel(manifest["image_id"], []),
                       flagged={"b": "segmentation QC: lungs not found"})
    assert rows["outcome"].tolist() == ["analysed", "flagged", "analysed", "analysed"]
    rows = record_flow(run, "03_classifier_cv", funnel(manifest["image_id"], [
        ("failed segmentation QC (notebook 01)", {"a", "c", "d"}), ("no view", {"a", "c"})]))
    assert "analysed 2 of 4 images; left out: failed segmentation QC (notebook 01) (1); " \
           "no view (1)" in flow_sentence(rows)
    table = pd.read_csv(run.tables / "flow.csv", keep_default_na=False)
    assert table.iloc[0].to_dict() == {"step": "manifest", "outcome": "analysed",
                                       "reason": "images in", "images": 4}
    intake = table[table["step"].str.startswith("before the study")]
    # per-file detail is cut so that one reason counts many files; flagged rows were kept
    assert intake[["reason", "images"]].values.tolist() == [["image file not found", 2]]
    steps = table["step"].drop_duplicates().tolist()
    assert steps == ["manifest", "before the study (import and corpus QC report)",
                     "01_lung_segmentation", "03_classifier_cv"]
    pd.testing.assert_frame_equal(table, flow_table(run), check_dtype=False)
    summary = flow_summary(table).set_index("step")
    assert summary.loc["01_lung_segmentation", ["analysed", "flagged", "left out"]].tolist() == \
        [3, 1, 0]
    assert summary.loc["03_classifier_cv", "left out"] == 2
    # a notebook run again replaces its own record, never adds to it
    record_flow(run, "03_classifier_cv", funnel(manifest["image_id"], []))
    assert flow_summary(flow_table(run)).set_index("step").loc["03_classifier_cv",
                                                                "analysed"] == 4


def test_flow_table_of_an_empty_folder(tmp_path):
    assert flow_table(RunFolder(tmp_path)).empty
    assert list(flow_summary(flow_table(RunFolder(tmp_path))).columns)[0] == "step"


@pytest.mark.parametrize("reasons", [pd.Series({"a": None, "b": "x"})])
def test_missing_reason_counts_as_analysed(tmp_path, reasons):
    rows = record_flow(RunFolder(tmp_path), "02_cit_training", reasons)
    assert rows["outcome"].tolist() == ["analysed", "left out"]
