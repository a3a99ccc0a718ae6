"""GPU training throughput: the study's training loop beside a bare PyTorch AMP loop, and the
estimated GPU-hours of the paper profile.

For each ``--model`` (random images and labels, one initialisation for both paths):

- **study loop**: :func:`cxrlib.train.training.train_classifier` itself, one epoch of ``--warmup`` +
  ``--steps`` batches with the profile's :class:`cxrlib.gpu.DeviceSettings` (mixed precision,
  channels-last, loader workers with pinned memory, augmentation on the device, cuDNN switch)
  and the recipe's augmentation; a callback times the training batches after the warm-up (data
  loading and augmentation included);
- **bare loop**: the same network and batch size, batches already on the device, channels-last,
  ``torch.autocast`` (bf16 where supported, else fp16 with a ``GradScaler``; float32 on a CPU, as
  the study), Adam, cross-entropy: the most the device can do with this network;
- **loader**: the study's dataset (the recipe's augmentation on the CPU, or raw images when the
  device augments) through a DataLoader with the same workers, no network: the rate the CPU side
  can feed.

It prints the images/second of each, the ratio study / bare (goal: at least 0.70 on a GPU), then
estimates the GPU-hours of the paper profile: every training the notebooks run at that profile
(from the profile's fields, the recipes and ``cxrlib.train.crossval.classifier_setup`` /
``cxrlib.train.cit.CiTSetup.from_profile``; early stopping ignored, so an upper bound), in
image-steps per network, each weighted by its network's forward FLOPs at its input size (counted by
``torch.utils.flop_counter`` on the meta device), divided by the training FLOP rate the study loop
reached here (or ``--assume-tflops``). It is an estimate from one measured rate, not a measurement
of the paper profile: networks differ in how well they use a GPU, and CPU-side augmentation can
bound the rate.

    .venv/bin/python benchmarks/gpu_throughput.py --device cuda                       # on a GPU
    .venv/bin/python benchmarks/gpu_throughput.py --model covidnet resnet50 vgg16 --steps 50
    .venv/bin/python benchmarks/gpu_throughput.py --device cpu --image-size 64 --steps 3   # check
    .venv/bin/python benchmarks/gpu_throughput.py --estimate-only --assume-tflops 25   # no timing
"""
from __future__ import annotations

import argparse
import copy
import inspect
import os
import time
import warnings
from dataclasses import replace

import numpy as np
import torch

from cxrlib.gpu import DeviceSettings
from cxrlib.models.classifiers import WIDTH_SCALABLE, build_classifier
from cxrlib.profiles import get_profile
from cxrlib.train.training import (
    DEFAULT_RECIPE, ClassifierDataset, get_recipe, train_classifier,
)

CLASSES = ["control", "pneumonia", "covid19"]
GOAL = 0.70


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recipe_of(model: str, profile, name: str | None):
    """The recipe the study trains ``model`` with at ``profile`` (COVID-Net: ``cls_recipe``)."""
    if name:
        return get_recipe(name)
    return get_recipe(profile.cls_recipe if model == "covidnet" else DEFAULT_RECIPE[model])


def make_model(model: str, size: int, width: float, recipe, seed: int = 0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_classifier(model, len(CLASSES), image_size=size,
                                width=width if model in WIDTH_SCALABLE else 1.0, weights=None,
                                freeze_trunk=recipe.freeze_trunk,
                                hidden_units=recipe.hidden_units)


def study_rate(model, images, labels, recipe, gpu, device, warmup, augment) -> float:
    """Images/second of train_classifier's training batches after ``warmup`` batches."""
    from fastai.callback.core import Callback

    class BatchTimer(Callback):
        order = 100  # after every other callback of the batch

        def before_fit(self):
            self.marks = []

        def after_batch(self):
            if self.training:
                _sync(device)
                self.marks.append(time.perf_counter())

    timer = BatchTimer()
    bs = recipe.batch_size
    recipe = recipe.with_overrides(epochs=1)
    if not augment:
        recipe = recipe.with_overrides(augmentation=None)
    train_classifier(model, images, labels, images[:bs], labels[:bs], recipe, CLASSES,
                     device=device, gpu=gpu, extra_callbacks=[timer])
    marks = timer.marks[warmup - 1:]  # from the end of the last warm-up batch
    return (len(marks) - 1) * bs / (marks[-1] - marks[0])


def bare_rate(model, size, bs, gpu, device, warmup, steps) -> float:
    """Images/second of a plain PyTorch AMP loop: batches on the device, channels-last."""
    dtype = gpu.amp_dtype(device) if device.type == "cuda" else None
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, len(CLASSES), (bs,), device=device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    loss_func = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = loss_func(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    with gpu.cudnn(device):
        for _ in range(warmup):
            step()
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
    return steps * bs / (time.perf_counter() - start)


def loader_rate(images, labels, recipe, gpu, device, warmup, augment) -> float:
    """Images/second the study's dataset and DataLoader deliver (no network): with the
    augmentation on the CPU, or raw images when the device augments."""
    on_cpu = augment and not gpu.augments_on_device(device)
    augmentation = recipe.augmentation if on_cpu else None
    wanted = [CLASSES.index(c) for c in (recipe.augment_classes or CLASSES)]
    dataset = ClassifierDataset(images, labels, augmentation, np.isin(labels, wanted),
                                normalise=not gpu.augments_on_device(device))
    loader = torch.utils.data.DataLoader(dataset, batch_size=recipe.batch_size, shuffle=True,
                                         drop_last=True, **gpu.loader_options(device))
    marks = []
    for x, _ in loader:
        x.to(device, non_blocking=True)
        marks.append(time.perf_counter())
    marks = marks[warmup - 1:]
    return (len(marks) - 1) * recipe.batch_size / (marks[-1] - marks[0])


# --------------------------------------------------------------------------------------------
# The paper profile's trainings


def forward_gflops(make, shape) -> float:
    """Forward GFLOPs of one image (``shape`` with batch 1), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            net = make().eval()  # a batch of one: batch norm in eval mode
            x = torch.empty(shape)
        with FlopCounterMode(display=False) as counter:
            net(x)
    return counter.get_total_flops() / 1e9


def classifier_gflops(model: str, size: int, width: float, recipe=None) -> float:
    hidden = recipe.hidden_units if recipe is not None else None
    return forward_gflops(lambda: build_classifier(
        model, len(CLASSES), image_size=size, width=width if model in WIDTH_SCALABLE else 1.0,
        weights=None, hidden_units=hidden), (1, 3, size, size))


def paper_trainings(profile, n3: int, n2: int) -> list[dict]:
    """Every training of a run at ``profile`` on a 3-class corpus of ``n3`` images and a binary
    one of ``n2``: rows of notebook, what, network, image-steps (training images x epochs),
    eval images (validation each epoch and the predictions; forward only) and the forward
    GFLOPs of one training image (``step_gflops``, forward + backward = 3x, frozen layers 1x)
    and of one evaluated image (``eval_gflops``)."""
    from cxrlib.train.cit import CiTSetup
    from cxrlib.train.crossval import run_crossval
    from cxrlib.train.crossval import classifier_setup
    from cxrlib.models.cit import CiTGenerator
    from cxrlib.models.unet import UNet
    from cxrlib.analysis.shortcuts import probe_settings

    P = profile
    val = inspect.signature(run_crossval).parameters["val_fraction"].default
    F, R = P.folds, P.repetitions
    setup = classifier_setup(P)
    K = len(setup.folds)
    train_share, valid_share = (F - 1) / F * (1 - val), (F - 1) / F * val

    def epochs(recipe):
        return recipe.epochs if P.paper_schedules else P.epochs

    def cls(nb, what, model, recipe, trainings, n_train, n_valid, n_all, size=None, e=None):
        size = size or P.image_size
        g = classifier_gflops(model, size, setup.width if recipe.weights is None else 1.0,
                              recipe)
        e = epochs(recipe) if e is None else e
        return {"notebook": nb, "what": what, "model": model, "network": f"{model} {size}px",
                "trainings": trainings, "image_steps": trainings * e * n_train,
                "eval_images": trainings * (e * n_valid + n_all),
                "step_gflops": g * (1 if recipe.freeze_trunk else 3), "eval_gflops": g}

    rows = []
    cov_model, cov_recipe = setup.covidnet
    rows.append(cls("03", "CV exp1-3", cov_model, cov_recipe, 3 * K * R, n3 * train_share,
                    n3 * valid_share, n3))
    for f in P.sweep_train_fractions:
        rows.append(cls("03", f"sweep {f:g}", cov_model, cov_recipe, 1, n3 * f * (1 - val),
                        n3 * f * val, n3))
    if P.cls_extra_seeds:
        rows.append(cls("03", "seed 002 VGG16 x2", "vgg16", get_recipe("civit2020"), 2,
                        n3 * 0.8 * (1 - val), n3 * 0.8 * val, n3))
        rows.append(cls("03", "seed 004 frozen VGG16", "vgg16", get_recipe("soares2020"), 1,
                        n3 * 0.8 * (1 - val), n3 * 0.8 * val, n3))
    bin_model, bin_recipe = setup.binary
    rows.append(cls("03", "CV sdnet, exp1, no_npcr", bin_model, bin_recipe, 3 * K * R,
                    n2 * train_share, n2 * valid_share, n2))
    cit = CiTSetup.from_profile(P)
    gen = forward_gflops(lambda: CiTGenerator(1, cit.generator_width),
                         (1, 1, P.image_size, P.image_size))
    clf = classifier_gflops(cit.cit_classifier[0], P.image_size, cit.cit_classifier[1])
    vgg = classifier_gflops("vgg16", P.image_size, cit.generator_width)
    cit_trainings = 2 * K * R + 1  # sdnet and sdnet@no_npcr, and the lambda sweep's one fold
    e = cit.recipe.epochs
    rows.append({"notebook": "02", "what": "CiT: generators, classifier, VGG16 loss",
                 "model": "cit", "network": f"CiT {P.image_size}px", "trainings": cit_trainings,
                 "image_steps": cit_trainings * e * n2 * train_share,
                 "eval_images": cit_trainings * (e * n2 * valid_share + n2),
                 "step_gflops": 3 * (gen + clf + vgg), "eval_gflops": 2 * (gen + clf)})
    sd_model, sd_recipe = cit.sdnet
    rows.append(cls("02", "COVID-SDNet (both transforms)", sd_model, sd_recipe, 2 * K * R,
                    2 * n2 * train_share, 2 * n2 * valid_share, 2 * n2))
    probe = probe_settings(P)  # one fold each, probe_epochs at every profile
    for what in ("retrained per projection", "no_lungs probe"):
        rows.append(cls("04", what, cov_model, cov_recipe, 1, n3 * train_share, n3 * valid_share,
                        n3, size=probe.image_size, e=probe.epochs))
    unet = forward_gflops(lambda: UNet(in_channels=1, width=P.width, batch_norm=P.seg_batch_norm),
                          (1, 1, P.seg_size, P.seg_size))
    rows.append({"notebook": "01", "what": "synthetic U-Net(s) (once, cached)",
                 "model": "unet", "network": f"U-Net {P.seg_size}px",
                 "trainings": P.seg_ensemble,
                 "image_steps": P.seg_ensemble * P.seg_synthetic_epochs
                 * P.seg_synthetic_images * 0.7,
                 "eval_images": P.seg_ensemble * P.seg_synthetic_epochs
                 * P.seg_synthetic_images * 0.1,
                 "step_gflops": 3 * unet, "eval_gflops": unet})
    adapt = sum(min(n, P.seg_adapt_max_images) for n in (n3, n2))
    rows.append({"notebook": "01", "what": "U-Net adaptation (both corpora)",
                 "model": "unet", "network": f"U-Net {P.seg_size}px",
                 "trainings": 2 * P.seg_ensemble * P.seg_adapt_rounds,
                 "image_steps": P.seg_ensemble * P.seg_adapt_rounds
                 * max(P.seg_adapt_epochs * adapt, 2 * P.seg_adapt_min_steps * P.seg_batch_size),
                 "eval_images": (2 + P.seg_adapt_rounds) * P.seg_ensemble * adapt,
                 "step_gflops": 3 * unet, "eval_gflops": unet})
    return rows


def estimate(profile, n3, n2, tflops: dict, default: str, source: str,
             where: str = "GPU-hours on one GPU") -> None:
    """Print the hours of :func:`paper_trainings` at ``tflops`` (network -> effective
    training TFLOP/s; the others at ``tflops[default]``)."""
    rows = paper_trainings(profile, n3, n2)
    total = 0.0
    print(f"\nEstimated GPU time of the '{profile.name}' profile: a 3-class corpus of {n3} images "
          f"and a binary one of {n2}, every epoch run (no early stopping: an upper bound)")
    print("  hours = sum over trainings of (image_steps x step_GFLOP + eval_images x eval_GFLOP)"
          " / (effective TFLOP/s x 1000) / 3600")
    print("  image_steps = trainings x epochs x training images (from the profile's fields and "
          "the recipes); step_GFLOP = 3 x forward GFLOP of the network (1 x when frozen)")
    print(f"  effective training rate: {source}")
    print(f"  {'nb':<3} {'training':<42} {'network':<15} {'trainings':>9} {'image-steps':>12} "
          f"{'GFLOP/step':>10} {'TFLOP/s':>8} {'hours':>7}")
    for r in rows:
        rate = tflops.get(r["model"], tflops[default])
        flop = r["image_steps"] * r["step_gflops"] + r["eval_images"] * r["eval_gflops"]
        hours = flop / (rate * 1e3) / 3600
        total += hours
        print(f"  {r['notebook']:<3} {r['what'][:42]:<42} {r['network']:<15} {r['trainings']:>9} "
              f"{r['image_steps']:>12,.0f} {r['step_gflops']:>10.1f} {rate:>8.2f} {hours:>7.2f}")
    print(f"  total: {total:.1f} {where} - an ESTIMATE from the rate above, not a measurement; "
          f"the fold units are independent, so N devices (--executor local, or SLURM) take "
          f"about 1/N of it")


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", nargs="+", default=["covidnet"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--profile", default="paper",
                        help="the profile whose GPU settings, recipes and trainings are used")
    parser.add_argument("--recipe", default=None, help="training recipe (default: the study's)")
    parser.add_argument("--width", type=float, default=None,
                        help="width of COVID-Net / VGG16 (default: the profile's cls_width)")
    parser.add_argument("--workers", type=int, default=None,
                        help="loader workers (default: the profile's loader_workers, at most "
                             "the cores - 1 with CUDA, the cores - torch threads on a CPU, where "
                             "more would fight the training's own threads)")
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument("--n-3class", type=int, default=None,
                        help="images of the 3-class corpus (default: the profile's n_arias)")
    parser.add_argument("--n-binary", type=int, default=None,
                        help="images of the binary corpus (default: the profile's n_covidgr)")
    parser.add_argument("--estimate-only", action="store_true",
                        help="no timing: the estimate from --assume-tflops")
    parser.add_argument("--assume-tflops", type=float, default=None,
                        help="effective training TFLOP/s for the estimate instead of the measured")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")

    profile = get_profile(args.profile)
    n3 = profile.n_arias if args.n_3class is None else args.n_3class
    n2 = profile.n_covidgr if args.n_binary is None else args.n_binary
    if args.estimate_only:
        if not args.assume_tflops:
            parser.error("--estimate-only needs --assume-tflops")
        estimate(profile, n3, n2, {"all": args.assume_tflops}, "all",
                 f"{args.assume_tflops:g} TFLOP/s for every network, ASSUMED, not measured")
        return
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    gpu = DeviceSettings.from_profile(profile)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    spare = (cores or 1) - (1 if device.type == "cuda" else torch.get_num_threads())
    workers = args.workers if args.workers is not None else min(gpu.loader_workers, max(0, spare))
    gpu = replace(gpu, loader_workers=workers)
    size, bs = args.image_size, args.batch_size
    width = args.width if args.width is not None else profile.cls_width
    name = torch.cuda.get_device_name(device) if device.type == "cuda" \
        else f"CPU, {torch.get_num_threads()} torch thread(s)"
    print(f"{name}; {size} px, batch {bs}, {args.warmup} warm-up + {args.steps} timed steps; "
          f"profile '{profile.name}': precision {gpu.precision(device)}, channels-last "
          f"{gpu.memory_format(device) == torch.channels_last}, {workers} loader worker(s), "
          f"pinned memory {gpu.loader_options(device)['pin_memory']}, augmentation on the "
          f"device {gpu.augments_on_device(device)}, cudnn.benchmark "
          f"{gpu.cudnn_benchmark if device.type == 'cuda' else 'n/a'}")
    if device.type != "cuda":
        print("NOTE: no GPU: the rates below are a CPU's and say nothing of a GPU's")

    rng = np.random.default_rng(0)
    n = (args.warmup + args.steps) * bs
    images = rng.random((n, size, size)).astype(np.float32)
    labels = np.arange(n) % len(CLASSES)
    measured = {}
    for model_name in args.model:
        recipe = recipe_of(model_name, profile, args.recipe).with_overrides(batch_size=bs)
        net = make_model(model_name, size, width, recipe)
        study = study_rate(copy.deepcopy(net), images, labels, recipe, gpu, device, args.warmup,
                           not args.no_augment)
        bare = bare_rate(copy.deepcopy(net), size, bs, gpu, device, args.warmup, args.steps)
        feed = loader_rate(images, labels, recipe, gpu, device, args.warmup,
                           not args.no_augment)
        ratio = study / bare
        verdict = "meets" if ratio >= GOAL else "below"
        print(f"{model_name} (recipe {recipe.name}, augmentation "
              f"{'off' if args.no_augment or recipe.augmentation is None else 'on'}): study "
              f"loop {study:8.1f} img/s, bare AMP loop {bare:8.1f} img/s, ratio {ratio:.2f} "
              f"({verdict} the goal {GOAL:.2f}); loader alone {feed:8.1f} img/s")
        gflops = classifier_gflops(model_name, size, width, recipe)
        step = gflops * (1 if recipe.freeze_trunk else 3)
        measured[model_name] = study * step / 1e3  # effective training TFLOP/s
    if args.assume_tflops:
        estimate(profile, n3, n2, {"all": args.assume_tflops}, "all",
                 f"{args.assume_tflops:g} TFLOP/s for every network, ASSUMED, not measured")
    else:
        first = args.model[0]
        shown = ", ".join(f"{m} {t * 1e3:.1f} GFLOP/s" for m, t in measured.items())
        estimate(profile, n3, n2, measured, first,
                 f"measured by the study loop here ({shown}) at {size} px on {name}; networks "
                 f"not measured at {first}'s rate",
                 "GPU-hours on this GPU" if device.type == "cuda"
                 else "hours on this CPU (NOT a GPU estimate)")

if __name__ == "__main__":
    main()
