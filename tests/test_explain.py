"""Grad-CAM scores on hand-made maps, the view-to-image geometry, and Grad-CAM on a tiny model."""
import numpy as np
import pandas as pd
import pytest
import torch

from cxrlib.analysis import explain
from cxrlib.analysis.explain.oof import _with_boxes
from cxrlib.models.classifiers import build_classifier
from cxrlib.preprocess.views import BOX_COLUMNS, dilate_mask, square_roi_box, view_box


def _maps():
    cam = np.array([[0, 0, 0, 0],
                    [0, 1, 2, 0],
                    [0, 3, 4, 0],
                    [0, 0, 0, 10]], dtype=float)
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    return cam, mask


def test_energy_share_hand_computed():
    cam, mask = _maps()
    assert explain.energy_share(cam, mask) == pytest.approx(10 / 20)
    assert explain.energy_share(cam, ~mask) == pytest.approx(10 / 20)
    assert explain.energy_share(cam, np.ones((4, 4), bool)) == pytest.approx(1.0)
    assert np.isnan(explain.energy_share(np.zeros((4, 4)), mask))


def test_dilation_grows_the_share():
    cam = np.zeros((7, 7))
    cam[3, 5] = 1.0  # two pixels right of the centre
    cam[0, 0] = 3.0  # a corner, far away
    mask = np.zeros((7, 7), dtype=bool)
    mask[3, 3] = True
    assert explain.energy_share(cam, mask) == 0.0
    assert explain.energy_share(cam, mask, dilation=1) == 0.0  # 3x3 square: reaches column 4
    assert explain.energy_share(cam, mask, dilation=2) == pytest.approx(1 / 4)  # 5x5: column 5
    assert explain.energy_share(cam, mask, dilation=3) == pytest.approx(4 / 4)  # 7x7: everything
    grown = dilate_mask(mask, 1)
    assert grown.sum() == 9 and grown[2:5, 2:5].all()
    assert (dilate_mask(mask, 0) == mask).all()
    with pytest.raises(ValueError, match="radius must be >= 0"):
        dilate_mask(mask, -1)


def test_pointing_game_hand_computed():
    cam, mask = _maps()
    assert explain.pointing_game(cam, mask) == 0.0  # the maximum (10) is at the corner
    cam[3, 3] = 1.0
    assert explain.pointing_game(cam, mask) == 1.0  # now 4, inside
    corner = np.zeros((4, 4), dtype=bool)
    corner[3, 3] = True
    cam[3, 3] = 10.0
    assert explain.pointing_game(cam, corner) == 1.0
    # the tolerance: a peak one pixel from the mask is a hit with dilation 1
    near = np.zeros((4, 4), dtype=bool)
    near[2, 3] = True
    assert explain.pointing_game(cam, near) == 0.0
    assert explain.pointing_game(cam, near, dilation=1) == 1.0
    # a plateau is decided by the share of its pixels inside; a zero map is undefined
    flat = np.ones((2, 2))
    assert explain.pointing_game(flat, np.array([[1, 1], [0, 0]], bool)) == 1.0
    assert explain.pointing_game(flat, np.array([[1, 0], [0, 0]], bool)) == 0.0
    assert np.isnan(explain.pointing_game(np.zeros((2, 2)), near[:2, :2]))


def test_scores_reject_bad_input():
    cam, mask = _maps()
    with pytest.raises(ValueError, match=r"cam \(4, 4\) and mask \(5, 5\) have different shapes"):
        explain.energy_share(cam, np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="different shapes"):
        explain.pointing_game(cam, mask[:3])
    with pytest.raises(ValueError, match="non-negative"):
        explain.energy_share(cam - 1, mask)
    with pytest.raises(ValueError, match="2-D"):
        explain.energy_share(cam[None], mask)


def test_view_box_and_frame_mapping():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:6, 3:11] = True  # lungs 4 rows x 8 columns
    # exp2/exp3: the square region of interest (may leave the image)
    assert view_box("exp2", (10, 12), mask, size=4) == square_roi_box(mask) == (0, 8, 3, 11)
    assert view_box("exp3_public_code", (10, 12), mask) == (2, 6, 3, 11)  # the rectangle
    # sdnet: the rectangle plus 2.5% (rounds to 0 px here)
    assert view_box("sdnet", (10, 12), mask) == (2, 6, 3, 11)
    # exp1: the centre square of the image, side = the shorter side
    assert view_box("exp1", (10, 14), size=5) == (0, 10, 2, 12)
    assert view_box("exp1", (10, 12)) == (0, 10, 0, 12)
    with pytest.raises(ValueError, match="pass the lung mask"):
        view_box("exp3", (10, 12))
    with pytest.raises(ValueError, match="unknown view"):
        view_box("exp9", (10, 12), mask)

    cam = np.ones((4, 4), dtype=np.float32)
    on_box = explain.cam_to_box(cam, (-2, 2, 1, 5))
    assert on_box.shape == (4, 4) and np.allclose(on_box, 1)
    framed = explain.cam_to_image_frame(cam, (-2, 2, 1, 5), (6, 6))
    expected = np.zeros((6, 6))
    expected[0:2, 1:5] = 1  # the two box rows above the image are cut
    assert np.allclose(framed, expected)


@pytest.mark.parametrize("view", ["exp1", "exp2", "exp3", "sdnet", "exp3_public_code"])
def test_view_box_inverts_the_views(view):
    """The brightest spot of a view, mapped back through its box, lands where it came from."""
    from cxrlib.preprocess.views import make_view

    image = np.zeros((40, 50), dtype=np.float32)
    image[12:20, 22:30] = 1.0  # a bright square inside the lungs, centred at (15.5, 25.5)
    lungs = np.zeros((40, 50), dtype=bool)
    lungs[8:30, 10:40] = True
    variant = "public_code" if view.endswith("public_code") else "paper"
    pixels = make_view(view.split("_")[0], image, lungs, size=24, variant=variant)
    r0, r1, c0, c1 = view_box(view, image.shape, lungs, size=24)
    rows, cols = np.nonzero(pixels == pixels.max())
    row = r0 + (rows.mean() + 0.5) * (r1 - r0) / 24 - 0.5
    col = c0 + (cols.mean() + 0.5) * (c1 - c0) / 24 - 0.5
    assert abs(row - 15.5) < 1.0 and abs(col - 25.5) < 1.0


def test_score_cams_in_the_image_frame(tmp_path):
    from PIL import Image

    lungs = np.zeros((8, 12), dtype=bool)
    lungs[2:6, 4:8] = True  # 16 of 96 pixels; its square box is exactly the lungs
    lesion = np.zeros((8, 12), dtype=bool)
    lesion[2, 4] = True
    (tmp_path / "masks").mkdir()
    # any non-constant image: only its shape is read (a constant one is degenerate pixel data)
    files = {"img.png": np.linspace(0, 1, 96).reshape(8, 12), "lung.png": lungs,
             "lesion.png": lesion, "masks/a.png": lungs}
    for name, array in files.items():
        Image.fromarray((array * 255).astype(np.uint8)).save(tmp_path / name)
    manifest = pd.DataFrame({"image_id": ["a"], "path": ["img.png"], "lung_mask_path": ["lung.png"],
                             "lesion_mask_path": ["lesion.png"]})
    # the boxes notebook 01 writes beside each view (views.view_box)
    boxes = [view_box("exp1", (8, 12), size=4), view_box("exp3", (8, 12), lungs, size=4)]
    rows = pd.DataFrame({"image_id": ["a", "a"], "view": ["exp1", "exp3"]}).assign(
        **dict(zip(BOX_COLUMNS, np.array(boxes).T)))
    cams = np.ones((2, 4, 4), dtype=np.float32)  # uniform maps: every share is an area share
    out = explain.score_cams(rows, cams, manifest, tmp_path / "masks", tmp_path, dilation=0)
    # exp1 shows the centre 8 x 8 square (columns 2-9), exp3 the lungs' square (the lungs)
    assert out["lung_energy"].tolist() == pytest.approx([16 / 64, 1.0])
    assert out["lung_area"].tolist() == pytest.approx([16 / 64, 1.0])
    assert out["lesion_energy"].tolist() == pytest.approx([1 / 64, 1 / 16])
    assert (out["lung_mask"] == "truth").all() and (out["dilation_px"] == 0).all()
    grown = explain.score_cams(rows, cams, manifest, tmp_path / "masks", tmp_path, dilation=0.125)
    assert grown["dilation_px"].iloc[0] == 1
    assert grown["lung_energy"].iloc[0] == pytest.approx(36 / 64)
    with pytest.raises(ValueError, match="2 maps for 1 rows"):
        explain.score_cams(rows.head(1), cams, manifest, tmp_path / "masks", tmp_path)
    # no true mask in the manifest: the predicted one is scored against, and must exist
    predicted = explain.score_cams(rows, cams, manifest.drop(columns="lung_mask_path"),
                                   tmp_path / "masks", tmp_path, dilation=0)
    assert (predicted["lung_mask"] == "prediction").all()
    with pytest.raises(FileNotFoundError, match="no lung mask for 'a'"):
        explain.score_cams(rows, cams, manifest.drop(columns="lung_mask_path"),
                           tmp_path / "nowhere", tmp_path)


def test_maps_take_their_boxes_from_the_views_table():
    views = pd.DataFrame({"image_id": ["a", "a", "b"], "view": ["exp1", "exp3", "exp3"],
                          "path": "x.png", "box_row0": [0, 2, 1], "box_row1": [8, 6, 5],
                          "box_col0": [2, 4, 0], "box_col1": [10, 8, 4]})
    rows = pd.DataFrame({"image_id": ["b", "a"], "view": ["exp3", "exp1"]})
    boxed = _with_boxes(rows, views)
    assert [explain.row_box(r) for _, r in boxed.iterrows()] == [(1, 5, 0, 4), (0, 8, 2, 10)]
    with pytest.raises(ValueError, match="run notebook 01 again"):
        _with_boxes(rows, views[["image_id", "view", "path"]])


def test_stratified_image_ids_balances_classes():
    rows = []
    for experiment in ("exp1", "exp3"):
        for i in range(12):
            label = "control" if i < 8 else "covid19"
            rows.append({"experiment": experiment, "model": "m", "method": "r",
                         "image_id": f"img{i:02d}", "label": label})
    preds = pd.DataFrame(rows)
    preds = preds[~((preds["experiment"] == "exp3") & (preds["image_id"] == "img00"))]
    labels = preds.drop_duplicates("image_id").set_index("image_id")["label"]
    ids = explain.stratified_image_ids(preds, 6, seed=1)
    assert len(ids) == 6 and ids == sorted(ids)
    assert labels[ids].value_counts().to_dict() == {"control": 3, "covid19": 3}
    assert explain.stratified_image_ids(preds, 6, seed=1) == ids
    assert len(explain.stratified_image_ids(preds, 100)) == 12
    # only 4 covid19 images exist: the rest of the cap goes to control
    assert labels[explain.stratified_image_ids(preds, 10)].value_counts().to_dict() == \
        {"control": 6, "covid19": 4}
    shared = explain.stratified_image_ids(preds, 100, shared=True)
    assert len(shared) == 11 and "img00" not in shared  # img00 has no exp3 prediction


def test_summarize_localisation():
    scores = pd.DataFrame({
        "experiment": "exp1", "model": "m", "method": "r", "label": ["covid19"] * 3 + ["control"],
        "target": ["covid19"] * 3 + ["control"], "lung_mask": "truth", "dilation_px": 2,
        "lung_energy": [0.2, 0.6, np.nan, 0.5], "lung_area": [0.5, 0.5, 0.5, 0.4],
        "pointing_hit": [1.0, 0.0, np.nan, 1.0],
        "lesion_energy": [0.1, np.nan, np.nan, np.nan],
        "lesion_area": [0.05, np.nan, np.nan, np.nan],
        "lesion_hit": [0.0, np.nan, np.nan, np.nan]})
    table = explain.summarize_localisation(scores).set_index("label")
    covid = table.loc["covid19"]
    assert (covid["n_images"], covid["n_zero_maps"], covid["n_lesion"]) == (3, 1, 1)
    assert covid["lung_energy_mean"] == pytest.approx(0.4)
    assert covid["lung_energy_sd"] == pytest.approx(np.std([0.2, 0.6], ddof=1))
    assert covid["outside_energy_mean"] == pytest.approx(0.6)
    assert covid["pointing_hit_rate"] == pytest.approx(0.5)
    assert covid["lesion_energy_mean"] == pytest.approx(0.1)
    assert table.loc["control", "n_lesion"] == 0
    assert np.isnan(table.loc["control", "lesion_energy_mean"])


def test_compare_outside_energy_paired():
    scores = pd.DataFrame({
        "image_id": ["a", "b", "c", "d"] * 2,
        "experiment": ["exp1"] * 4 + ["exp3"] * 4,
        "lung_energy": [0.1, 0.3, 0.4, 0.5, 0.2, 0.5, 0.7, 0.9],
        "lung_area": [0.3] * 4 + [0.6] * 4,
    })
    out = explain.compare_outside_energy(scores, "exp1", "exp3")
    assert out["n_pairs"] == 4
    assert out["outside_a"] == pytest.approx(0.675) and out["outside_b"] == pytest.approx(0.425)
    assert out["mean_difference"] == pytest.approx(0.25) and out["share_a_higher"] == 1.0
    assert out["p_value"] == pytest.approx(1 / 16)  # four distinct positive differences: 1 / 2^4
    beyond = explain.compare_outside_energy(scores, "exp1", "exp3", beyond_chance=True)
    assert beyond["outside_a"] == pytest.approx(0.675 - 0.7)
    assert beyond["outside_b"] == pytest.approx(0.425 - 0.4)
    with pytest.raises(ValueError, match="'exp2' is not in the scores"):
        explain.compare_outside_energy(scores, "exp1", "exp2")


def test_compare_cohorts_unpaired():
    def cohort(gaps):
        n = len(gaps)
        return pd.DataFrame({"image_id": [f"i{k}" for k in range(n)] * 2,
                             "experiment": ["exp1"] * n + ["exp3"] * n,
                             "lung_energy": [0.5 - g for g in gaps] + [0.5] * n})
    planted, clean = cohort([0.3, 0.2, 0.4]), cohort([0.0, 0.05, -0.1])
    out = explain.compare_cohorts(planted, clean)
    assert (out["n_x"], out["n_y"]) == (3, 3)
    assert out["gap_x"] == pytest.approx(0.3) and out["gap_y"] == pytest.approx(-0.05 / 3)
    assert out["statistic"] == 9.0  # every planted gap above every clean one
    assert out["p_value"] == pytest.approx(1 / 20)  # 1 / C(6, 3), exact
    assert explain.compare_cohorts(clean, planted)["p_value"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 images"):
        explain.compare_cohorts(planted, cohort([0.1]))


def test_shortcut_comparison_hand_computed():
    def cohort(gaps, area1, area3):
        # exp3 puts half its mass outside; exp1 puts 0.5 + gap; lung areas per experiment
        n = len(gaps)
        return pd.DataFrame({"image_id": [f"i{k}" for k in range(n)] * 2,
                             "experiment": ["exp1"] * n + ["exp3"] * n,
                             "lung_energy": [0.5 - g for g in gaps] + [0.5] * n,
                             "lung_area": [area1] * n + [area3] * n})
    planted = cohort([0.3, 0.2, 0.4, 0.1], area1=0.3, area3=0.6)
    clean = cohort([0.0, 0.05, -0.1], area1=0.3, area3=0.6)
    table = explain.shortcut_comparison(planted, clean).set_index("measure")
    assert list(table.index) == ["outside_energy", "outside_energy_beyond_chance"]
    raw, beyond = table.loc["outside_energy"], table.loc["outside_energy_beyond_chance"]
    assert (raw["n_planted"], raw["n_clean"]) == (4, 3)
    assert raw["outside_exp1_planted"] == pytest.approx(0.75)
    assert raw["outside_exp3_planted"] == pytest.approx(0.5)
    assert raw["gap_planted"] == pytest.approx(0.25)
    assert raw["gap_clean"] == pytest.approx(-0.05 / 3)
    assert raw["p_planted"] == pytest.approx(1 / 16)  # four positive differences: 1 / 2^4
    assert raw["gap_difference"] == pytest.approx(0.25 + 0.05 / 3)
    # every planted gap above every clean one: 1 / C(7, 3)
    assert raw["p_gap"] == pytest.approx(1 / 35)
    # beyond chance: a uniform map puts 0.7 (exp1) and 0.4 (exp3) outside, so each gap drops by 0.3
    assert beyond["outside_exp1_planted"] == pytest.approx(0.75 - 0.7)
    assert beyond["outside_exp3_clean"] == pytest.approx(0.5 - 0.4)
    assert beyond["gap_planted"] == pytest.approx(0.25 - 0.3)
    assert beyond["gap_difference"] == pytest.approx(raw["gap_difference"])
    assert beyond["p_gap"] == pytest.approx(raw["p_gap"])  # the same shift in both cohorts
    with pytest.raises(ValueError, match="'exp3' is not in the scores"):
        explain.shortcut_comparison(planted, clean[clean["experiment"] == "exp1"])


def test_twin_mismatch_names_what_differs():
    def scores(**settings):
        base = {"cam_target": "label", "lung_dilation": 0.02}
        return pd.DataFrame({"image_id": ["a", "a"], "experiment": ["exp1", "exp3"],
                             "lung_energy": [0.4, 0.5], "lung_area": [0.5, 0.6],
                             **{**base, **settings}})
    assert explain.twin_mismatch(scores(), scores()) is None
    assert explain.twin_mismatch(scores(), scores(cam_target="predicted")) == \
        "`cam_target` differs or is missing (label vs predicted)"
    assert "`lung_dilation`" in explain.twin_mismatch(scores(), scores(lung_dilation=0.05))
    assert "`cam_target`" in explain.twin_mismatch(scores().drop(columns="cam_target"), scores())
    only_exp1 = scores().iloc[:1]
    assert (explain.twin_mismatch(scores(), only_exp1)
            == "the clean cohort has no scores of ['exp3']")


def test_claim_answer_needs_significance_and_direction():
    assert explain.claim_answer(0.01, 0.2) == "yes"
    assert explain.claim_answer(0.05, 0.2) == "no"  # not below alpha
    assert explain.claim_answer(0.01, -0.2) == "no"  # significant, but the other way
    assert explain.claim_answer(0.2, 0.3, alpha=0.25) == "yes"


def test_confident_outcomes():
    preds = pd.DataFrame({
        "image_id": list("abcdef"),
        "label": ["covid19", "covid19", "control", "control", "covid19", "control"],
        "p_control": [0.1, 0.3, 0.8, 0.4, 0.9, 0.6],
    })
    preds["p_covid19"] = 1 - preds["p_control"]
    preds["predicted"] = np.where(preds["p_covid19"] > 0.5, "covid19", "control")
    out = explain.confident_outcomes(preds)
    assert out["outcome"].astype(str).tolist() == ["true positive", "true negative",
                                                   "false positive", "false negative"]
    assert out["image_id"].tolist() == ["a", "c", "d", "e"]
    with pytest.raises(ValueError, match="binary table"):
        explain.confident_outcomes(preds.assign(p_pneumonia=0.0))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = build_classifier("covidnet", 3, image_size=32, width=0.0625).eval()
    model.classes = ["control", "pneumonia", "covid19"]
    return model


def test_grad_cam_has_the_input_shape(tiny_model):
    images = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    cams = explain.grad_cam(tiny_model, images, "covid19")
    assert cams.shape == (3, 32, 32) and cams.dtype == np.float32
    assert cams.min() >= 0 and cams.max() <= 1 + 1e-6
    per_image = explain.grad_cam(tiny_model, images, [0, 1, "covid19"], batch_size=2)
    assert np.allclose(per_image[2], cams[2], atol=1e-5)
    with pytest.raises(ValueError, match="'flu' is not one of the model's classes"):
        explain.grad_cam(tiny_model, images, "flu")
    with pytest.raises(ValueError, match="2 targets for 3 images"):
        explain.grad_cam(tiny_model, images, [0, 1])
    with pytest.raises(ValueError, match=r"\(N, S, S\)"):
        explain.grad_cam(tiny_model, images[0], 0)


def test_road_scores_shape_and_mismatch(tiny_model):
    images = np.random.default_rng(1).random((2, 32, 32)).astype(np.float32)
    cams = explain.grad_cam(tiny_model, images, 0)
    scores = explain.road_scores(tiny_model, images, cams, 0, percentiles=(50,))
    assert scores.shape == (2,) and np.isfinite(scores).all() and (np.abs(scores) <= 0.5).all()
    with pytest.raises(ValueError, match="different shapes"):
        explain.road_scores(tiny_model, images, cams[:, :16, :16], 0)


def test_cam_overlay():
    image = np.full((8, 8), 0.5, dtype=np.float32)
    cam = np.zeros((8, 8), dtype=np.float32)
    assert (explain.cam_overlay(image, cam, alpha=0.0) == 128).all()
    rgb = explain.cam_overlay(image, cam, alpha=0.5)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    with pytest.raises(ValueError, match="one shape"):
        explain.cam_overlay(image, cam[:4])


def test_compare_outside_energy_refuses_two_models_of_one_experiment():
    scores = pd.DataFrame({"image_id": ["a", "a", "a"], "experiment": ["exp1", "exp1", "exp3"],
                           "model": ["covidnet", "vgg16", "covidnet"], "method": "m",
                           "lung_energy": [0.5, 0.6, 0.7], "lung_area": 0.5})
    with pytest.raises(ValueError, match="more than one model"):
        explain.compare_outside_energy(scores, "exp1", "exp3")
