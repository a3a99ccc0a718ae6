"""The U-Net for corpora without masks: trained once on the synthetic cohort, cached, provenance."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrlib.data.manifest import load_manifest
from cxrlib.data.synthetic import default_cohort
from cxrlib.preprocess.segmentation import (
    read_unet_params, score_masks, segment_manifest, split_by_patient,
)
from cxrlib.profiles import get_profile
from cxrlib.preprocess.synthetic_unet import (
    cache_key, member_seeds, provenance_text, real_pairs, real_sample_dir, score_on_real,
    synthetic_unet, weights_path,
)

# a profile small enough to train in seconds: 24 images of 64 px, U-Net at 32 px
TINY = get_profile("smoke").with_overrides(seg_synthetic_images=24, synth_size=64, seg_size=32,
                                          seg_min_steps=4, seg_ensemble=1)


def _pair(folder, name, size=(40, 48)):
    """A hand-made 'radiograph' with two bright lung boxes and their mask."""
    image = np.full(size, 0.2)
    mask = np.zeros(size, bool)
    mask[8:32, 6:20] = mask[8:32, 28:42] = True
    image[mask] = 0.8
    for sub, array in (("images", image), ("masks", mask * 1.0)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray((array * 255).astype(np.uint8)).save(folder / sub / f"{name}.png")


def test_cache_key_follows_what_changes_the_network():
    assert cache_key(TINY, 0) == cache_key(TINY, 0)
    assert cache_key(TINY, 0) != cache_key(TINY, 1)
    assert cache_key(TINY, 0) != cache_key(TINY.with_overrides(seg_synthetic_epochs=2), 0)
    # the corpus U-Net's epochs and the ensemble size change no member
    assert cache_key(TINY, 0) == cache_key(TINY.with_overrides(seg_epochs=2, seg_ensemble=3), 0)
    assert cache_key(TINY, 0) != cache_key(TINY.with_overrides(seg_loss="bce"), 0)
    # a field the U-Net does not depend on leaves the key alone
    assert cache_key(TINY, 0) == cache_key(TINY.with_overrides(epochs=9), 0)
    assert weights_path(TINY, 0).name.startswith("synthetic-smoke-s0-")


def test_real_sample_folder_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_REAL_SAMPLE", "")
    assert real_sample_dir() is None
    monkeypatch.setenv("CXR_REAL_SAMPLE", str(tmp_path))
    assert real_sample_dir() is None  # no images/ and masks/
    _pair(tmp_path, "a")
    assert real_sample_dir() == tmp_path
    (tmp_path / "images" / "b.png").write_bytes((tmp_path / "images" / "a.png").read_bytes())
    with pytest.raises(FileNotFoundError, match="have no mask"):
        real_pairs(tmp_path)


def test_trained_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "data"))
    sample = tmp_path / "sample"
    _pair(sample, "a")
    _pair(sample, "b", size=(50, 40))
    monkeypatch.setenv("CXR_REAL_SAMPLE", str(sample))
    logged = []
    first = synthetic_unet(TINY, seed=0, log=logged.append)
    assert first.provenance["trained_now"] and len(logged) == 1
    assert first.weights_path == weights_path(TINY, 0) and first.weights_path.is_file()
    assert first.size == 32
    p = first.provenance
    assert p["n_held_out"] > 0 and 0 <= p["held_out_dice"] <= 1
    # scored on the patients the training held out (the same split, recomputed)
    assert p["n_held_out"] == read_unet_params(first.weights_path)["n_test"]
    assert p["real_sample_n"] == 2 and 0 <= p["real_sample_dice"] <= 1
    assert p["real_sample_dir"] == "sample"  # the folder's name, not the machine's path
    scores = score_on_real(first.model, first.size, sample)
    assert scores["dice"].mean() == pytest.approx(p["real_sample_dice"])
    # the per-image table behind the real-sample figures is kept with them
    table = first.real_sample
    assert list(table["image"]) == ["a", "b"]
    assert table["dice"].tolist() == pytest.approx(scores["dice"].tolist())
    assert table["dice_adapted"].mean() == pytest.approx(p["real_sample_dice_adapted"])
    assert first.real_sample_adaptation["rounds"] <= TINY.seg_adapt_rounds
    assert list(scores["image"]) == ["a", "b"] and scores.loc[1, "height"] == 50

    again = synthetic_unet(TINY, seed=0, log=logged.append)
    assert not again.provenance["trained_now"] and len(logged) == 1
    assert again.provenance["held_out_dice"] == p["held_out_dice"]
    pd.testing.assert_frame_equal(again.real_sample, table)  # read back, not measured again
    for name, param in first.model.state_dict().items():
        assert np.array_equal(param.numpy(), again.model.state_dict()[name].numpy())
    text = provenance_text(again.provenance)
    assert "read from the cache" in text and "2 real radiographs" in text

    # the adapted score belongs to the adaptation it was measured with: another is re-measured
    # (same weights: the adaptation settings are not in the cache key)
    from cxrlib.preprocess import segmentation_adaptation

    adapted = []
    real_adapt = segmentation_adaptation.adapt_unet
    monkeypatch.setattr(segmentation_adaptation, "adapt_unet",
                        lambda *a, **k: adapted.append(k["rounds"]) or real_adapt(*a, **k))
    synthetic_unet(TINY, seed=0, log=logged.append)
    assert adapted == []
    rounds = TINY.with_overrides(seg_adapt_rounds=TINY.seg_adapt_rounds + 1)
    assert weights_path(rounds, 0) == first.weights_path
    synthetic_unet(rounds, seed=0, log=logged.append)
    assert adapted == [TINY.seg_adapt_rounds + 1] and len(logged) == 1
    recorded = read_unet_params(first.weights_path)["real_sample_adaptation"]
    assert recorded["rounds"] == TINY.seg_adapt_rounds + 1

    monkeypatch.setenv("CXR_REAL_SAMPLE", "")
    without = synthetic_unet(TINY, seed=0, log=logged.append)
    assert without.provenance["real_sample_dice"] is None and without.real_sample is None
    assert "not measured" in provenance_text(without.provenance)


def test_member_seeds_of_two_study_seeds_never_overlap():
    assert member_seeds(0, 1) == [0] and member_seeds(7, 1) == [7]
    assert member_seeds(0, 3) == [0, 1, 2] and member_seeds(1, 3) == [3, 4, 5]
    with pytest.raises(ValueError, match="at least 1 member"):
        member_seeds(0, 0)


def test_an_ensemble_of_cached_members(tmp_path, monkeypatch):
    from cxrlib.models.unet import UNetEnsemble

    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "data"))
    sample = tmp_path / "sample"
    _pair(sample, "a")
    monkeypatch.setenv("CXR_REAL_SAMPLE", str(sample))
    pair = TINY.with_overrides(seg_ensemble=2)
    single = synthetic_unet(TINY, seed=1, log=lambda text: None)  # member seed 1 of study seed 0
    logged = []
    net = synthetic_unet(pair, seed=0, log=logged.append)
    assert isinstance(net.model, UNetEnsemble) and len(net.model.members) == 2
    assert net.weights_paths == (weights_path(pair, 0), weights_path(pair, 1))
    assert len(logged) == 1 and "seed 0" in logged[0]  # seed 1 came from the cache
    for name, param in single.model.state_dict().items():
        assert torch.equal(param, net.model.members[1].state_dict()[name])
    p = net.provenance
    assert p["member_seeds"] == [0, 1] and p["trained_now"]
    # the held-out Dice is the ensemble's own, on member 0's held-out patients
    members = [read_unet_params(path) for path in net.weights_paths]
    assert p["members_held_out_dice"] == [m["held_out_dice"] for m in members]
    assert p["n_held_out"] == members[0]["n_held_out"] == members[0]["n_test"]
    cohort = load_manifest(default_cohort("lungseg", pair, seed=0))
    test = cohort[split_by_patient(cohort, seed=0) == "test"]
    segment_manifest(net.model, test, tmp_path / "masks", size=net.size, progress=False)
    by_hand = score_masks(test, tmp_path / "masks", progress=False)
    assert p["held_out_dice"] == pytest.approx(by_hand["dice"].mean())
    assert p["held_out_dice_sd"] == pytest.approx(by_hand["dice"].std())
    assert p["cache_key"] == f"{cache_key(pair, 0)}, {cache_key(pair, 1)}"
    scores = score_on_real(net.model, net.size, sample)
    assert p["real_sample_dice"] == pytest.approx(scores["dice"].mean())
    # the ensemble's scores are kept apart from its members' own
    kept = list(net.weights_path.parent.glob("ensemble-s0-2x-*.json"))
    assert len(kept) == 1 and "real_sample_dice_adapted" in kept[0].read_text()
    text = provenance_text(p)
    assert "ensemble of 2 U-Nets" in text and "(0, 1)" in text and "training images each" in text
    assert "which no member trained on" in text
    again = synthetic_unet(pair, seed=0, log=logged.append)
    assert len(logged) == 1 and not again.provenance["trained_now"]
    assert again.provenance["real_sample_dice"] == p["real_sample_dice"]
