"""Notebook 06 (Grad-CAM) on the smoke run: its tables and figures."""
import json

import pandas as pd
import pytest

from cxrlib.profiles import get_profile

pytestmark = pytest.mark.notebook

EXPERIMENTS = {"arias": {"exp1", "exp2", "exp3"}, "arias-noshortcut": {"exp1", "exp2", "exp3"},
               "covidgr": {"exp1", "sdnet", "sdnet@no_npcr"}}
CLASSES = {"arias": {"control", "pneumonia", "covid19"},
           "arias-noshortcut": {"control", "pneumonia", "covid19"},
           "covidgr": {"control", "covid19"}}


@pytest.mark.parametrize("cohort", sorted(EXPERIMENTS))
def test_cam_localisation_table(smoke_run, cohort):
    _, out = smoke_run
    table = pd.read_csv(out / cohort / "tables" / "cam_localisation.csv")
    assert set(table["experiment"]) == EXPERIMENTS[cohort]
    assert set(table["label"]) == CLASSES[cohort]
    assert len(table) == len(EXPERIMENTS[cohort]) * len(CLASSES[cohort])
    # the smoke cap, split evenly over the classes, the same images in every experiment that has
    # them: every image has an exp1 view; a crop view is missing where the smoke U-Net found no
    # lungs, and sdnet@no_npcr was trained and tested without the Normal-PCR+ positives
    per_class = get_profile("smoke").cam_max_images // len(CLASSES[cohort])
    assert (table.loc[table["experiment"] == "exp1", "n_images"] == per_class).all()
    assert table["n_images"].between(1, per_class).all()
    for column in ("lung_energy_mean", "lung_area_mean", "pointing_hit_rate", "lesion_energy_mean",
                   "lesion_area_mean", "lesion_hit_rate"):
        values = table[column].dropna()
        assert ((values >= 0) & (values <= 1)).all(), column
    assert table["lung_area_mean"].between(0.05, 0.95).all()  # the lungs are part of every view
    assert (table["lung_mask"] == "truth").all()  # synthetic cohorts: scored against the true lungs
    assert (table["target"] == table["label"]).all()  # cam_target = "label"
    # lesions exist only on diseased images, and their scores only where they exist
    assert (table.loc[table["label"] == "control", "n_lesion"] == 0).all()
    assert table.loc[table["label"] == "covid19", "n_lesion"].gt(0).all()
    assert table.loc[table["n_lesion"] == 0, "lesion_energy_mean"].isna().all()
    assert (table["n_lesion"] <= table["n_images"]).all()


@pytest.mark.parametrize("cohort", sorted(EXPERIMENTS))
def test_cam_faithfulness_table(smoke_run, cohort):
    _, out = smoke_run
    table = pd.read_csv(out / cohort / "tables" / "cam_faithfulness.csv")
    assert set(table["experiment"]) == EXPERIMENTS[cohort]
    road = get_profile("smoke").cam_road_images
    assert (table.loc[table["experiment"] == "exp1", "n_images"] == road).all()
    assert table["n_images"].between(1, road).all()
    assert table["road_mean"].between(-0.5, 0.5).all()
    assert table["road_positive"].between(0, 1).all()


def test_gradcam_figures(smoke_run):
    _, out = smoke_run
    for cohort in EXPERIMENTS:
        assert (out / cohort / "figures" / "gradcam_by_class.png").stat().st_size > 10_000
    why = out / "covidgr" / "figures" / "gradcam_why_positive_negative.png"
    assert why.stat().st_size > 10_000
    assert not (out / "arias" / "figures" / "gradcam_why_positive_negative.png").exists()


def test_seed001_claim_answered_from_the_numbers(smoke_run):
    _, out = smoke_run
    nb = json.loads((out / "arias" / "06_gradcam.ipynb").read_text())
    texts = ["".join(o.get("data", {}).get("text/markdown", "")) for c in nb["cells"]
             for o in c.get("outputs", [])]
    reading = [t for t in texts if "one-sided Wilcoxon" in t]
    assert len(reading) == 1
    assert "shortcut knob = 1: planted" in reading[0]
    assert reading[0].count("**yes**") + reading[0].count("**no**") == 2  # raw and beyond chance


def test_claim_compared_with_and_without_the_shortcut(smoke_run):
    _, out = smoke_run
    # arias runs after its twin, so its notebook 06 compares; the twin's found nothing to compare
    # yet
    assert not (out / "arias-noshortcut" / "tables" / "cam_outside_planted_vs_clean.csv").exists()
    table = pd.read_csv(out / "arias" / "tables" / "cam_outside_planted_vs_clean.csv"
                        ).set_index("measure")
    assert list(table.index) == ["outside_energy", "outside_energy_beyond_chance"]
    assert set(table["planted"]) == {"arias (knob 1)"}
    assert set(table["clean"]) == {"arias-noshortcut (knob 0)"}
    # each cohort's within-cohort test is the one its own notebook 06 wrote
    for cohort, side in (("arias", "planted"), ("arias-noshortcut", "clean")):
        own = pd.read_csv(out / cohort / "tables" / "cam_outside_exp1_vs_exp3.csv"
                          ).set_index("measure")
        for measure in table.index:
            assert table.loc[measure, f"n_{side}"] == own.loc[measure, "n_pairs"]
            assert table.loc[measure, f"gap_{side}"] == pytest.approx(
                own.loc[measure, "mean_difference"])
            assert table.loc[measure, f"outside_exp1_{side}"] == pytest.approx(
                own.loc[measure, "exp1"])
            assert table.loc[measure, f"p_{side}"] == pytest.approx(own.loc[measure, "p_value"])
    gaps = table["gap_planted"] - table["gap_clean"]
    assert (table["gap_difference"] - gaps).abs().max() < 1e-9
    assert table["p_gap"].between(0, 1).all()
    nb = json.loads((out / "arias" / "06_gradcam.ipynb").read_text())
    texts = ["".join(o.get("data", {}).get("text/markdown", "")) for c in nb["cells"]
             for o in c.get("outputs", [])]
    assert sum("Is the gap larger where the shortcut is planted?" in t for t in texts) == 1
    twin = json.loads((out / "arias-noshortcut" / "06_gradcam.ipynb").read_text())
    twin_texts = ["".join(o.get("data", {}).get("text/markdown", "")) for c in twin["cells"]
                  for o in c.get("outputs", [])]
    assert any("no planted shortcut (knob 0)" in t and "`arias`" in t for t in twin_texts)
    scores = pd.read_csv(out / "arias" / "artifacts" / "cam_scores.csv")
    assert set(scores["cam_target"]) == {"label"} and set(scores["lung_dilation"]) == {0.02}
    # balanced accuracy with and without the shortcut: notebook 03's numbers of each cohort
    accuracy = pd.read_csv(out / "arias" / "tables" / "cv_planted_vs_clean.csv"
                           ).set_index("experiment")
    for cohort, side in (("arias", "planted"), ("arias-noshortcut", "clean")):
        own = pd.read_csv(out / cohort / "tables" / "cv_global.csv").set_index("experiment")
        own = own.loc[accuracy.index, "balanced_accuracy_mean"]
        assert (accuracy[f"balanced_accuracy_mean_{side}"].to_numpy()
                == pytest.approx(own.to_numpy()))
