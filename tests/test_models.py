import pytest
import torch
import torchvision

from cxrlib.models import classifiers
from cxrlib.models.classifiers import (
    XCEPTION_AVAILABLE, build_classifier, find_imagenet_weights, load_classifier, save_classifier,
)
from cxrlib.models.covidnet import CovidNet, PEPXBlock, PEPXStage, feature_map_size


def _cam_output_shape(model, x):
    shapes = []
    hook = model.cam_layer.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    with torch.no_grad():
        model(x)
    hook.remove()
    return shapes[-1]


@pytest.fixture(autouse=True)
def empty_torch_hub(tmp_path, monkeypatch):
    """No test may see (or fetch) real pretrained weights."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


@pytest.mark.parametrize("image_size, side", [(224, 7), (128, 4), (64, 2), (32, 1)])
def test_feature_map_size_matches_the_network(image_size, side):
    assert feature_map_size(image_size) == side
    if image_size <= 64:
        net = CovidNet(3, image_size, width=0.125).eval()
        shape = _cam_output_shape(net, torch.zeros(1, 3, image_size, image_size))
        assert shape == (1, 256, side, side)


def test_covidnet_shapes_embedding_and_head():
    torch.manual_seed(0)
    net = CovidNet(n_classes=3, image_size=64, width=0.25).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, emb = net(x), net.features(x)
    assert logits.shape == (2, 3) and emb.shape == (2, 256) and net.embedding_dim == 256
    assert (emb >= 0).all()  # after the ReLU of the 256-unit layer
    torch.testing.assert_close(net.classifier(emb), logits)
    assert net.cam_layer is net.stage4
    assert _cam_output_shape(net, x) == (2, 512, 2, 2)  # 2048 * 0.25 channels
    # the head: flatten -> 1024 -> 256 -> 3 with dropout 0.3
    outs = (net.fc1.out_features, net.fc2.out_features, net.classifier.out_features)
    assert outs == (1024, 256, 3)
    assert net.fc1.in_features == 512 * 2 * 2 and net.dropout.p == 0.3


def test_covidnet_rejects_wrong_input():
    net = CovidNet(3, 64, width=0.125)
    with pytest.raises(ValueError, match="built for 64x64"):
        net(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="at least 32"):
        CovidNet(3, 16)


def test_pepx_block_channels_follow_the_reference():
    block = PEPXBlock(64, 256)
    convs = [m for m in block if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.groups) for c in convs] == [
        (64, 16, 1, 1), (16, 32, 1, 1), (32, 32, 3, 32), (32, 16, 1, 1), (16, 256, 1, 1)]


def test_pepx_stage_sums_shortcut_and_blocks_densely():
    torch.manual_seed(0)
    stage = PEPXStage(8, 16, n_blocks=3).eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        s = stage.shortcut(x)
        b1 = stage.blocks[0](x)
        b2 = stage.blocks[1](s + b1)
        b3 = stage.blocks[2](s + b1 + b2)
        torch.testing.assert_close(stage(x), s + b1 + b2 + b3)


def test_covidnet_width_scales_every_convolution():
    full, half = CovidNet(3, 32, width=1.0), CovidNet(3, 32, width=0.5)
    assert full.stem[0].out_channels == 64 and half.stem[0].out_channels == 32
    assert [s.shortcut.out_channels for s in (half.stage1, half.stage2, half.stage3, half.stage4)] \
        == [128, 256, 512, 1024]
    stages = (full.stage1, full.stage2, full.stage3, full.stage4)
    assert [len(s.blocks) for s in stages] == [3, 4, 6, 3]


@pytest.mark.parametrize("name, size, width, dim, cam", [
    ("resnet18", 32, 1.0, 512, (2, 512, 1, 1)),
    ("resnet50", 32, 1.0, 2048, (2, 2048, 1, 1)),
    ("vgg16", 32, 0.125, 512, (2, 64, 2, 2)),
    ("inception_v3", 75, 1.0, 2048, (2, 2048, 1, 1)),
    pytest.param("xception", 71, 1.0, 2048, (2, 2048, 3, 3), marks=pytest.mark.skipif(
        not XCEPTION_AVAILABLE, reason="timm is not installed")),
])
def test_torchvision_models_share_the_interface(name, size, width, dim, cam):
    torch.manual_seed(0)
    model = build_classifier(name, 3, image_size=size, width=width).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits, emb = model(x), model.features(x)
    assert logits.shape == (2, 3) and emb.shape == (2, dim) and model.embedding_dim == dim
    torch.testing.assert_close(model.classifier(emb), logits)
    assert _cam_output_shape(model, x) == cam
    assert "trained from scratch" in model.init_description


def test_hidden_units_give_the_embedding():
    model = build_classifier("resnet18", 4, image_size=32, hidden_units=16).eval()
    assert model.features(torch.zeros(1, 3, 32, 32)).shape == (1, 16)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="alexnet", n_classes=3), "unknown model"),
    (dict(name="resnet18", n_classes=3, width=0.5), "published channel widths"),
    (dict(name="vgg16", n_classes=3, width=0.5, weights="imagenet"), "published widths"),
    (dict(name="covidnet", n_classes=3, weights="imagenet"), "no ImageNet weights for covidnet"),
    (dict(name="covidnet", n_classes=3, freeze_trunk=True), "freeze_trunk"),
    (dict(name="inception_v3", n_classes=3, image_size=64), "at least 75 px"),
    (dict(name="resnet18", n_classes=1), "at least 2"),
])
def test_bad_model_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_classifier(**kwargs)


def test_missing_imagenet_weights_mean_scratch_with_a_warning():
    assert find_imagenet_weights("resnet18") is None
    with pytest.warns(UserWarning, match="nothing is downloaded"):
        model = build_classifier("resnet18", 3, image_size=32, weights="imagenet")
    assert model.init_description.startswith("random initialisation (trained from scratch)")


def test_explicit_weights_file_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_classifier("resnet18", 3, image_size=32, weights=tmp_path / "nope.pth")


def test_cached_imagenet_weights_are_loaded(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(reference.state_dict(), checkpoints / "resnet18-f37072fd.pth")
    assert find_imagenet_weights("resnet18") == checkpoints / "resnet18-f37072fd.pth"
    model = build_classifier("resnet18", 3, image_size=32, weights="imagenet")
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)
    assert "ImageNet weights from" in model.init_description


def test_frozen_trunk_learns_only_the_head_and_keeps_batchnorm_statistics():
    model = build_classifier("resnet18", 3, image_size=32, freeze_trunk=False)
    model.freeze_trunk()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.weight", "classifier.bias"]
    model.train()
    assert not model.backbone.training and model.classifier.training
    before = model.backbone.bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32) * 3 + 1)
    torch.testing.assert_close(model.backbone.bn1.running_mean, before)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_classifier("covidnet", 2, image_size=32, width=0.125).eval()
    path = save_classifier(model, tmp_path / "m.pth", ["control", "covid19"], extra={"fold": 3})
    again = load_classifier(path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    assert again.classes == ["control", "covid19"] and again.checkpoint_extra == {"fold": 3}
    with pytest.raises(ValueError, match="3 class names for a 2-class model"):
        save_classifier(model, tmp_path / "x.pth", ["a", "b", "c"])


def test_xception_absence_is_explained(monkeypatch):
    monkeypatch.setattr(classifiers, "timm", None)
    with pytest.raises(ImportError, match="optional package timm"):
        build_classifier("xception", 3, image_size=71)
