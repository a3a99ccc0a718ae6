"""Lung segmentation: the U-Net, training, weights, post-processing, QC, scores, inference."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrlib.data.images import read_mask
from cxrlib.data.manifest import validate_manifest
from cxrlib.models import UNet
from cxrlib.preprocess.segmentation import (
    dice_score, has_lung_mask, iou_score, load_unet, lung_qc, postprocess_mask, rows_with_masks,
    prepare_unet_input, read_unet_params, reference_scores, save_unet, score_masks, scores_table,
    segment_manifest, split_by_patient, summarise_scores, train_unet, train_unet_on_manifest,
    worst_cases,
)
from cxrlib.preprocess.views import mask_file_name


def lung_pair(size: int, shift: float = 0.0) -> np.ndarray:
    """Two vertical ellipses, bool (size, size)."""
    yy, xx = np.mgrid[:size, :size] / size
    left = ((xx - (0.3 + shift)) / 0.13) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
    right = ((xx - (0.7 + shift)) / 0.13) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
    return left | right


def radiograph(mask: np.ndarray, seed: int) -> np.ndarray:
    """Bright body, dark lungs, noise: float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    return np.clip(0.7 - 0.4 * mask + rng.normal(0, 0.05, mask.shape), 0, 1).astype(np.float32)


# ---------------------------------------------------------------------------------- scores


def test_dice_and_iou_match_hand_computed_values():
    pred = np.zeros((4, 4), bool)
    truth = np.zeros((4, 4), bool)
    pred[0, 0:4] = True                  # 4 pixels
    truth[0, 1:4] = True                 # 6 pixels, 3 shared
    truth[1, 0:3] = True
    assert dice_score(pred, truth) == pytest.approx(2 * 3 / (4 + 6))
    assert iou_score(pred, truth) == pytest.approx(3 / 7)
    empty = np.zeros((4, 4), bool)
    assert dice_score(empty, empty) == 1.0 and iou_score(empty, empty) == 1.0
    assert dice_score(pred, empty) == 0.0 and iou_score(empty, pred) == 0.0
    with pytest.raises(ValueError, match="shape"):
        dice_score(pred, np.zeros((4, 5), bool))


def test_summaries_worst_cases_and_reference_table():
    scores = pd.DataFrame({
        "image_id": ["a", "b", "c", "d"], "source": ["s1", "s1", "s2", "s2"],
        "label": ["control", "covid19", "control", "covid19"],
        "dice": [0.9, 0.7, 0.8, 0.6], "iou": [0.8, 0.6, 0.7, 0.5],
    })
    by_source = summarise_scores(scores, by="source").set_index("source")
    assert by_source.loc["s1", "n"] == 2
    assert by_source.loc["s1", "dice_mean"] == pytest.approx(0.8)
    assert by_source.loc["s2", "iou_sd"] == pytest.approx(np.std([0.7, 0.5], ddof=1))
    overall = summarise_scores(scores, by=None)
    assert overall.loc[0, "dice_mean"] == pytest.approx(0.75) and overall.loc[0, "n"] == 4
    assert list(summarise_scores(scores, by="label")["label"]) == ["control", "covid19"]
    assert list(worst_cases(scores, n=2)["image_id"]) == ["d", "b"]
    with pytest.raises(ValueError, match="group"):
        summarise_scores(scores, by="sex")

    ref = reference_scores().set_index("dataset")
    assert ref.loc["JSRT", "dice"] == 0.985 and ref.loc["JSRT", "iou"] == 0.971
    assert ref.loc["Montgomery", "dice"] == 0.972 and ref.loc["Montgomery", "iou"] == 0.956
    table = scores_table(scores)
    assert list(table["what"]) == ["paper"] * 2 + ["reproduced"] * 5  # 2 sources, 2 labels, all
    assert table.iloc[-1]["group"] == "all" and table.iloc[-1]["dice"] == pytest.approx(0.75)


# ---------------------------------------------------------------------------------- post-processing


def test_postprocessing_thresholds_removes_small_regions_fills_holes_keeps_two():
    prob = np.zeros((100, 100), dtype=np.float32)
    prob[10:90, 10:40] = 0.9             # left lung, 2400 px
    prob[40:50, 20:30] = 0.1             # a hole inside it
    prob[10:80, 60:90] = 0.8             # right lung, 2100 px
    prob[92:96, 92:96] = 0.9             # 16 px < 2% of 10000: removed
    prob[0:5, 45:55] = 0.5               # exactly the threshold: not lung
    prob[85:100, 45:58] = 0.7            # 195 px, just under 2%: removed
    prob[5:30, 44:56] = 0.95             # 300 px >= 2%: kept by step 2, dropped by step 4
    out = postprocess_mask(prob)
    expected = np.zeros((100, 100), bool)
    expected[10:90, 10:40] = True        # hole filled
    expected[10:80, 60:90] = True
    np.testing.assert_array_equal(out, expected)
    # each step can be switched off
    assert not postprocess_mask(prob, fill_holes=False)[45, 25]
    kept_all = postprocess_mask(prob, max_regions=None)
    assert kept_all[10, 50] and not kept_all[94, 94] and not kept_all[90, 50]
    assert postprocess_mask(prob, min_region_fraction=0.0, max_regions=None)[94, 94]


def test_qc_flag_needs_both_lungs_and_enough_lung_area():
    both = np.zeros((100, 100), bool)
    both[10:90, 10:40] = True            # 24%
    both[10:80, 60:90] = True            # 21% -> 45% in all
    qc = lung_qc(both)
    seed_003 = ["qc_lung_regions", "qc_lungs_found", "qc_lung_fraction", "qc_pass", "qc_reason"]
    assert {k: qc[k] for k in seed_003} == {
        "qc_lung_regions": 2, "qc_lungs_found": True, "qc_lung_fraction": pytest.approx(0.45),
        "qc_pass": True, "qc_reason": ""}
    assert qc["qc_plausibility"] == 1.0  # plus the plausibility rules (test_lung_plausibility)

    one = both.copy()
    one[:, 50:] = False
    qc = lung_qc(one)
    assert not qc["qc_lungs_found"] and not qc["qc_pass"] and "one lung" in qc["qc_reason"]

    small = np.zeros((100, 100), bool)
    small[20:70, 10:30] = True           # 10% + 10% = 20%
    small[20:70, 60:80] = True
    qc = lung_qc(small, min_lung_fraction=0.30)  # seed 003's threshold
    assert qc["qc_lungs_found"] and not qc["qc_pass"] and "30%" in qc["qc_reason"]
    assert lung_qc(small, min_lung_fraction=0.15)["qc_pass"]
    trimmed = small.copy()
    trimmed[69] = False  # 19.6% < the default 20%
    assert not lung_qc(trimmed)["qc_pass"] and "< 20%" in lung_qc(trimmed)["qc_reason"]

    tiny_second = both.copy()
    tiny_second[:, 50:] = False
    tiny_second[10:20, 60:70] = True     # 1% "lung"
    assert not lung_qc(tiny_second)["qc_lungs_found"]
    assert lung_qc(np.zeros((10, 10), bool))["qc_reason"].startswith("no lung")


def test_prepare_unet_input_is_standardised_and_sized():
    image = radiograph(lung_pair(90), seed=0)[:, :70]
    x = prepare_unet_input(image, 32)
    assert x.shape == (32, 32) and x.dtype == np.float32
    assert abs(x.mean()) < 1e-5 and x.std() == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------------------------- the network


@pytest.mark.parametrize("width", [0.25, 0.5])
@pytest.mark.parametrize("shape", [(16, 16), (64, 64), (40, 72), (33, 47)])
def test_unet_output_has_the_input_size(width, shape):
    net = UNet(width=width)
    out = net(torch.zeros(2, 1, *shape))
    assert out.shape == (2, 1, *shape)


def test_unet_channels_follow_the_paper_and_the_width():
    convs = [m for m in UNet(width=1.0).modules() if isinstance(m, torch.nn.Conv2d)]
    outs = [c.out_channels for c in convs]
    assert outs[:10] == [32, 32, 64, 64, 64, 64, 128, 128, 256, 256]
    assert outs[-1] == 1 and convs[-1].kernel_size == (1, 1)
    half = [m.out_channels for m in UNet(width=0.5).modules() if isinstance(m, torch.nn.Conv2d)]
    assert half[:10] == [16, 16, 32, 32, 32, 32, 64, 64, 128, 128]


def test_unet_rejects_bad_input():
    net = UNet(width=0.25)
    with pytest.raises(ValueError, match="at least 16"):
        net(torch.zeros(1, 1, 8, 64))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        net(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="width"):
        UNet(width=0)


def test_an_ensemble_averages_its_members_probabilities():
    from cxrlib.models.unet import UNetEnsemble

    torch.manual_seed(0)
    a, b = UNet(width=0.25).eval(), UNet(width=0.25).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        pa, pb = torch.sigmoid(a(x)), torch.sigmoid(b(x))
        both = torch.sigmoid(UNetEnsemble([a, b])(x))
        alone = torch.sigmoid(UNetEnsemble([a])(x))
    assert both.shape == (2, 1, 32, 32)
    torch.testing.assert_close(both, (pa + pb) / 2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(alone, pa, atol=1e-6, rtol=1e-5)
    # hand-made members: constant logits 2 and -1 -> mean of sigmoid(2) and sigmoid(-1)
    class Constant(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, x):
            return torch.full((len(x), 1, *x.shape[-2:]), self.value)

    got = torch.sigmoid(UNetEnsemble([Constant(2.0), Constant(-1.0)])(x))
    want = (1 / (1 + np.exp(-2.0)) + 1 / (1 + np.exp(1.0))) / 2
    assert got.min().item() == pytest.approx(want) and got.max().item() == pytest.approx(want)
    with pytest.raises(ValueError, match="at least one member"):
        UNetEnsemble([])


def _tiny_training_set(n: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    masks = np.stack([lung_pair(size, shift=rng.normal(0, 0.03)) for _ in range(n)])
    images = np.stack([prepare_unet_input(radiograph(m, seed + i), size)
                       for i, m in enumerate(masks)])
    return images, masks


def _bce(model, images, masks) -> float:
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(images[:, None]))
    target = torch.from_numpy(masks[:, None].astype(np.float32))
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target).item()


def test_one_epoch_of_training_runs_and_reduces_the_loss():
    images, masks = _tiny_training_set(48, 32, seed=0)
    valid_images, valid_masks = _tiny_training_set(8, 32, seed=100)
    torch.manual_seed(0)
    before = _bce(UNet(width=0.25), images, masks)   # the same initial weights as seed 0 below
    model, history = train_unet(images, masks, valid_images, valid_masks, width=0.25, epochs=1,
                                batch_size=8, lr=3e-3, schedule="constant", seed=0,
                                progress=False)
    assert list(history.columns) == ["epoch", "train_loss", "valid_loss", "valid_dice"]
    assert len(history) == 1
    assert _bce(model, images, masks) < before - 0.01
    again, _ = train_unet(images, masks, valid_images, valid_masks, width=0.25, epochs=1,
                          batch_size=8, lr=3e-3, schedule="constant", seed=0, progress=False)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)              # same seed, same weights


def test_bce_dice_loss_against_hand_computed_values():
    from cxrlib.preprocess.segmentation.training import BCEDiceLoss, unet_loss

    loss = BCEDiceLoss()
    # logits 0: p = 0.5 everywhere; target one image of 4 pixels, 2 of them lung
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # BCE = ln 2 at every pixel; soft Dice = (2 * 1 + 1) / (2 + 2 + 1) = 0.6
    assert loss(logits, target).item() == pytest.approx(np.log(2) + 0.4, abs=1e-6)
    # two images: the Dice term is the mean of the per-image terms, not a pooled one
    logits2 = torch.zeros(2, 1, 2, 2)
    target2 = torch.stack([target[0], torch.ones(1, 2, 2)])
    # image 2: (2 * 2 + 1) / (2 + 4 + 1) = 5/7
    want = np.log(2) + 1 - (0.6 + 5 / 7) / 2
    assert loss(logits2, target2).item() == pytest.approx(want, abs=1e-6)
    # a confident, right prediction costs almost nothing; a confident, wrong one a lot
    right = (target * 2 - 1) * 20
    assert loss(right, target).item() < 1e-3
    assert loss(-right, target).item() > 10
    assert unet_loss("bce")(logits, target).item() == pytest.approx(np.log(2), abs=1e-6)
    with pytest.raises(ValueError, match="unknown U-Net loss 'dice'"):
        unet_loss("dice")
    with pytest.raises(ValueError, match="unknown U-Net loss"):
        train_unet_on_manifest(pd.DataFrame({"lung_mask_path": []}), "x.pt", profile="smoke",
                               loss="focal", progress=False)


def test_training_rejects_mismatched_arrays():
    images, masks = _tiny_training_set(4, 32, seed=0)
    with pytest.raises(ValueError, match="train_images"):
        train_unet(images, masks[:3], images, masks, progress=False)


def test_weights_round_trip_with_parameters(tmp_path):
    net = UNet(width=0.25, batch_norm=True).eval()
    path = save_unet(net, tmp_path / "w" / "unet.pt", {"epochs": 3, "size": 32})
    loaded = load_unet(path)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    params = json.loads((tmp_path / "w" / "unet.json").read_text())
    assert params["epochs"] == 3 and params["architecture"]["width"] == 0.25
    assert params["architecture"]["batch_norm"] is True
    assert read_unet_params(path) == params
    assert read_unet_params(tmp_path / "elsewhere.pt") == {}


def test_missing_or_foreign_weights_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebook 01.*train_unet"):
        load_unet(tmp_path / "nope.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a cxrlib U-Net"):
        load_unet(tmp_path / "other.pt")


# ---------------------------------------------------------------------------------- manifests


@pytest.fixture()
def tiny_cohort(tmp_path):
    """12 hand-made 48 x 40 radiographs of 6 patients with lung masks, as a manifest."""
    root = tmp_path / "data"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    rows = []
    for i in range(12):
        mask = lung_pair(48, shift=0.02 * (i % 3 - 1))[:, 4:44]
        Image.fromarray((radiograph(mask, i) * 255).astype(np.uint8)).save(root / f"images/{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / f"masks/{i}.png")
        rows.append({"image_id": f"img/{i}", "path": f"images/{i}.png", "patient_id": f"p{i // 2}",
                     "source": "A" if i < 6 else "B", "label": "control",
                     "lung_mask_path": f"masks/{i}.png"})
    manifest = validate_manifest(pd.DataFrame(rows), data_root=root)
    manifest.attrs["data_root"] = str(root)
    return manifest


def test_which_rows_have_a_lung_mask():
    manifest = pd.DataFrame({"image_id": list("abcde"),
                             "lung_mask_path": ["m/a.png", None, "", "  ", "m/e.png"]})
    assert has_lung_mask(manifest).tolist() == [True, False, False, False, True]
    assert rows_with_masks(manifest)["image_id"].tolist() == ["a", "e"]
    no_column = manifest.drop(columns="lung_mask_path")
    assert not has_lung_mask(no_column).any() and len(has_lung_mask(no_column)) == 5
    with pytest.raises(ValueError, match="no 'lung_mask_path' column"):
        rows_with_masks(no_column)


def test_split_by_patient_keeps_each_patient_in_one_subset(tiny_cohort):
    subset = split_by_patient(tiny_cohort, valid_size=0.2, test_size=0.2, seed=1)
    assert set(subset) == {"train", "valid", "test"}
    per_patient = subset.groupby(tiny_cohort["patient_id"]).nunique()
    assert (per_patient == 1).all()
    pd.testing.assert_series_equal(subset, split_by_patient(tiny_cohort, 0.2, 0.2, seed=1))
    with pytest.raises(ValueError, match="sum to less than 1"):
        split_by_patient(tiny_cohort, valid_size=0.5, test_size=0.5)


class DarkIsLung(torch.nn.Module):
    """A stand-in segmenter for the hand-made radiographs: after equalisation the dark lungs
    (~30% of the pixels) lie below about -0.7 standard deviations."""

    def forward(self, x):
        return -8.0 * (x + 0.7)


def test_segment_manifest_writes_masks_and_qc_and_scores_them(tiny_cohort, tmp_path):
    out_dir = tmp_path / "pred"
    seg = segment_manifest(DarkIsLung(), tiny_cohort, out_dir, size=32, batch_size=5,
                           min_lung_fraction=0.30, progress=False)
    assert list(seg.columns)[:7] == ["image_id", "mask_path", "qc_lung_regions",
                                     "qc_lungs_found", "qc_lung_fraction", "qc_pass", "qc_reason"]
    assert {"qc_plausibility", "qc_rule_top_edge"} <= set(seg.columns)
    assert list(seg["image_id"]) == list(tiny_cohort["image_id"])
    first = read_mask(out_dir / mask_file_name("img/0"))
    assert first.shape == (48, 40)
    assert seg["qc_lungs_found"].all()
    # the ellipses cover 29.6% of the 48 x 40 image: just under the 30% rule
    truth_fraction = read_mask(tiny_cohort.attrs["data_root"] + "/masks/0.png").mean()
    assert truth_fraction == pytest.approx(0.296, abs=0.001)
    assert seg["qc_lung_fraction"].to_numpy() == pytest.approx(truth_fraction, abs=0.02)
    assert not seg["qc_pass"].any() and seg["qc_reason"].str.contains("< 30%").all()
    loose = segment_manifest(DarkIsLung(), tiny_cohort, out_dir, size=32, min_lung_fraction=0.1,
                             progress=False)
    assert loose["qc_pass"].all()

    scores = score_masks(tiny_cohort, out_dir, progress=False)
    assert len(scores) == 12 and scores["dice"].min() > 0.95
    assert set(scores["source"]) == {"A", "B"}
    (out_dir / mask_file_name("img/3")).unlink()
    with pytest.raises(FileNotFoundError, match="img/3"):
        score_masks(tiny_cohort, out_dir, progress=False)


def test_train_unet_on_manifest_saves_weights_and_parameters(tiny_cohort, tmp_path):
    fit = train_unet_on_manifest(tiny_cohort, tmp_path / "unet.pt", profile="smoke", size=32,
                                 epochs=1, batch_size=4, valid_size=0.2, test_size=0.2,
                                 progress=False)
    assert fit.weights_path.is_file() and len(fit.history) == 1
    assert set(fit.split["subset"]) == {"train", "valid", "test"}
    params = json.loads((tmp_path / "unet.json").read_text())
    assert params["size"] == 32 and params["width"] == 0.25 and params["n_train"] > 0
    assert params["n_train"] + params["n_valid"] + params["n_test"] == 12
    assert params["loss"] == "binary cross-entropy + soft Dice (on logits)"  # smoke's seg_loss
    assert isinstance(load_unet(fit.weights_path), UNet)
    no_masks = tiny_cohort.assign(lung_mask_path=pd.NA)
    with pytest.raises(ValueError, match="lung_mask_path"):
        train_unet_on_manifest(no_masks, tmp_path / "x.pt", profile="smoke", progress=False)


def test_train_segment_score_and_views_on_a_synthetic_cohort(tmp_path):
    """The whole chain on the generator's files: 16-bit and 8-bit PNGs of several sizes."""
    from cxrlib.data.synthetic import generate_cohort
    from cxrlib.preprocess.views import build_views

    manifest = generate_cohort(tmp_path / "cohort", preset="arias", n_images=24, size=64, seed=0,
                               progress=False)
    fit = train_unet_on_manifest(manifest, tmp_path / "unet.pt", profile="smoke", size=32,
                                 epochs=1, progress=False)
    assert fit.params["n_train"] + fit.params["n_valid"] + fit.params["n_test"] == 24
    seg = segment_manifest(load_unet(fit.weights_path), manifest, tmp_path / "pred", size=32,
                           progress=False)
    assert len(seg) == 24 and seg["qc_lung_fraction"].between(0, 1).all()
    scores = score_masks(manifest, tmp_path / "pred", progress=False)
    assert len(scores) == 24 and scores["dice"].between(0, 1).all()
    views = build_views(manifest, None, size=32, cache_dir=tmp_path / "views", progress=False)
    assert len(views.table) == 24 * 4 and views.n_computed == 96


def test_hole_filling_keeps_notches_open_to_the_border():
    prob = np.zeros((30, 30), dtype=np.float32)
    prob[5:25, 5:25] = 0.9
    prob[10:15, 10:15] = 0.0          # a hole: filled
    prob[0:20, 18:20] = 0.0           # a slit from the top border: background, kept open
    out = postprocess_mask(prob, min_region_fraction=0.0)
    assert out[12, 12] and not out[10, 19] and not out[0, 0]
    assert out.sum() == 400 - 2 * 15


def test_inference_batches_are_capped_and_give_the_same_probabilities(monkeypatch):
    from cxrlib.preprocess.segmentation import inference
    from cxrlib.preprocess.segmentation.inference import (
        CPU_ACTIVATION_BYTES, _cpu_batch_limit, predict_lung_probability,
    )

    torch.manual_seed(0)
    model = UNet(width=0.5).eval()
    # the full-resolution decoder input of width 0.5 has 2 x 16 channels of 4 bytes
    assert _cpu_batch_limit(model, (128, 128)) == CPU_ACTIVATION_BYTES // (32 * 128 * 128 * 4) == 8
    assert _cpu_batch_limit(UNet(width=1.0), (1024, 1024)) == 1
    images = np.random.default_rng(0).standard_normal((5, 32, 32)).astype(np.float32)
    one_by_one = np.concatenate([predict_lung_probability(model, images[i:i + 1])
                                 for i in range(5)])
    np.testing.assert_allclose(predict_lung_probability(model, images, batch_size=5), one_by_one,
                               atol=1e-6)
    # a cap small enough to bite at 32 px: 2 images of 2 x 16 channels x 32 x 32 x 4 bytes
    monkeypatch.setattr(inference, "CPU_ACTIVATION_BYTES", 2 * 32 * 32 * 32 * 4 + 1)
    batches = []
    hook = model.register_forward_hook(lambda module, args, out: batches.append(len(args[0])))
    capped = predict_lung_probability(model, images, batch_size=5, device="cpu")
    hook.remove()
    assert batches == [2, 2, 1]
    np.testing.assert_allclose(capped, one_by_one, atol=1e-6)
