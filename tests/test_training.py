import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from cxrlib.models.classifiers import IMAGENET_MEAN, IMAGENET_STD, build_classifier
from cxrlib.train.training import (
    RECIPES, Augmentation, ClassifierDataset, TrainingRecipe, balanced_class_weights, get_recipe,
    predict, prepare_images, train_classifier,
)

CLASSES = ["control", "pneumonia", "covid19"]


def learnable_images(n, size=32, seed=0):
    """Noise plus a bright quadrant whose position is the class."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.random((n, size, size)).astype(np.float32) * 0.5
    half = size // 2
    x[y == 1, :half, :half] += 0.5
    x[y == 2, half:, half:] += 0.5
    return np.clip(x, 0, 1), y


def test_prepare_images_resizes_the_shorter_side_and_keeps_the_centre():
    image = np.zeros((20, 40), np.float32)
    image[:, 20:] = 1.0  # right half bright
    out = prepare_images([image], 10)
    assert out.shape == (1, 10, 10) and out.dtype == np.float32
    # 20x40 -> 10x20, centre columns 5..15: left half dark, right half bright
    assert np.allclose(out[0, :, :4], 0) and np.allclose(out[0, :, 6:], 1)
    same = np.random.default_rng(0).random((10, 10)).astype(np.float32)
    np.testing.assert_array_equal(prepare_images(same[None], 10)[0], same)


def test_prepare_images_names_the_bad_image():
    with pytest.raises(ValueError, match="image 1: expected a 2-D"):
        prepare_images([np.zeros((8, 8)), np.zeros((8, 8, 3))], 8)


def test_dataset_gives_three_imagenet_normalised_channels():
    ds = ClassifierDataset(np.full((2, 6, 6), 0.5, np.float32), np.array([0, 2]))
    x, y = ds[1]
    assert x.shape == (3, 6, 6) and x.dtype == torch.float32 and int(y) == 2
    expected = [(0.5 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(x[:, 0, 0], torch.tensor(expected))


def test_only_marked_images_are_augmented():
    image = np.zeros((1, 4, 4), np.float32)
    image[0, :, 0] = 1.0  # bright left column
    flip = Augmentation(hflip=1.0, rotation_deg=0, scale=(1.0, 1.0), elastic_p=0, noise_p=0)
    ds = ClassifierDataset(np.repeat(image, 2, 0), np.array([0, 1]), flip,
                           augment=np.array([False, True]))
    kept, flipped = ds[0][0][0], ds[1][0][0]
    assert kept[0, 0] > kept[0, 3] and flipped[0, 3] > flipped[0, 0]


def test_gaussian_noise_has_the_papers_variance():
    torch.manual_seed(0)
    noise = Augmentation(hflip=0, rotation_deg=0, scale=(1.0, 1.0), elastic_p=0,
                         noise_p=1.0).build()
    x = torch.full((1, 128, 128), 0.5)
    from torchvision import tv_tensors
    diff = noise(tv_tensors.Image(x)).as_subclass(torch.Tensor) - x
    assert abs(diff.var().item() - 0.015) < 0.0015


def test_balanced_class_weights():
    np.testing.assert_allclose(balanced_class_weights(np.array([0, 0, 0, 1]), 2), [4 / 6, 4 / 2])
    with pytest.raises(ValueError, match=r"class index\(es\) \[2\] have no training image"):
        balanced_class_weights(np.array([0, 1, 1]), 3)


def test_recipes_hold_the_papers_settings():
    r = get_recipe("arias2020")
    assert (r.optimizer, r.lr, r.weight_decay, r.schedule) == ("adam", 2e-5, 1e-7, "plateau")
    assert (r.plateau_factor, r.plateau_patience, r.min_lr) == (0.5, 3, 1e-5)
    assert (r.class_weight, r.batch_size, r.epochs) == ("balanced", 32, 24)
    assert r.augment_classes == ("pneumonia", "covid19") and r.augmentation.noise_var == 0.015
    assert RECIPES["tabik2020"].optimizer == "sgd_nesterov" and RECIPES["soares2020"].freeze_trunk
    assert r.with_overrides(epochs=3).epochs == 3 and r.epochs == 24
    with pytest.raises(ValueError, match="unknown training recipe"):
        get_recipe("adam_please")
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainingRecipe(name="x", source="", optimizer="lbfgs")


@pytest.fixture(scope="module")
def small_fit(tmp_path_factory):
    x_train, y_train = learnable_images(48, seed=0)
    x_valid, y_valid = learnable_images(12, seed=1)
    torch.manual_seed(0)
    model = build_classifier("covidnet", 3, image_size=32, width=0.125)
    recipe = get_recipe("arias2020").with_overrides(epochs=3, batch_size=16, lr=1e-3, min_lr=0.0)
    log = tmp_path_factory.mktemp("log") / "fold.csv"
    fit = train_classifier(model, x_train, y_train, x_valid, y_valid, recipe, CLASSES, log_path=log)
    return fit, (x_train, y_train), (x_valid, y_valid), log


def test_training_writes_a_csv_log_per_epoch(small_fit):
    fit, _, _, log = small_fit
    table = pd.read_csv(log)
    assert list(table.columns[:3]) == ["epoch", "train_loss", "valid_loss"]
    assert {"accuracy", "balanced_accuracy_score", "lr"} <= set(table.columns)
    assert len(table) == 3 == len(fit.history)
    np.testing.assert_allclose(table["valid_loss"], fit.history["valid_loss"], rtol=1e-6)


def test_kept_weights_are_those_of_the_best_validation_epoch(small_fit):
    fit, (x_train, y_train), (x_valid, y_valid), _ = small_fit
    assert fit.best_epoch == int(fit.history["valid_loss"].idxmin())
    probs, _ = predict(fit.model, x_valid)
    weight = torch.from_numpy(balanced_class_weights(y_train, 3))
    loss = F.nll_loss(torch.log(torch.from_numpy(probs)), torch.from_numpy(y_valid), weight=weight)
    assert loss.item() == pytest.approx(fit.history["valid_loss"][fit.best_epoch], rel=1e-4)


def test_predict_returns_probabilities_and_embeddings(small_fit):
    fit, _, (x_valid, _), _ = small_fit
    probs, emb = predict(fit.model, x_valid, batch_size=5)
    assert probs.shape == (12, 3) and emb.shape == (12, 256)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    x = torch.stack([ClassifierDataset(x_valid, np.zeros(12, int))[i][0] for i in range(12)])
    with torch.no_grad():
        np.testing.assert_allclose(emb, fit.model.features(x).numpy(), atol=1e-5)


def test_inverse_time_decay_lowers_the_rate_every_epoch():
    x, y = learnable_images(12)
    recipe = get_recipe("civit2020").with_overrides(epochs=2, batch_size=4)
    model = build_classifier("vgg16", 3, image_size=32, width=0.125)
    fit = train_classifier(model, x, y, x[:3], y[:3], recipe, CLASSES)
    lr = fit.history["lr"].to_numpy()
    decay, steps = 1e-3 / 2, 2 * 3  # lr / epochs per step; 3 steps per epoch
    assert lr[0] < 1e-3 and lr[1] < lr[0]
    assert lr[1] == pytest.approx(1e-3 / (1 + decay * (steps - 1) / steps * steps), rel=0.05)
    assert fit.best_epoch == 1  # no selection: the last epoch


def test_training_refuses_bad_splits():
    x, y = learnable_images(6)
    model = build_classifier("covidnet", 3, image_size=32, width=0.125)
    with pytest.raises(ValueError, match="no valid images"):
        train_classifier(model, x, y, x[:0], y[:0], "arias2020", CLASSES)
    with pytest.raises(ValueError, match="train labels must be indices"):
        train_classifier(model, x, y + 1, x, y, "arias2020", CLASSES)


def test_precise_batchnorm_uses_the_statistics_of_the_final_weights():
    x, y = learnable_images(12)
    recipe = get_recipe("arias2020").with_overrides(
        epochs=1, batch_size=4, lr=1e-3, augmentation=None, select_best=False,
        precise_bn_batches=50)
    torch.manual_seed(0)
    model = build_classifier("covidnet", 3, image_size=32, width=0.125)
    fit = train_classifier(model, x, y, x[:3], y[:3], recipe, CLASSES)
    bn = fit.model.stage1.blocks[0][1]
    seen = []
    hook = bn.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    predict(fit.model, x)  # eval mode: the layers before this batch norm see the same input
    hook.remove()
    expected = torch.cat(seen).mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, expected, rtol=1e-4, atol=1e-5)


def test_precise_batchnorm_averages_batch_statistics_and_keeps_frozen_layers():
    import torch

    from cxrlib.models.batchnorm import precise_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(2), torch.nn.BatchNorm2d(2)).eval()
    model[1].weight.requires_grad_(False)  # frozen: keeps its statistics
    model[1].running_mean.fill_(7.0)
    batches = [torch.randn(4, 2, 3, 3) * 2 + 1, torch.randn(4, 2, 3, 3) - 3]
    precise_batchnorm(model, [(b, None) for b in batches])
    # the plain average of the per-batch means and unbiased variances, by hand
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    variances = torch.stack([b.transpose(0, 1).reshape(2, -1).var(dim=1, unbiased=True)
                             for b in batches]).mean(0)
    assert torch.allclose(model[0].running_mean, means, atol=1e-5)
    assert torch.allclose(model[0].running_var, variances, atol=1e-5)
    assert (model[1].running_mean == 7.0).all() and not model.training
    before = model[0].running_mean.clone()
    precise_batchnorm(model, [])  # no batch: unchanged (update_bn alone would reset them)
    assert torch.equal(model[0].running_mean, before)
