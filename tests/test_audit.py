import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from cxrlib.analysis import audit
from cxrlib.data.manifest import validate_manifest
from cxrlib.data.splits import make_split_plan
from cxrlib.data.images import overlay_rgb


@pytest.fixture
def cohort(tiny_cohort):
    df, root = tiny_cohort
    return validate_manifest(df, data_root=root), root


def test_cohort_by_class_source_counts(cohort):
    df, _ = cohort
    t = audit.cohort_by_class_source(df).set_index("source")
    # 12 patients x 2 images, labels cycle control/pneumonia/covid19 by patient, one source each
    assert t.loc["SrcA", "control"] == 8 and t.loc["SrcA", "covid19"] == 0
    assert t.loc["total", ["control", "pneumonia", "covid19", "total"]].tolist() == [8, 8, 8, 24]
    assert t.loc["SrcC", "patients"] == 4 and t.loc["total", "patients"] == 12


def test_cohort_by_subset_matches_plan(cohort):
    df, _ = cohort
    plan = make_split_plan(df, folds=2, seed=0)
    t = audit.cohort_by_class_subset(df, plan).set_index("subset")
    n_test = int((plan[plan.repetition == 0]["fold"] == 0).sum())
    assert t.loc["testing"].sum() == n_test and t.sum().sum() == 24
    cmp = audit.corpus_vs_paper(t.reset_index())
    row = cmp[(cmp.subset == "training") & (cmp["class"] == "control")].iloc[0]
    assert row.paper_n == 45022 and row.paper_pct == pytest.approx(100 * 45022 / 74445, abs=0.05)


def test_demographics_hand_computed(cohort):
    df, _ = cohort
    d = audit.demographics_by_source(df).set_index("source")
    a = d.loc["SrcA"]  # patients 0,3,6,9: ages 30,33,36,39 (two images each)
    assert a.images == 8 and a.patients == 4
    assert a.age_mean == pytest.approx(34.5)
    assert a.age_sd == pytest.approx(np.std([30, 30, 33, 33, 36, 36, 39, 39], ddof=1), abs=0.05)
    assert (a.males, a.females) == (4, 4)  # sex alternates M/F by patient
    assert (a.pa, a.ap) == (2, 6)  # PA when the patient number is a multiple of 4: only patient 0
    assert a.classes == "control"


def test_demographics_vs_paper_only_matching_sources(cohort):
    df, _ = cohort
    d = audit.demographics_by_source(df)
    assert audit.demographics_vs_paper(d).empty
    d.loc[0, "source"] = "BIMCV"
    cmp = audit.demographics_vs_paper(d)
    assert cmp["source"].tolist() == ["BIMCV"]
    assert cmp.loc[0, "paper_pct_male"] == pytest.approx(100 * 1527 / (1527 + 1486), abs=0.05)


def test_covidgr_composition(cohort):
    df, _ = cohort
    binary = df[df.label != "pneumonia"].reset_index(drop=True)
    comp = audit.covidgr_composition(binary).set_index("class")
    assert comp.loc["positive", "mild"] == 8 and comp.loc["positive", "severe"] == 0
    assert np.isnan(comp.loc["negative", "mild"])
    cmp = audit.composition_vs_paper(comp.reset_index())
    moderate = cmp[(cmp["class"] == "positive") & (cmp.quantity == "moderate")].iloc[0]
    assert moderate.paper_n == 171 and moderate.paper_pct == pytest.approx(40.1, abs=0.05)


def test_image_properties_reads_bit_depth_and_lung_fraction(cohort):
    df, root = cohort
    props = audit.image_properties(df, root, max_per_source=100)
    assert len(props) == 24
    assert set(props["bit_depth"]) == {8, 16}
    # hand-made masks: two 16x10 rectangles in a 32x32 image
    assert props["lung_fraction"].to_numpy() == pytest.approx(320 / 1024)
    summary = audit.image_properties_by_source(props)
    assert summary["pct_16bit"].between(0, 100).all()


def test_figures_build(cohort):
    df, root = cohort
    assert audit.example_grid(df, root).axes
    assert audit.intensity_histograms(df, root).axes


def test_overlay_rgb():
    img = np.full((4, 4), 0.5, np.float32)
    lung = np.zeros((4, 4), bool)
    lung[0, 0] = True
    out = overlay_rgb(img, lung, None, alpha=0.5)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (64, 191, 64)  # 0.5*0.5 + 0.5*(0,1,0) -> 0.25, 0.75, 0.25
    assert tuple(out[1, 1]) == (128, 128, 128)
    with pytest.raises(ValueError, match="alpha"):
        overlay_rgb(img, lung, alpha=2)
    with pytest.raises(ValueError, match="mask shape"):
        overlay_rgb(img, np.zeros((3, 3), bool))


def test_image_browser_builds_and_updates(cohort):
    from cxrlib.report.widgets import image_browser

    df, root = cohort
    box = image_browser(df, root)
    cls, src = box.children[0].children
    idx = box.children[1].children[0]
    view = box.children[3]
    first = view.value
    assert first[:4] == b"\x89PNG"
    idx.value = 1
    assert view.value != first
    src.value = "SrcB"  # no control images in SrcB
    assert view.value == b"" and "no image" in box.children[2].value
