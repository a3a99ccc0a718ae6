"""Domain randomisation of U-Net training pairs: each change, by hand-checkable properties."""
import numpy as np
from scipy import ndimage
import pytest
import torch

from cxrlib.preprocess.domain_randomisation import CHANGES, GEOMETRIC, check_changes, randomise
from cxrlib.preprocess.segmentation.data import (
    _LungDataset, normalise_unet_input, prepare_unet_input,
)


def _pair(size=64):
    yy, xx = np.mgrid[:size, :size] / (size - 1)
    image = (0.2 + 0.6 * xx * yy).astype(np.float32)
    mask = np.zeros((size, size), bool)
    mask[16:48, 10:28] = True
    mask[16:48, 36:54] = True
    image[mask] *= 0.5
    return image, mask


def _only(name, image, mask, seed=0):
    return randomise(image, mask, np.random.default_rng(seed), (name,), p=1.0)


@pytest.mark.parametrize("name", list(CHANGES))
def test_each_change_keeps_shape_range_and_type(name):
    image, mask = _pair()
    out, m = _only(name, image, mask)
    assert out.shape == image.shape and out.dtype == np.float32
    assert m.shape == mask.shape and m.dtype == bool
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert not np.array_equal(out, (image - image.min()) / np.ptp(image)), name


@pytest.mark.parametrize("name", [n for n in CHANGES if n not in GEOMETRIC])
def test_grey_level_changes_leave_the_mask(name):
    image, mask = _pair()
    _, m = _only(name, image, mask)
    assert np.array_equal(m, mask)


def test_zoom_out_shrinks_the_lungs_about_the_centre():
    image, mask = _pair(128)
    mask = np.zeros_like(mask)
    mask[32:96, 32:96] = True
    _, m = _only("zoom_out", image, mask)
    ratio = m.sum() / mask.sum()
    assert 0.65 ** 2 - 0.05 < ratio < 0.95 ** 2 + 0.05
    rows, cols = np.nonzero(m)
    assert abs(rows.mean() - 63.5) < 1.5 and abs(cols.mean() - 63.5) < 1.5


def test_crop_enlarges_the_lungs():
    image, mask = _pair(128)
    _, m = _only("crop", image, mask)
    assert m.sum() > mask.sum() * 1.05


def test_rotation_keeps_the_lung_area_and_moves_it():
    image, mask = _pair(128)
    _, m = _only("rotation", image, mask, seed=3)
    assert abs(m.sum() / mask.sum() - 1) < 0.05
    assert not np.array_equal(m, mask)


def test_gamma_changes_nothing_the_unet_sees_but_noise_does():
    """Equalisation undoes increasing grey-level curves (why gamma is in the ablation)."""
    image, mask = _pair()
    base = normalise_unet_input((image - image.min()) / np.ptp(image))
    gamma, _ = _only("gamma", image, mask)
    noise, _ = _only("noise", image, mask)
    assert np.abs(normalise_unet_input(gamma) - base).mean() < 0.05
    assert np.abs(normalise_unet_input(noise) - base).mean() > 0.1


def test_p_zero_only_rescales_and_a_seed_repeats():
    image, mask = _pair()
    out, m = randomise(image, mask, np.random.default_rng(0), tuple(CHANGES), p=0.0)
    np.testing.assert_allclose(out, (image - image.min()) / np.ptp(image), atol=1e-6)
    assert np.array_equal(m, mask)
    a = randomise(image, mask, np.random.default_rng(5))
    b = randomise(image, mask, np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_unknown_change_and_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="unknown domain randomisation change.*'blurr'"):
        check_changes(["blur", "blurr"])
    assert check_changes(["rotation", "gamma"]) == ("gamma", "rotation")
    image, mask = _pair()
    with pytest.raises(ValueError, match="same 2-D shape"):
        randomise(image, mask[:10], np.random.default_rng(0))


def test_training_dataset_draws_changes_and_normalises():
    image, mask = _pair()
    prepared = prepare_unet_input(image, 64)[None]
    plain = _LungDataset(prepared, mask[None], augment=False)
    drawn = _LungDataset(prepared, mask[None], augment=False, randomise=("noise",), seed=1)
    x0, _ = plain[0]
    x1, y1 = drawn[0]
    assert x1.shape == (1, 64, 64) and y1.shape == (1, 64, 64)
    assert not torch.equal(x0, x1)
    assert abs(float(x1.mean())) < 1e-4 and abs(float(x1.std()) - 1) < 0.02  # normalised again
    assert torch.equal(y1[0] > 0.5, torch.from_numpy(mask))


def test_opacity_brightens_the_lungs_only():
    image, mask = _pair(128)
    mask = np.zeros_like(mask)
    mask[20:110, 10:60] = True
    mask[20:110, 70:120] = True
    base = (image - image.min()) / np.ptp(image)
    out, m = _only("opacity", image, mask, seed=2)
    assert np.array_equal(m, mask)
    gain = out - base
    assert gain.min() >= -1e-6
    assert gain[mask].max() > 0.1
    far = ~ndimage.binary_dilation(mask, iterations=6)
    assert gain[far].max() < 0.02
