"""Class-inherent transformations (FuCiTNet) and COVID-SDNet: generators, loss terms against
hand-computed values, the gradient split of the joint step, the fusion rule on every branch,
and a fold-by-fold run on a tiny cohort that must never train on its test fold."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrlib.train import cit
from cxrlib.train.cit import crossval as cit_crossval
from cxrlib.train.cit.loop import _refresh_batchnorm
from cxrlib.models.cit import CiTGenerator, ResidualBlock
from cxrlib.train.predictions import read_predictions
from cxrlib.data.splits import make_split_plan
from cxrlib.train.training import get_recipe, load_images
from tests.conftest import write_tiny_cohort


# --------------------------------------------------------------------------------------------
# Generator


def test_generator_keeps_the_image_shape_and_has_the_papers_layers():
    g = CiTGenerator(in_channels=1, width=0.25)
    assert g(torch.rand(2, 1, 20, 24)).shape == (2, 1, 20, 24)
    assert g.features == 16
    assert g.head[0].kernel_size == (9, 9) and isinstance(g.head[1], nn.PReLU)
    assert len(g.blocks) == 5 and all(isinstance(b, ResidualBlock) for b in g.blocks)
    assert g.tail.kernel_size == (3, 3) and g.tail.out_channels == 1
    assert CiTGenerator(3).features == 64 and CiTGenerator(3)(torch.rand(1, 3, 16, 16)).shape \
        == (1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        g(torch.rand(2, 3, 20, 20))


def test_residual_block_adds_its_body_to_the_input():
    block = ResidualBlock(4).eval()
    kinds = [type(m) for m in block.body]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.PReLU, nn.Conv2d, nn.BatchNorm2d]
    x = torch.rand(2, 4, 8, 8)
    assert torch.allclose(block(x), x + block.body(x))
    nn.init.zeros_(block.body[4].weight)
    nn.init.zeros_(block.body[4].bias)  # body outputs 0: the block is the identity
    assert torch.equal(block(x), x)


# --------------------------------------------------------------------------------------------
# Loss terms


def test_pixel_mse_and_total_variation_by_hand():
    image = torch.tensor([[0.0, 1.0], [3.0, 5.0]]).view(1, 1, 2, 2)
    assert float(cit.pixel_mse(image, torch.zeros_like(image))) == pytest.approx((1 + 9 + 25) / 4)
    # vertical differences 3, 4 -> mean square 12.5; horizontal 1, 2 -> 2.5; TV = 2 (12.5 + 2.5)
    assert float(cit.total_variation(image)) == pytest.approx(30.0)
    assert float(cit.total_variation(torch.ones(2, 1, 5, 5))) == 0.0


def test_classifier_ce_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # row 1: -log(1/2); row 2: -log(3/4)
    expected = (math.log(2) + math.log(4 / 3)) / 2
    assert float(cit.classifier_ce(logits, 0)) == pytest.approx(expected)
    assert float(cit.classifier_ce(logits, 1)) == pytest.approx((math.log(2) + math.log(4)) / 2)


def test_perceptual_mse_compares_normalised_features_by_hand():
    ones, zeros = torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    # identity features: each of the 3 ImageNet-normalised channels differs by 1 / std_c
    expected = np.mean([1 / s ** 2 for s in (0.229, 0.224, 0.225)])
    got = float(cit.perceptual_mse(nn.Identity(), ones, zeros))
    assert got == pytest.approx(expected, rel=1e-5)
    pool = nn.AvgPool2d(4)  # features = the image mean: 0.5 vs 0 -> (0.5 / std)^2 per channel
    half = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).repeat(2, 2).view(1, 1, 4, 4)
    expected = np.mean([(0.5 / s) ** 2 for s in (0.229, 0.224, 0.225)])
    assert float(cit.perceptual_mse(pool, half, zeros)) == pytest.approx(expected, rel=1e-5)


def test_generator_loss_weights_its_terms():
    recipe = cit.CiTRecipe(name="t", source="test", lam=0.5)
    output = torch.tensor([[0.0, 1.0], [3.0, 5.0]]).view(1, 1, 2, 2)
    logits = torch.tensor([[math.log(3.0), 0.0]])
    terms = cit.generator_loss(output, torch.zeros_like(output), logits, 0, nn.Identity(), recipe)
    perceptual = np.mean([np.mean([0, 1, 9, 25]) / s ** 2 for s in (0.229, 0.224, 0.225)])
    assert float(terms["pixel"]) == pytest.approx(8.75)
    assert float(terms["perceptual"]) == pytest.approx(perceptual, rel=1e-5)
    assert float(terms["tv"]) == pytest.approx(30.0)
    assert float(terms["ce"]) == pytest.approx(math.log(4 / 3))
    assert float(terms["total"]) == pytest.approx(
        8.75 + 0.006 * perceptual + 2e-8 * 30.0 + 0.5 * math.log(4 / 3), rel=1e-6)


def test_scale_gradient_is_identity_forward_and_scales_backward():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = cit.scale_gradient(x, torch.tensor([3.0, -1.0]))
    assert torch.equal(y, x.detach())
    y.sum().backward()
    assert x.grad.tolist() == [3.0, -1.0]


class _TinyClassifier(nn.Module):
    def __init__(self, n_classes=2):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.classifier = nn.Linear(2, n_classes)

    def forward(self, x):
        return self.classifier(self.body(x))


def test_cit_step_gives_each_network_its_own_loss_gradient():
    torch.manual_seed(0)
    recipe = cit.CiTRecipe(name="t", source="test", lam=0.3)
    gens = nn.ModuleList([CiTGenerator(1, 0.0625, n_blocks=1) for _ in range(2)]).eval()
    clf, feats = _TinyClassifier().eval(), nn.AvgPool2d(2)
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 1, 0, 1])
    cit.cit_step(gens, clf, feats, x, y, recipe)
    got = [p.grad.clone() for p in gens.parameters()], [p.grad.clone() for p in clf.parameters()]

    outs = {k: gens[k](x[y == k]) for k in (0, 1)}
    logits = clf(cit.to_network_input(torch.cat([outs[0], outs[1]])))
    labels = torch.tensor([0, 0, 1, 1, 1])
    ce_all = nn.functional.cross_entropy(logits, labels)
    want_clf = torch.autograd.grad(ce_all, list(clf.parameters()), retain_graph=True)
    for k, rows in ((0, slice(0, 2)), (1, slice(2, 5))):
        loss = cit.generator_loss(outs[k], x[y == k], logits[rows], k, feats, recipe)["total"]
        want = torch.autograd.grad(loss, list(gens[k].parameters()), retain_graph=True)
        offset = sum(1 for _ in gens[0].parameters()) if k else 0
        for j, w in enumerate(want):
            assert torch.allclose(got[0][offset + j], w, atol=1e-6), (k, j)
    for g, w in zip(got[1], want_clf):
        assert torch.allclose(g, w, atol=1e-6)


def test_perceptual_network_substitute_is_frozen_and_described():
    features, text = cit.perceptual_network(width=0.125)
    assert "randomly initialised" in text and "width 0.125" in text
    assert not any(p.requires_grad for p in features.parameters())
    assert features(torch.rand(1, 3, 32, 32)).shape == (1, 64, 1, 1)  # 512 * 0.125 maps, pool5


# --------------------------------------------------------------------------------------------
# COVID-SDNet: dataset and fusion

P_PLUS, P_MINUS, N_PLUS, N_MINUS = range(4)


def test_precise_batchnorm_mixes_the_classes_and_skips_an_absent_one():
    torch.manual_seed(0)
    n = 64
    y = torch.tensor([0, 1] * (n // 2))
    # class 0 near 0.2, class 1 near 0.8: most of the variance is between the classes
    x = (0.2 + 0.6 * y.float()).view(n, 1, 1, 1) + 0.01 * torch.randn(n, 1, 4, 4)
    generators = nn.ModuleList([nn.Identity(), nn.Identity()])
    classifier = nn.BatchNorm2d(3)
    _refresh_batchnorm(generators, classifier, x, y, batch_size=8, n_batches=8, device="cpu")
    total_var = cit.to_network_input(x).var(dim=(0, 2, 3))
    # single-class batches would give the within-class variance only (about 1e-4 / std^2)
    assert torch.allclose(classifier.running_var, total_var, rtol=0.15)
    assert torch.allclose(classifier.running_mean, cit.to_network_input(x).mean(dim=(0, 2, 3)),
                          atol=1e-4)
    # a generator without images of its class keeps the statistics it trained with
    with_bn = nn.ModuleList([nn.BatchNorm2d(1), nn.BatchNorm2d(1)])
    with_bn[1].running_mean.fill_(0.7)
    only_class_0 = torch.zeros(n, dtype=torch.long)
    _refresh_batchnorm(with_bn, nn.BatchNorm2d(3), x, only_class_0, 8, 8, "cpu")
    assert with_bn[1].running_mean.item() == pytest.approx(0.7)
    assert with_bn[0].running_mean.item() == pytest.approx(x.mean().item(), abs=1e-4)


def test_sdnet_classes_follow_the_paper_order():
    assert cit.SDNET_CLASSES == ("P+", "P-", "N+", "N-")
    transformed = np.stack([np.full((2, 3, 3), -1.0), np.full((2, 3, 3), 1.0)])  # G_N, G_P
    images, labels = cit.sdnet_dataset(transformed, np.array([0, 1]))
    assert images.shape == (4, 3, 3)
    assert images[:2].max() == 1.0 and images[2:].min() == -1.0  # positive transforms first
    assert labels.tolist() == [N_PLUS, P_PLUS, N_MINUS, P_MINUS]
    with pytest.raises(ValueError, match="binary"):
        cit.sdnet_dataset(transformed, np.array([0, 2]))


@pytest.mark.parametrize("theta, psi, positive, branch", [
    ([.10, .10, .60, .20], [.10, .10, .20, .60], False, "a: both agree negative"),
    ([.60, .20, .10, .10], [.20, .60, .10, .10], True, "b: both agree positive"),
    ([.10, .45, .05, .40], [.20, .10, .30, .40], True, "c: largest P .45 > largest N .40"),
    ([.35, .10, .15, .40], [.20, .30, .10, .40], False, "c: largest N .40 > largest P .35"),
    ([.40, .10, .10, .40], [.10, .10, .40, .40], True, "c: tie goes to positive"),
    ([.30, .10, .50, .10], [.45, .05, .10, .40], False, "c: theta says N+, psi says P+"),
])
def test_fusion_rule_branches(theta, psi, positive, branch):
    got = cit.sdnet_fusion(np.array([theta]), np.array([psi]))
    assert got.tolist() == [positive], branch
    scores = cit.sdnet_probabilities(np.array([theta]), np.array([psi]))
    assert scores.sum() == pytest.approx(1.0)
    assert (scores[0, 1] >= scores[0, 0]) == positive


def test_fusion_rule_vectorised_and_checked():
    theta = np.array([[.1, .1, .6, .2], [.6, .2, .1, .1]])
    psi = np.array([[.1, .1, .2, .6], [.2, .6, .1, .1]])
    assert cit.sdnet_fusion(theta, psi).tolist() == [False, True]
    assert cit.sdnet_probabilities(theta, psi)[0].tolist() == pytest.approx([.6 / .7, .1 / .7])
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        cit.sdnet_fusion(theta[:, :3], psi[:, :3])


# --------------------------------------------------------------------------------------------
# Fold by fold on a tiny binary cohort


@pytest.fixture
def tiny_binary(tmp_path):
    df = write_tiny_cohort(tmp_path, n_patients=24, size=32)
    df = df[df["label"] != "pneumonia"].reset_index(drop=True)
    views = pd.DataFrame({"image_id": df["image_id"], "view": "sdnet",
                          "path": [str(tmp_path / p) for p in df["path"]]})
    plan = make_split_plan(df, folds=2, seed=0)
    setup = cit.CiTSetup(
        recipe=cit.CIT_RECIPES["fucitnet-fast"].with_overrides(epochs=2, batch_size=4),
        cit_classifier=("covidnet", 0.125, None),
        sdnet=("covidnet", get_recipe("arias2020-fast").with_overrides(epochs=1, batch_size=4,
                                                            augmentation=None)),
        sdnet_width=0.125, generator_width=0.0625, folds=[0, 1])
    return df, views, plan, setup, tmp_path / "artifacts"


def test_generators_never_see_their_test_fold(tiny_binary, monkeypatch):
    torch.set_num_threads(1)
    df, views, plan, setup, artifacts = tiny_binary
    # record what the training loop is actually given, not only what the split files say
    given, real_train_cit = [], cit.train_cit

    def recording_train_cit(train_images, train_labels, valid_images, valid_labels, *args, **kw):
        given.append(np.concatenate([train_images, valid_images]))
        return real_train_cit(train_images, train_labels, valid_images, valid_labels, *args, **kw)

    monkeypatch.setattr(cit_crossval, "train_cit", recording_train_cit)  # cit_fold looks it up here
    runs = cit.run_cit_crossval(views, df, plan, artifacts, setup, image_size=32, seed=0)
    assert runs["fold"].tolist() == [0, 1] and len(given) == 2
    sdnet_paths = views[views["view"] == "sdnet"].set_index("image_id")["path"]
    pixels = dict(zip(sdnet_paths.index, load_images(list(sdnet_paths), 32)))
    for fold, seen_images in zip(runs["fold"], given):
        test_ids = plan.loc[plan["fold"] == fold, "image_id"]
        test_images = {pixels[i].tobytes() for i in test_ids}
        other_images = {pixels[i].tobytes() for i in set(pixels) - set(test_ids)}
        seen = [image.tobytes() for image in seen_images]
        assert all(image in other_images for image in seen)  # every image given is recognised
        assert not set(seen) & test_images
    for run in runs.itertuples():
        split = pd.read_csv(artifacts / run.split)
        test_fold = set(plan.loc[plan["fold"] == run.fold, "image_id"])
        seen = set(split.loc[split["role"].isin(["train", "valid"]), "image_id"])
        assert seen and not seen & test_fold
        assert set(split.loc[split["role"] == "test", "image_id"]) == test_fold
        # the generators' training patients are disjoint from the test patients too
        group = plan.set_index("image_id")["group"]
        assert not set(group[list(seen)]) & set(group[list(test_fold)])
    preds = read_predictions(artifacts / "predictions.parquet")
    assert set(preds["model"]) == set(cit.CIT_MODELS)
    for (model, fold), rows in preds.groupby(["model", "fold"]):
        assert set(rows["image_id"]) == set(plan.loc[plan["fold"] == fold, "image_id"]), model
    assert set(preds["experiment"]) == {"sdnet"}
    history = cit.read_cit_history(artifacts)
    assert len(history) == 4 and history["train_pixel"].gt(0).all()
    loaded = cit.load_cit(next((artifacts / "cit").glob("*_f0.pth")))
    assert len(loaded["generators"]) == 2 and loaded["classes"] == ["control", "covid19"]
    again = cit.run_cit_crossval(views, df, plan, artifacts, setup, image_size=32, seed=0)
    assert again.empty  # done folds are skipped


def test_run_cit_crossval_rejects_bad_input(tiny_binary):
    df, views, plan, setup, artifacts = tiny_binary
    with pytest.raises(ValueError, match="no view 'exp9'"):
        cit.run_cit_crossval(views, df, plan, artifacts, setup, view="exp9", image_size=32)
    three = df.assign(label=np.where(df.index % 5 == 0, "pneumonia", df["label"]))
    with pytest.raises(ValueError, match="binary control / covid19"):
        cit.run_cit_crossval(views, three, plan, artifacts, setup, image_size=32)


def test_cit_setup_follows_profile_fields_not_the_profile_name():
    from cxrlib.profiles import get_profile

    paper = get_profile("paper")
    setup = cit.CiTSetup.from_profile(paper)
    assert setup.recipe.name == "fucitnet2020" and setup.recipe.epochs == paper.cit_epochs
    assert setup.recipe.batch_size == cit.CIT_RECIPES["fucitnet2020"].batch_size
    assert setup.cit_classifier == ("resnet18", 1.0, "imagenet")
    assert setup.sdnet[0] == "resnet50" and setup.sdnet[1] == get_recipe("tabik2020")
    # a profile under another name with the paper's fields trains exactly as the paper profile
    assert cit.CiTSetup.from_profile(paper.with_overrides(name="cluster")) == setup
    smoke = cit.CiTSetup.from_profile(get_profile("smoke"))
    assert smoke.recipe.name == "fucitnet-fast" and smoke.recipe.batch_size == 16
    assert smoke.cit_classifier == ("covidnet", 0.25, None)
    assert (smoke.sdnet[1].name, smoke.sdnet[1].epochs, smoke.sdnet[1].augmentation) == (
        "arias2020-fast", 1, None)
    # the paper's schedules on a CPU profile: the recipes keep their epochs and augmentation
    kept = cit.CiTSetup.from_profile(get_profile("smoke", {"paper_schedules": True}))
    assert kept.sdnet[1] == get_recipe("arias2020-fast")
