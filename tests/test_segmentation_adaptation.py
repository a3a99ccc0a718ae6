"""Adaptation of the lung U-Net to a corpus from its images alone."""
import numpy as np
import pandas as pd
import PIL.Image
import pytest
import torch

from cxrlib.data.manifest import load_manifest
from cxrlib.models.unet import UNet
from cxrlib.preprocess.segmentation import prepare_unet_input
from cxrlib.preprocess.segmentation_adaptation import (
    ManifestImages, adapt_unet, adapt_unet_to_manifest, adaptation_settings, adaptation_text,
    masks_before_after_figure, most_changed, plausibility_figure, pseudo_masks,
    reestimate_batchnorm,
)
from cxrlib.data.synthetic import generate_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("adapt_cohort")
    generate_cohort(out, preset="arias", n_images=10, size=64, seed=3, progress=False)
    return load_manifest(out / "manifest.csv")


def _unet(batch_norm=True):
    torch.manual_seed(0)
    return UNet(in_channels=1, width=0.125, batch_norm=batch_norm).eval()


def _images(n=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 1, (size + 3 * i, size)).astype(np.float32) for i in range(n)]


def test_batchnorm_statistics_become_those_of_the_target_images():
    model = _unet()
    prepared = np.stack([prepare_unet_input(im, 32) for im in _images()])
    adapted = reestimate_batchnorm(model, prepared, batch_size=4)
    # weights untouched, the model given left as it was
    for (name, a), b in zip(adapted.state_dict().items(), model.state_dict().values()):
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(a, b), name
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_bn = next(m for m in adapted.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        out = first_conv(torch.from_numpy(prepared[:, None]))
    # momentum None: the exact average of the per-batch means (batches of 4 and 2 images)
    batch_means = [out[:4].mean((0, 2, 3)), out[4:].mean((0, 2, 3))]
    expected = (batch_means[0] + batch_means[1]) / 2
    torch.testing.assert_close(first_bn.running_mean, expected, atol=1e-5, rtol=1e-4)
    original_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.equal(original_bn.running_mean, torch.zeros_like(original_bn.running_mean))
    assert first_bn.momentum == original_bn.momentum and not adapted.training


def test_a_unet_without_batchnorm_is_returned_unchanged():
    model = _unet(batch_norm=False)
    prepared = np.stack([prepare_unet_input(im, 32) for im in _images(3)])
    adapted = reestimate_batchnorm(model, prepared)
    assert adapted is not model
    for a, b in zip(adapted.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_pseudo_masks_and_their_plausibility():
    prepared = np.stack([prepare_unet_input(im, 32) for im in _images(3)])
    masks, scores = pseudo_masks(_unet(), prepared)
    assert masks.shape == (3, 32, 32) and masks.dtype == bool
    assert scores.shape == (3,) and ((0 <= scores) & (scores <= 1)).all()


class RecordingImages:
    """A sequence of images that records which items were read."""

    def __init__(self, images):
        self.images, self.read = images, []

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.read.append(int(i))
        return self.images[i]


def test_without_plausible_masks_only_the_batchnorm_step_runs():
    images = RecordingImages(_images(8))
    result = adapt_unet(_unet(), images, 32, epochs=2, min_plausibility=1.0, max_images=5, seed=1)
    report = result.report
    assert len(report) == 8 and report["used"].sum() == 5
    assert sorted(images.read) == sorted(report.loc[report["used"], "index"])  # each read once
    assert report.loc[~report["used"], "plausibility_before"].isna().all()
    assert not report["target"].any() and result.params["epochs"] == 0
    assert result.params["n_used"] == 5 and result.params["batch_norm_layers"] > 0
    np.testing.assert_allclose(report.loc[report["used"], "plausibility_after"],
                               report.loc[report["used"], "plausibility_batchnorm"])
    assert "did no self-training" in adaptation_text(result)


def test_self_training_fine_tunes_on_the_targets():
    model = _unet()
    result = adapt_unet(model, _images(6), 32, epochs=1, min_plausibility=0.0, batch_size=2,
                        lr=1e-2, domain_randomisation=("noise",), seed=0)
    assert result.report["target"].all() and result.params["epochs"] == 1
    assert result.params["n_targets"] == 6
    changed = [not torch.equal(a, b) for (k, a), b in
               zip(result.model.state_dict().items(), model.state_dict().values())
               if k.endswith("weight")]
    assert any(changed)
    assert "trained it for 1 epoch(s) on the 6 pseudo-masks" in adaptation_text(result)


def test_an_ensemble_is_adapted_member_by_member_on_its_own_pseudo_masks(monkeypatch):
    from cxrlib.models.unet import UNetEnsemble
    from cxrlib.preprocess import segmentation_adaptation

    torch.manual_seed(1)
    other = UNet(in_channels=1, width=0.125, batch_norm=True).eval()
    ensemble = UNetEnsemble([_unet(), other])
    calls = []
    real_train = segmentation_adaptation.train_unet

    def recording_train(images, masks, *args, **kwargs):
        calls.append((masks.copy(), kwargs["seed"], kwargs["init"]))
        return real_train(images, masks, *args, **kwargs)

    monkeypatch.setattr(segmentation_adaptation, "train_unet", recording_train)
    prepared = np.stack([prepare_unet_input(im, 32) for im in _images(6)])
    result = adapt_unet(ensemble, _images(6), 32, epochs=1, min_plausibility=0.0, batch_size=2,
                        lr=1e-2, seed=5)
    assert isinstance(result.model, UNetEnsemble) and len(result.model.members) == 2
    # both members learn from the same targets: the batch-norm-adapted ensemble's masks
    expected, _ = pseudo_masks(reestimate_batchnorm(ensemble, prepared), prepared)
    assert [seed for _, seed, _ in calls] == [5, 6]
    for masks, _, _ in calls:
        np.testing.assert_array_equal(masks, expected)
    # each member starts from its own batch-norm-adapted weights and changes
    for k, (_, _, init) in enumerate(calls):
        first = next(m for m in init.modules() if isinstance(m, torch.nn.Conv2d))
        given = next(m for m in ensemble.members[k].modules() if isinstance(m, torch.nn.Conv2d))
        assert torch.equal(first.weight, given.weight)
        after = next(m for m in result.model.members[k].modules()
                     if isinstance(m, torch.nn.Conv2d))
        assert not torch.equal(after.weight, given.weight)
    assert result.params["n_targets"] == 6


def test_each_round_trains_on_the_pseudo_masks_of_the_round_before(monkeypatch):
    from cxrlib.preprocess import segmentation_adaptation

    calls, returned = [], []
    real_train = segmentation_adaptation.train_unet

    def recording_train(images, masks, *args, **kwargs):
        calls.append((masks.copy(), kwargs["seed"], kwargs["init"]))
        out = real_train(images, masks, *args, **kwargs)
        returned.append(out[0])
        return out

    monkeypatch.setattr(segmentation_adaptation, "train_unet", recording_train)
    model = _unet()
    prepared = np.stack([prepare_unet_input(im, 32) for im in _images(6)])
    result = adapt_unet(model, _images(6), 32, epochs=1, min_plausibility=0.0, rounds=3,
                        batch_size=2, lr=1e-2, seed=5)
    assert [seed for _, seed, _ in calls] == [5, 6, 7]
    # round 1 from the batch-norm-adapted network's masks, then each from the round before's
    first, _ = pseudo_masks(reestimate_batchnorm(model, prepared), prepared)
    np.testing.assert_array_equal(calls[0][0], first)
    for r in (1, 2):
        assert calls[r][2] is returned[r - 1]
        np.testing.assert_array_equal(calls[r][0], pseudo_masks(returned[r - 1], prepared)[0])
    assert result.model is returned[-1]
    _, final = pseudo_masks(returned[-1], prepared)
    np.testing.assert_allclose(result.report["plausibility_after"], final)
    assert (result.report["target_rounds"] == 3).all() and result.report["target"].all()
    p = result.params
    assert p["rounds"] == 3 and p["n_targets_per_round"] == [6, 6, 6]
    assert p["epochs_per_round"] == [1, 1, 1] and p["n_targets"] == 6
    assert "in 3 rounds" in adaptation_text(result) and "6, 6, 6 of them" in adaptation_text(result)
    # with no plausible mask there is no round to run
    none = adapt_unet(model, _images(4), 32, epochs=1, min_plausibility=1.0, rounds=3)
    assert none.params["rounds"] == 0 and none.params["n_targets_per_round"] == []
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        adapt_unet(model, _images(2), 32, rounds=0)


def test_min_steps_raises_the_epochs_on_a_small_corpus():
    """6 targets in batches of 4: one step per epoch (the partial batch is dropped), so 5 steps
    take 5 epochs; with 100 targets 25 steps an epoch, 1 epoch is already enough."""
    from cxrlib.preprocess.segmentation import epochs_for_min_steps

    assert epochs_for_min_steps(1, 6, 4, 5) == 5
    assert epochs_for_min_steps(1, 100, 4, 5) == 1
    assert epochs_for_min_steps(3, 4, 4, 0) == 3  # a batch of all 4: 1 step, no floor
    assert epochs_for_min_steps(2, 9, 4, 7) == 4  # 2 steps an epoch
    result = adapt_unet(_unet(), _images(6), 32, epochs=1, min_steps=5, min_plausibility=0.0,
                        batch_size=4, seed=0)
    assert result.params["epochs"] == 5 and result.params["min_steps"] == 5
    assert "trained it for 5 epoch(s) on the 6 pseudo-masks" in adaptation_text(result)
    # epochs=0 stays the batch-norm step only, whatever the floor
    assert adapt_unet(_unet(), _images(3), 32, epochs=0, min_steps=5,
                      min_plausibility=0.0).params["epochs"] == 0


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="no images"):
        adapt_unet(_unet(), [], 32)
    with pytest.raises(ValueError, match="min_plausibility"):
        adapt_unet(_unet(), _images(2), 32, min_plausibility=1.5)


def test_the_adaptation_reads_images_and_never_a_mask(cohort, monkeypatch):
    opened = []
    real_open = PIL.Image.open

    def recording_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", recording_open)
    assert cohort["lung_mask_path"].notna().all()  # the masks are there to be (not) read
    result = adapt_unet_to_manifest(_unet(), 32, cohort, cohort.attrs["data_root"], "smoke")
    assert opened, "the images should be read through PIL"
    assert not [p for p in opened if "masks" in p]
    image_paths = {str(p) for p in ManifestImages(cohort, cohort.attrs["data_root"]).paths}
    assert set(opened) <= image_paths
    assert list(result.report["image_id"]) == list(cohort["image_id"])
    assert result.params["n_used"] == min(len(cohort), adaptation_settings("smoke")["max_images"])


def test_profile_settings_and_figures(cohort):
    settings = adaptation_settings("default")
    assert settings["epochs"] == 1 and settings["lr"] == pytest.approx(3e-4)
    assert settings["min_steps"] == 30 and adaptation_settings("smoke")["min_steps"] == 0
    assert settings["rounds"] == 3 and adaptation_settings("paper")["rounds"] == 1
    assert "rotation" in settings["domain_randomisation"]
    assert settings["loss"] == "bce+dice" and adaptation_settings("paper")["loss"] == "bce"
    images = [ManifestImages(cohort, cohort.attrs["data_root"])[i] for i in range(3)]
    result = adapt_unet(_unet(), images, 32, epochs=0)
    fig = plausibility_figure(result.report, 0.9)
    assert len(fig.axes[0].patches) >= 3
    fig = masks_before_after_figure(images, ["a", "b", "c"], _unet(), result.model, 32)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"]
    long_id = "covid-19-rapidly-progressive-acute-respiratory-distress-syndrome-ards-admission"
    fig = masks_before_after_figure(images[:1], [long_id], _unet(), result.model, 32)
    lines = fig.axes[0].get_title().split("\n")
    assert len(lines) >= 3 and max(map(len, lines)) <= 34 and "".join(lines) == long_id
    with pytest.raises(ValueError, match="no images"):
        masks_before_after_figure([], [], _unet(), _unet(), 32)
    assert isinstance(result.report, pd.DataFrame)


def test_most_changed_orders_by_plausibility_change():
    report = pd.DataFrame({"index": range(5), "plausibility_before": [0.2, 1.0, np.nan, 0.5, 0.9],
                           "plausibility_after": [0.9, 1.0, np.nan, 0.4, 0.3]})
    assert list(most_changed(report, 3)) == [0, 4, 3]
    assert list(most_changed(report, 5))[-1] == 2  # outside the sample: last
