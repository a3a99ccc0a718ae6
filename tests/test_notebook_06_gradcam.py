"""Notebook 06 (Grad-CAM) on the smoke run: its tables recomputed from the per-image files it
writes (``artifacts/cam_scores.csv``) and from notebook 03's checkpoints, and the numbers its
readings state."""
import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cxrlib.analysis import explain
from cxrlib.train.predictions import MODEL_KEY, RUN_KEY, read_predictions, with_checkpoints
from cxrlib.profiles import get_profile

pytestmark = pytest.mark.notebook

EXPERIMENTS = {"arias": {"exp1", "exp2", "exp3"}, "arias-noshortcut": {"exp1", "exp2", "exp3"},
               "covidgr": {"exp1", "sdnet", "sdnet@no_npcr"}}
CLASSES = {"arias": {"control", "pneumonia", "covid19"},
           "arias-noshortcut": {"control", "pneumonia", "covid19"},
           "covidgr": {"control", "covid19"}}
MEASURES = {"outside_energy": False, "outside_energy_beyond_chance": True}


def _settings(out):
    """(profile, seed) the smoke run was made with."""
    settings = json.loads((out / "study.json").read_text())["settings"]
    return get_profile(settings["profile"]), int(settings["seed"])


def _scores(out, cohort):
    return pd.read_csv(out / cohort / "artifacts" / "cam_scores.csv", dtype={"image_id": str})


def _markdown_of(notebook, code):
    """The Markdown outputs of the one code cell of an executed notebook whose source contains
    ``code`` (found by what the cell runs, not by what it prints)."""
    nb = json.loads(notebook.read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and code in "".join(c["source"])]
    assert len(cells) == 1, (notebook, code)
    return ["".join(o["data"]["text/markdown"]) for o in cells[0].get("outputs", [])
            if "text/markdown" in o.get("data", {})]


def _numbers(text):
    """The numbers a sentence states, as written (``+5.3%``, ``0.031``, ``2.1e-05``, ``24``)."""
    return set(re.findall(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?%?", text))


def _answers(text):
    """The bold yes / no answers of a reading, in order."""
    return re.findall(r"\*\*(yes|no)\*\*", text)


def _answer(p_value, difference):
    return "yes" if p_value < 0.05 and difference > 0 else "no"


def _per_image_outside(scores, beyond_chance):
    """Per image, CAM mass outside the lungs of exp1 and exp3 (images with a map in both)."""
    outside = 1 - scores["lung_energy"]
    if beyond_chance:
        outside = outside - (1 - scores["lung_area"])
    table = scores.assign(outside=outside).pivot_table(index="image_id", columns="experiment",
                                                       values="outside")
    return table[["exp1", "exp3"]].dropna()


@pytest.mark.parametrize("cohort", sorted(EXPERIMENTS))
def test_cam_localisation_table(smoke_run, cohort):
    _, out = smoke_run
    profile, _ = _settings(out)
    table = pd.read_csv(out / cohort / "tables" / "cam_localisation.csv")
    assert set(table["experiment"]) == EXPERIMENTS[cohort]
    assert set(table["label"]) == CLASSES[cohort]
    assert len(table) == len(EXPERIMENTS[cohort]) * len(CLASSES[cohort])
    # the smoke cap, split evenly over the classes, the same images in every experiment that has
    # them: every image has an exp1 view; a crop view is missing where the smoke U-Net found no
    # lungs, and sdnet@no_npcr was trained and tested without the Normal-PCR+ positives
    per_class = profile.cam_max_images // len(CLASSES[cohort])
    assert (table.loc[table["experiment"] == "exp1", "n_images"] == per_class).all()
    assert (table["n_images"] <= per_class).all()
    assert table["lung_area_mean"].between(0.05, 0.95).all()  # the lungs are part of every view
    assert (table["lung_mask"] == "truth").all()  # synthetic cohorts: scored against the true lungs
    assert (table["target"] == table["label"]).all()  # cam_target = "label"
    # lesions exist only on diseased images, and their scores only where they exist
    assert (table.loc[table["label"] == "control", "n_lesion"] == 0).all()
    assert table.loc[table["label"] == "covid19", "n_lesion"].gt(0).all()

    # every number of the table, recomputed from the per-image scores
    scores = _scores(out, cohort)
    g = scores.assign(outside=1 - scores["lung_energy"]).groupby([*MODEL_KEY, "label"])
    expected = pd.DataFrame({
        "n_images": g.size(), "n_zero_maps": g["lung_energy"].apply(lambda s: s.isna().sum()),
        "lung_energy_mean": g["lung_energy"].mean(), "lung_energy_sd": g["lung_energy"].std(),
        "lung_area_mean": g["lung_area"].mean(), "outside_energy_mean": g["outside"].mean(),
        "pointing_hit_rate": g["pointing_hit"].mean(), "n_lesion": g["lesion_area"].count(),
        "lesion_energy_mean": g["lesion_energy"].mean(),
        "lesion_energy_sd": g["lesion_energy"].std(),
        "lesion_area_mean": g["lesion_area"].mean(), "lesion_hit_rate": g["lesion_hit"].mean(),
        "dilation_px_median": g["dilation_px"].median()})
    got = table.set_index([*MODEL_KEY, "label"])[expected.columns]
    pd.testing.assert_frame_equal(got.sort_index(), expected.sort_index(), check_dtype=False,
                                  check_exact=False, rtol=1e-9, atol=1e-12)

    # the per-image scores are of the out-of-fold predictions of notebook 03
    preds = read_predictions(out / cohort / "artifacts" / "predictions.parquet")
    merged = scores.merge(preds, on=[*RUN_KEY, "image_id"], suffixes=("", "_preds"),
                          validate="one_to_one")
    assert len(merged) == len(scores)
    assert (merged["label"] == merged["label_preds"]).all()
    p_target = [merged.at[i, f"p_{t}_preds"] for i, t in zip(merged.index, merged["target"])]
    np.testing.assert_allclose(merged["p_target"], p_target, rtol=1e-6)


@pytest.mark.parametrize("cohort", sorted(EXPERIMENTS))
def test_cam_faithfulness_table(smoke_run, cohort):
    """ROAD keeps no per-image file: the scores are recomputed from notebook 03's checkpoints on
    the images notebook 06 drew (the same draw, seed and percentiles)."""
    _, out = smoke_run
    profile, seed = _settings(out)
    table = pd.read_csv(out / cohort / "tables" / "cam_faithfulness.csv")
    assert set(table["experiment"]) == EXPERIMENTS[cohort]
    road = profile.cam_road_images
    assert (table.loc[table["experiment"] == "exp1", "n_images"] == road).all()

    artifacts = out / cohort / "artifacts"
    preds = with_checkpoints(read_predictions(artifacts / "predictions.parquet"), artifacts)
    preds = preds[preds["experiment"].isin(EXPERIMENTS[cohort])]
    preds = preds[preds["repetition"] == preds["repetition"].min()]
    scored = preds[preds["image_id"].isin(set(_scores(out, cohort)["image_id"]))]
    road_ids = explain.stratified_image_ids(scored, road, seed=seed)
    views = pd.read_csv(artifacts / "views.csv", dtype={"image_id": str})
    rows, _, _ = explain.oof_cams(scored[scored["image_id"].isin(road_ids)], views, artifacts,
                                  target="label", road_percentiles=profile.cam_road_percentiles,
                                  seed=seed)
    g = rows.groupby(list(MODEL_KEY))["road"]
    expected = pd.DataFrame({"n_images": g.count(), "road_mean": g.mean(), "road_sd": g.std(),
                             "road_positive": g.apply(lambda s: (s > 0).mean())})
    got = table.set_index(list(MODEL_KEY))[expected.columns]
    pd.testing.assert_frame_equal(got.sort_index(), expected.sort_index(), check_dtype=False,
                                  check_exact=False, rtol=1e-4, atol=1e-5)


def test_gradcam_figures(smoke_run):
    _, out = smoke_run
    for cohort in EXPERIMENTS:
        assert (out / cohort / "figures" / "gradcam_by_class.png").stat().st_size > 10_000
    why = out / "covidgr" / "figures" / "gradcam_why_positive_negative.png"
    assert why.stat().st_size > 10_000
    assert not (out / "arias" / "figures" / "gradcam_why_positive_negative.png").exists()


@pytest.mark.parametrize("cohort", ["arias", "arias-noshortcut"])
def test_seed001_claim_recomputed_from_the_scores(smoke_run, cohort):
    """Seed 001's claim (exp1 looks outside the lungs more than exp3): the table's paired test
    recomputed with scipy from the per-image scores, and the reading's numbers and answers."""
    _, out = smoke_run
    scores = _scores(out, cohort)
    table = pd.read_csv(out / cohort / "tables" / "cam_outside_exp1_vs_exp3.csv"
                        ).set_index("measure")
    assert list(table.index) == list(MEASURES)
    for measure, beyond in MEASURES.items():
        pairs = _per_image_outside(scores, beyond)
        diff = pairs["exp1"] - pairs["exp3"]
        row = table.loc[measure]
        assert row["n_pairs"] == len(pairs) >= 2
        assert row["exp1"] == pytest.approx(pairs["exp1"].mean())
        assert row["exp3"] == pytest.approx(pairs["exp3"].mean())
        assert row["mean_difference"] == pytest.approx(diff.mean())
        assert row["share_a_higher"] == pytest.approx((diff > 0).mean())
        test = stats.wilcoxon(diff, alternative="greater")
        assert row["statistic"] == pytest.approx(test.statistic)
        assert row["p_value"] == pytest.approx(test.pvalue)

    [reading] = _markdown_of(out / cohort / "06_gradcam.ipynb", "explain.compare_outside_energy(")
    raw, adj = (table.loc[m] for m in MEASURES)
    assert _answers(reading) == [_answer(raw["p_value"], raw["mean_difference"]),
                                 _answer(adj["p_value"], adj["mean_difference"])]
    numbers = _numbers(reading)
    assert str(int(raw["n_pairs"])) in numbers
    assert {f"{raw['exp1']:.0%}", f"{raw['exp3']:.0%}", f"{raw['share_a_higher']:.0%}",
            f"{raw['p_value']:.2g}", f"{adj['exp1']:+.1%}", f"{adj['exp3']:+.1%}",
            f"{adj['p_value']:.2g}"} <= numbers
    for experiment in ("exp1", "exp3"):  # the lungs' share of each view, the chance level
        area = scores.loc[scores["experiment"] == experiment, "lung_area"].mean()
        assert f"{area:.0%}" in numbers


def test_claim_compared_with_and_without_the_shortcut(smoke_run):
    _, out = smoke_run
    # arias runs after its twin, so its notebook 06 compares; the twin's found nothing to compare
    # yet
    assert not (out / "arias-noshortcut" / "tables" / "cam_outside_planted_vs_clean.csv").exists()
    table = pd.read_csv(out / "arias" / "tables" / "cam_outside_planted_vs_clean.csv"
                        ).set_index("measure")
    assert list(table.index) == list(MEASURES)
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
    # the between-cohort test, recomputed with scipy from the two cohorts' per-image scores
    planted, clean = _scores(out, "arias"), _scores(out, "arias-noshortcut")
    assert set(planted["synth_shortcut"]) == {1.0} and set(clean["synth_shortcut"]) == {0.0}
    for measure, beyond in MEASURES.items():
        dx, dy = ((p["exp1"] - p["exp3"]) for p in (_per_image_outside(planted, beyond),
                                                     _per_image_outside(clean, beyond)))
        assert table.loc[measure, "gap_difference"] == pytest.approx(dx.mean() - dy.mean())
        assert table.loc[measure, "p_gap"] == pytest.approx(
            stats.mannwhitneyu(dx, dy, alternative="greater").pvalue)
    assert set(planted["cam_target"]) == {"label"} and set(planted["lung_dilation"]) == {0.02}

    # the reading states the table's numbers and answers
    reading, accuracy_text = _markdown_of(out / "arias" / "06_gradcam.ipynb",
                                          "explain.shortcut_comparison(")
    raw, adj = (table.loc[m] for m in MEASURES)
    assert _answers(reading) == [
        _answer(row[f"p_{side}"], row[f"gap_{side}"])
        for side in ("planted", "clean") for row in (raw, adj)] + [
        _answer(raw["p_gap"], raw["gap_difference"])]
    numbers = _numbers(reading)
    assert {str(int(raw["n_planted"])), str(int(raw["n_clean"]))} <= numbers
    for row in (raw, adj):
        assert {f"{row['gap_planted']:+.1%}", f"{row['gap_clean']:+.1%}",
                f"{row['gap_difference']:+.1%}", f"{row['p_gap']:.2g}"} <= numbers

    # balanced accuracy with and without the shortcut: notebook 03's numbers of each cohort
    accuracy = pd.read_csv(out / "arias" / "tables" / "cv_planted_vs_clean.csv"
                           ).set_index("experiment")
    for cohort, side in (("arias", "planted"), ("arias-noshortcut", "clean")):
        own = pd.read_csv(out / cohort / "tables" / "cv_global.csv").set_index("experiment")
        own = own.loc[accuracy.index, "balanced_accuracy_mean"]
        assert (accuracy[f"balanced_accuracy_mean_{side}"].to_numpy()
                == pytest.approx(own.to_numpy()))
    np.testing.assert_allclose(accuracy["difference"], accuracy["balanced_accuracy_mean_planted"]
                               - accuracy["balanced_accuracy_mean_clean"], atol=1e-12)
    assert {f"{d:+.2f}" for d in accuracy["difference"]} <= _numbers(accuracy_text)
