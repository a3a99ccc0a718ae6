"""Shortcut probes (cxrlib.analysis.shortcuts): hand-made cases and the check of the method on
cohorts with the shortcut planted and removed."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrlib.analysis import shortcuts
from cxrlib.data.images import read_image, read_mask
from cxrlib.data.manifest import load_manifest
from cxrlib.data.synthetic import generate_cohort
from cxrlib.train.training import prepare_images
from cxrlib.preprocess.views import dilate_mask

# large enough that a 3-class, 8-source cohort has the shortcut's signal above the verdict margin
# (at 480 images the lungs-removed diagnosis gain's lower bound fell to 0.09 with generator v2),
# small enough to generate, mask and probe in about 20 s per cohort
N_IMAGES, SIZE = 960, 64


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """{shortcut: (manifest, masked views)} for a strongly planted (1) and a clean (0) cohort."""
    out = {}
    for shortcut in (1.0, 0.0):
        folder = tmp_path_factory.mktemp(f"arias_sc{shortcut:g}")
        generate_cohort(folder / "cohort", "arias", N_IMAGES, SIZE, seed=0, shortcut=shortcut,
                        progress=False)
        manifest = load_manifest(folder / "cohort" / "manifest.csv")
        views = shortcuts.masked_views(manifest, shortcuts.mask_paths(manifest),
                                       folder / "views", size=SIZE, dilation=0.04)
        out[shortcut] = (manifest, views)
    return out


def _settings():
    return shortcuts.ProbeSettings(image_size=SIZE, epochs=1, n_boot=200)


def test_verdicts_planted_vs_clean(cohorts):
    answers = {}
    for shortcut, (manifest, views) in cohorts.items():
        probes = shortcuts.run_probes(views, manifest, _settings(), seed=0)
        answers[shortcut] = shortcuts.verdicts(probes).set_index("question")["answer"]
    assert set(answers[1.0].index) == set(shortcuts.QUESTIONS)
    assert (answers[1.0] == "yes").all(), answers[1.0].to_dict()   # planted
    assert (answers[0.0] == "no").all(), answers[0.0].to_dict()    # not planted


def test_masked_views_black_out_the_dilated_lungs(cohorts):
    manifest, views = cohorts[1.0]
    assert set(views["view"]) == set(shortcuts.MASKED_VIEWS)
    assert len(views) == 3 * len(manifest)
    row = manifest.iloc[0]
    path = views[views["image_id"] == row["image_id"]].set_index("view")["path"]
    mask = prepare_images([read_mask(Path(manifest.attrs["data_root"]) / row["lung_mask_path"])
                           .astype(np.float32)], SIZE)[0] > 0.5
    lungs = dilate_mask(mask, 0.04 * SIZE, footprint="disk")
    full, no_lungs, only = (read_image(path[v]) for v in ("full", "no_lungs", "lungs_only"))
    assert full.shape == (SIZE, SIZE)
    assert (no_lungs[lungs] == 0).all() and (only[~lungs] == 0).all()
    np.testing.assert_allclose(no_lungs[~lungs], full[~lungs])
    np.testing.assert_allclose(only[lungs], full[lungs])


def test_image_features_by_hand():
    images = np.full((2, 16, 16), 0.5, np.float32)
    images[1, :8] = 0.0  # top half blacked out
    feats = shortcuts.image_features(images, grid=4, bins=4)
    assert feats.shape == (2, 16 + 4 + 9)
    np.testing.assert_allclose(feats[0, :16], 0.5)
    np.testing.assert_allclose(feats[:, 16:20], [[0, 0, 1, 0], [0, 0, 1, 0]])  # 0.5 in bin 3
    assert feats[0, -2] == 0 and feats[1, -2] == pytest.approx(0.5)  # share blacked out
    with pytest.raises(ValueError, match="N, S, S"):
        shortcuts.image_features(np.zeros((16, 16)))


def test_balanced_accuracy_ci_by_hand():
    y = ["a", "a", "b", "b"]
    res = shortcuts.balanced_accuracy_ci(y, ["a", "b", "b", "b"], ["p1", "p2", "p3", "p4"],
                                         n_boot=50, baseline=np.array(["b"] * 4))
    assert res["value"] == pytest.approx(0.75)       # (1/2 + 2/2) / 2
    assert res["baseline"] == pytest.approx(0.5)     # (0 + 1) / 2
    assert res["gain"] == pytest.approx(0.25)
    assert res["ci_low"] <= res["ci_high"]


def test_verdict_rule_uses_the_lower_bound():
    probes = pd.DataFrame([
        {"target": "label", "input": "no_lungs", "model": "logistic", "gain": 0.3,
         "gain_ci_low": 0.11},
        {"target": "source", "input": "lungs_only", "model": "logistic", "gain": 0.3,
         "gain_ci_low": 0.09},
    ])
    table = shortcuts.verdicts(probes, margin=0.10).set_index("input")
    assert table.loc["no_lungs", "answer"] == "yes"
    assert table.loc["lungs_only", "answer"] == "no"
    assert len(table) == 2  # the missing probe's question is left out


def test_external_validation_on_separable_features():
    rng = np.random.default_rng(0)
    n = 80
    manifest = pd.DataFrame({
        "label": np.tile(["control", "pneumonia"], n // 2),
        "source": np.repeat(["A", "B"], n // 2),
        "patient_id": [f"p{k}" for k in range(n)]})
    features = (manifest["label"] == "pneumonia").to_numpy()[:, None] * 3.0 \
        + rng.normal(size=(n, 3))
    table = shortcuts.external_validation(features, manifest, soft_shares=(0.25,), seed=0)
    assert table["held_out"].tolist() == ["A", "A", "B", "B"]
    assert table["scenario"].tolist() == ["hard", "soft 25%"] * 2
    assert table.loc[0, "n_external"] == 40 and table.loc[1, "n_external"] == 30
    assert (table["auc_external"] > 0.9).all() and (table["auc_internal"] > 0.9).all()
    with pytest.raises(ValueError, match="feature rows"):
        shortcuts.external_validation(features[:5], manifest)


def test_probe_settings_per_profile():
    from cxrlib.profiles import get_profile

    smoke, default, paper = (shortcuts.probe_settings(get_profile(n))
                             for n in ("smoke", "default", "paper"))
    assert (smoke.image_size, smoke.epochs) == (64, 1)
    assert (default.image_size, default.epochs, default.n_boot) == (64, 3, 500)
    assert (paper.image_size, paper.epochs) == (224, 24)
    custom = shortcuts.probe_settings(get_profile("paper").with_overrides(name="cluster",
                                                                          probe_size=512))
    assert (custom.image_size, custom.epochs) == (224, 24)  # never above the image size


def test_verdicts_against_truth_by_hand():
    table = pd.DataFrame({
        "cohort": ["given"] * 2 + ["twin"] * 2 + ["real"] * 2,
        "synth_shortcut": [1.0, 1.0, 0.0, 0.0, np.nan, np.nan],
        "question": ["q1", "q2"] * 3,
        "answer": ["yes", "yes", "no", "yes", "yes", "no"]})
    out = shortcuts.verdicts_against_truth(table).set_index("cohort")
    assert out.loc["given", "truth"] == "yes" and out.loc["given", "all_match"] == True  # noqa: E712
    assert out.loc["twin", "truth"] == "no" and out.loc["twin", "all_match"] == False  # noqa: E712
    assert pd.isna(out.loc["real", "truth"]) and pd.isna(out.loc["real", "all_match"])
    assert out["n_questions"].tolist() == [2, 2, 2]


def test_projection_retrain_problem_names_why_a_projection_cannot_be_retrained():
    from cxrlib.analysis.shortcuts import projection_retrain_problem

    ids = [f"i{k}" for k in range(12)]
    subset = pd.DataFrame({"image_id": ids, "label": ["control", "covid19"] * 6})
    plan = pd.DataFrame({"image_id": ids, "group": ids, "repetition": 0,
                         "fold": [0, 0, 1, 1] * 3})  # every class in both folds
    assert projection_retrain_problem(subset, plan, fold=0) is None
    assert projection_retrain_problem(subset.assign(label="control"), plan) == "1 class(es) only"
    assert projection_retrain_problem(subset, plan.assign(fold=1), fold=0) == \
        "no image in test fold 0"
    assert projection_retrain_problem(subset, plan.assign(fold=0), fold=0) == \
        "no image outside fold 0 to train on"
    # covid19 only in the test fold, or only among images the plan does not hold (QC-failed)
    only_test = plan.assign(fold=[0 if lab == "covid19" else f for lab, f in
                                  zip(subset["label"], plan["fold"])])
    assert "no training image of covid19" in projection_retrain_problem(subset, only_test)
    no_covid = plan[subset["label"] == "control"]
    assert "no training image of covid19" in projection_retrain_problem(subset, no_covid)
    # one patient outside the test fold: no validation patient can be drawn (a real corpus
    # that records the projection of a few images only)
    one_patient = plan.assign(group=["p"] * 12, fold=[0] * 10 + [1, 1]).assign(
        group=lambda p: p["group"].where(p["fold"] == 1, p["image_id"]))
    assert projection_retrain_problem(subset, one_patient, fold=0) == (
        "1 patient outside fold 0: too few to train on and to draw a validation patient from")


def test_projections_not_retrained_lists_each_skipped_projection_and_the_unknown():
    from cxrlib.analysis.shortcuts import projections_not_retrained

    ids = [f"i{k}" for k in range(10)]
    manifest = pd.DataFrame({"image_id": ids, "label": ["control", "covid19"] * 5,
                             "projection": ["PA"] * 8 + [None, "AP"]})
    plan = pd.DataFrame({"image_id": ids, "group": ids, "repetition": 0,
                         "fold": [0, 0, 1, 1] * 2 + [0, 1]})
    assert projections_not_retrained(manifest, plan) == {
        "AP": "1 class(es) only", "unknown": "1 image(s) of unknown projection"}
