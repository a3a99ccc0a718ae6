"""GPU settings (cxrlib.gpu): what they do on a CUDA device, that they change nothing on the
CPU, how they reach the trainings, and which of them enter a unit's settings hash. Runs without a
GPU: a CUDA device is only named (``torch.device("cuda")`` needs no GPU), never used."""
import numpy as np
import pytest
import torch

from cxrlib.train.crossval import classifier_setup
from cxrlib.gpu import OFF, DeviceSettings
from cxrlib.models.classifiers import build_classifier
from cxrlib.profiles import check_overrides, get_profile
from cxrlib.train.training import get_recipe, train_classifier

CLASSES = ["control", "pneumonia", "covid19"]
ALL_ON = DeviceSettings(mixed_precision=True, channels_last=True, loader_workers=0,
                        cudnn_benchmark=True, device_augmentation=True)


def _tiny_fit(gpu, workers_seen=None, seed=0):
    rng = np.random.default_rng(0)
    x, y = rng.random((24, 32, 32)).astype(np.float32), np.arange(24) % 3
    torch.manual_seed(0)
    model = build_classifier("covidnet", 3, image_size=32, width=0.125)
    recipe = get_recipe("arias2020-fast").with_overrides(epochs=1, batch_size=8,
                                                         precise_bn_batches=1)
    extra = []
    if workers_seen is not None:
        from fastai.callback.core import Callback

        class Seen(Callback):
            def before_fit(self):
                loader = self.learn.dls.train
                workers_seen.update(num_workers=loader.fake_l.num_workers,
                                    pin_memory=loader.pin_memory)

        extra.append(Seen())
    return train_classifier(model, x, y, x[:6], y[:6], recipe, CLASSES, seed=seed, device="cpu",
                            gpu=gpu, extra_callbacks=extra)


def test_profiles_set_the_gpu_fields_and_overrides_are_type_checked():
    smoke, default, paper = (get_profile(n) for n in ("smoke", "default", "paper"))
    for prof in (smoke, default):  # the CPU profiles: all off
        assert DeviceSettings.from_profile(prof) == OFF
    assert DeviceSettings.from_profile(paper) == DeviceSettings(
        mixed_precision=True, channels_last=True, loader_workers=8, cudnn_benchmark=False,
        device_augmentation=True)
    assert check_overrides({"loader_workers": 2, "gpu_mixed_precision": False,
                            "cudnn_benchmark": True}) == {
        "loader_workers": 2, "gpu_mixed_precision": False, "cudnn_benchmark": True}
    with pytest.raises(ValueError, match="profile.loader_workers must be int"):
        check_overrides({"loader_workers": "2"})
    with pytest.raises(ValueError, match="profile.gpu_channels_last must be bool"):
        check_overrides({"gpu_channels_last": 1})
    with pytest.raises(ValueError, match="loader_workers must be a whole number"):
        DeviceSettings(loader_workers=-1)
    assert classifier_setup(smoke).gpu == OFF
    assert classifier_setup(paper).gpu == DeviceSettings.from_profile(paper)


def test_nothing_but_the_workers_acts_off_a_cuda_device():
    gpu = DeviceSettings(mixed_precision=True, channels_last=True, loader_workers=2,
                         cudnn_benchmark=True, device_augmentation=True)
    cpu = torch.device("cpu")
    assert not gpu.augments_on_device(cpu) and gpu.augments_on_device("cuda")
    assert gpu.amp_dtype(cpu) is None and gpu.precision(cpu) == "fp32"
    assert gpu.memory_format(cpu) == torch.contiguous_format
    assert gpu.loader_options(cpu) == {"num_workers": 2, "pin_memory": False}
    assert gpu.fastai_callbacks(cpu) == [] and gpu.grad_scaler(cpu) is None
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    with gpu.cudnn(cpu):
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == before


@pytest.mark.parametrize("bf16", [True, False])
def test_on_a_cuda_device_mixed_precision_is_bf16_where_supported_else_fp16(monkeypatch, bf16):
    from fastai.callback.fp16 import AMPMode, MixedPrecision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    cuda = torch.device("cuda")
    gpu = DeviceSettings(mixed_precision=True, channels_last=True, loader_workers=3)
    assert gpu.amp_dtype(cuda) == (torch.bfloat16 if bf16 else torch.float16)
    assert gpu.precision(cuda) == ("bf16" if bf16 else "fp16")
    assert gpu.memory_format(cuda) == torch.channels_last
    assert gpu.loader_options(cuda) == {"num_workers": 3, "pin_memory": True}
    callbacks = gpu.fastai_callbacks(cuda)
    amp = [cb for cb in callbacks if isinstance(cb, MixedPrecision)]
    assert len(amp) == 1 and amp[0].amp_mode == (AMPMode.BF16 if bf16 else AMPMode.FP16)
    assert [type(cb).__name__ for cb in callbacks if cb not in amp] == ["ChannelsLastBatches"]
    # off: nothing on the GPU either; no workers: no pinning
    assert OFF.amp_dtype(cuda) is None and OFF.fastai_callbacks(cuda) == []
    assert OFF.memory_format(cuda) == torch.contiguous_format
    assert OFF.loader_options(cuda) == {"num_workers": 0, "pin_memory": False}


def test_the_cudnn_switch_sets_and_restores_the_flags_on_a_cuda_device():
    backend = torch.backends.cudnn
    before = (backend.benchmark, backend.deterministic)
    try:
        backend.benchmark, backend.deterministic = False, False
        with DeviceSettings(cudnn_benchmark=True).cudnn("cuda"):
            assert (backend.benchmark, backend.deterministic) == (True, False)
        with DeviceSettings(cudnn_benchmark=False).cudnn("cuda"):
            assert (backend.benchmark, backend.deterministic) == (False, True)
        assert (backend.benchmark, backend.deterministic) == (False, False)
    finally:
        backend.benchmark, backend.deterministic = before


def test_gpu_settings_leave_a_cpu_training_bit_identical():
    plain, switched = _tiny_fit(None), _tiny_fit(ALL_ON)
    assert switched.precision == plain.precision == "fp32"
    for (name, a), b in zip(plain.model.state_dict().items(), switched.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(p.is_contiguous() for p in switched.model.parameters())


def test_loader_workers_reach_the_dataloader_and_train_reproducibly():
    seen = {}
    first = _tiny_fit(DeviceSettings(loader_workers=1), workers_seen=seen)
    assert seen == {"num_workers": 1, "pin_memory": False}  # no pinning on the CPU
    again = _tiny_fit(DeviceSettings(loader_workers=1))
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    seen.clear()
    _tiny_fit(None, workers_seen=seen)
    assert seen == {"num_workers": 0, "pin_memory": False}


def test_only_result_changing_gpu_settings_enter_the_unit_settings(tmp_path):
    from cxrlib.train.crossval import crossval_specs
    from cxrlib.data.splits import make_split_plan
    from test_crossval import TINY, write_tiny_pngs

    manifest, views = write_tiny_pngs(tmp_path)
    plan = make_split_plan(manifest, folds=4, repetitions=1, seed=0)

    def spec(gpu):
        return crossval_specs(views, manifest, plan, tmp_path / "a", **dict(TINY, folds=[0]),
                              gpu=gpu)[0]

    off = spec(None)
    assert "gpu" not in off.settings and spec(OFF).settings_hash == off.settings_hash
    layout = spec(DeviceSettings(channels_last=True, cudnn_benchmark=True))
    assert layout.settings_hash == off.settings_hash and layout.gpu.channels_last
    amp = spec(DeviceSettings(mixed_precision=True))
    assert amp.settings["gpu"] == {"mixed_precision": True}
    workers = spec(DeviceSettings(loader_workers=4))
    assert workers.settings["gpu"] == {"loader_workers": 4}
    assert len({off.settings_hash, amp.settings_hash, workers.settings_hash}) == 3
    assert spec(DeviceSettings(device_augmentation=True)).settings["gpu"] == {
        "device_augmentation": True}
    assert DeviceSettings.from_profile("paper").hashed() == {
        "mixed_precision": True, "loader_workers": 8, "device_augmentation": True}


def test_unet_domain_randomisation_draws_differ_between_loader_workers():
    from cxrlib.preprocess.segmentation.data import _LungDataset

    images = np.repeat(np.random.default_rng(0).random((1, 16, 16), np.float32), 4, axis=0)
    masks = np.zeros((4, 16, 16), bool)
    masks[:, 4:12, 4:12] = True
    dataset = _LungDataset(images, masks, augment=False, seed=0,
                           randomise=("gamma", "blur", "noise", "rotation"))
    torch.manual_seed(0)  # the workers' seeds
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2)
    x = [x for x, _ in loader]  # items 0, 2 from worker 0; 1, 3 from worker 1; all one image
    # a copy of one generator in each worker would draw the same changes for items 0 and 1
    assert not (torch.equal(x[0], x[1]) and torch.equal(x[2], x[3]))


def test_gpu_settings_leave_a_cpu_cit_training_bit_identical():
    from cxrlib.train import cit
    rng = np.random.default_rng(1)
    x, y = rng.random((16, 32, 32)).astype(np.float32), np.arange(16) % 2
    recipe = cit.CIT_RECIPES["fucitnet-fast"].with_overrides(epochs=1, batch_size=8,
                                                            warmup_epochs=0)
    features, _ = cit.perceptual_network(0.125, seed=0)
    fits = []
    for gpu in (None, ALL_ON):
        torch.manual_seed(0)
        classifier = build_classifier("covidnet", 2, image_size=32, width=0.125)
        fits.append(cit.train_cit(x, y, x[:4], y[:4], classifier, features, recipe, 0.125,
                                  seed=2, device="cpu", gpu=gpu))
    for part in ("generators", "classifier"):
        a, b = (getattr(f, part).state_dict() for f in fits)
        assert all(torch.equal(a[k], b[k]) for k in a), part


# --------------------------------------------------------------------------------------------
# Augmentation on the device (run here on the CPU: the function works on any device)


def test_batch_augmentation_flips_exactly_and_leaves_identity_maps_alone():
    from cxrlib.train.training import Augmentation, augment_batch

    x = torch.rand(5, 1, 24, 24)
    flip = Augmentation(hflip=1.0, rotation_deg=0.0, scale=(1.0, 1.0), elastic_p=0.0, noise_p=0.0)
    assert torch.equal(augment_batch(x, flip), x.flip(-1))
    still = Augmentation(hflip=0.0, rotation_deg=0.0, scale=(1.0, 1.0), elastic_p=1.0,
                         elastic_alpha=0.0, noise_p=0.0)  # an affine and elastic grid of 0
    torch.testing.assert_close(augment_batch(x, still), x, atol=1e-5, rtol=0)


def test_batch_augmentation_draws_like_torchvision():
    from torchvision.transforms.v2 import functional as TF

    from cxrlib.train.training import (
        ARIAS_AUGMENTATION, Augmentation, _blurred_noise, augment_batch,
    )

    # the elastic displacement: torchvision's 2-D blur, done separably
    shape, sigma = (3, 1, 64, 64), ARIAS_AUGMENTATION.elastic_sigma
    ours = _blurred_noise(shape, sigma, "cpu", torch.Generator().manual_seed(0))
    noise = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    size = int(8 * sigma + 1) + (1 - int(8 * sigma + 1) % 2)
    torch.testing.assert_close(ours, TF.gaussian_blur(noise, [size, size], [sigma, sigma]),
                               atol=1e-6, rtol=0)
    # the noise: variance noise_var
    x = torch.full((64, 1, 32, 32), 0.5)
    noise_only = Augmentation(hflip=0.0, rotation_deg=0.0, scale=(1.0, 1.0), elastic_p=0.0,
                              noise_p=1.0)
    assert (augment_batch(x, noise_only) - x).var().item() == pytest.approx(0.015, rel=0.05)
    # the whole recipe: images in [0, 1], each its own draw
    out = augment_batch(torch.rand(16, 1, 32, 32), ARIAS_AUGMENTATION)
    assert out.shape == (16, 1, 32, 32) and out.min() >= 0 and out.max() <= 1
    same = augment_batch(torch.rand(1, 1, 32, 32).expand(16, -1, -1, -1), ARIAS_AUGMENTATION)
    assert len({tuple(v.flatten()[:50].tolist()) for v in same}) == 16


def test_device_augmentation_augments_the_chosen_classes_and_normalises():
    from cxrlib.train.training import (
        ARIAS_AUGMENTATION, ClassifierDataset, _make_device_augmentation,
    )

    x, y = torch.rand(6, 1, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    callback = _make_device_augmentation(ARIAS_AUGMENTATION, [1, 2])
    dataset = ClassifierDataset(x[:, 0].numpy(), y.numpy())
    expected = torch.stack([dataset[i][0] for i in range(6)])
    torch.testing.assert_close(callback.prepare(x, y, training=False), expected)
    trained = callback.prepare(x, y, training=True)
    torch.testing.assert_close(trained[y == 0], expected[y == 0])
    assert trained.shape == (6, 3, 32, 32)


def test_a_training_with_device_augmentation_runs_through(monkeypatch):
    # on the CPU the path is never taken; pretend, to run the datasets, callback and precise BN
    monkeypatch.setattr(DeviceSettings, "augments_on_device",
                        lambda self, device: self.device_augmentation)
    fit = _tiny_fit(DeviceSettings(device_augmentation=True))
    assert len(fit.history) == 1 and np.isfinite(fit.history["valid_loss"]).all()
    plain = _tiny_fit(None)
    assert not all(torch.equal(a, b) for a, b in zip(fit.model.state_dict().values(),
                                                      plain.model.state_dict().values()))
