"""Scale profiles shared by every notebook: ``smoke``, ``default`` and ``paper``.

A profile is the one place where cohort size, image size, epochs, folds, repetitions and model
width are set. Every notebook takes ``profile`` as a papermill parameter and reads the rest here::

    from cxrlib.profiles import get_profile
    P = get_profile("smoke")
    P.image_size, P.folds

- ``smoke``: seconds per notebook, for the test suite;
- ``default``: the embedded synthetic cohort on a 2-core CPU, the whole study in well under an hour;
- ``paper``: the papers' own settings (224 px, 5x5-fold CV, their epochs) for real data on a GPU.
"""
from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class Profile:
    """Parameters of one scale of the study.

    Attributes
    ----------
    name : profile name.
    n_arias : images in the synthetic 3-class multi-source cohort (preset ``arias``).
    n_covidgr : images in the synthetic binary COVIDGR-like cohort (preset ``covidgr``).
    synth_size : long side of the generated radiographs, in pixels (sources vary around it).
    image_size : side of the square network input, in pixels.
    seg_size : side of the lung-segmentation network input, in pixels.
    seg_epochs : U-Net training epochs.
    seg_batch_size : U-Net training batch size (8 in the reference).
    seg_lr : U-Net peak learning rate (Adam, one-cycle schedule; 1e-3 in the reference).
    seg_batch_norm : batch normalisation in the U-Net (not in the reference; it lets the short
        CPU trainings of ``smoke`` and ``default`` converge in their few epochs).
    seg_domain_randomisation : the random acquisition changes drawn on each U-Net training image
        (:data:`cxrlib.preprocess.domain_randomisation.CHANGES`; empty: the reference's affine
        augmentation only), so that a U-Net trained on synthetic images carries over to real ones.
    seg_loss : the U-Net's training loss (:data:`cxrlib.preprocess.segmentation.training.LOSSES`):
        ``"bce"``, the reference's binary cross-entropy (``paper``), or ``"bce+dice"``, with a
        soft Dice term added (``smoke``, ``default``): at ``default`` it raised the held-out
        synthetic Dice of each of 3 trainings (0.973 -> 0.975) and the adapted real-sample Dice
        on average (0.910 -> 0.913, within the spread of trainings).
    seg_adapt_epochs : self-training epochs of each round of the synthetic U-Net's adaptation
        to a real corpus without lung masks
        (:func:`cxrlib.preprocess.segmentation_adaptation.adapt_unet`; 0: batch-norm
        re-estimation only).
    seg_adapt_min_steps : fewest self-training steps of that adaptation: on a small corpus the
        epochs are raised to reach them (at ``default``, 30 rather than 3 on the 12 images of
        ``../shared/real_sample`` raised the adapted Dice of each of 3 synthetic U-Nets, 0.908
        -> 0.916 on average); on a large one ``seg_adapt_epochs`` already makes more.
    seg_adapt_max_images : most corpus images the adaptation uses (a random sample of them).
    seg_adapt_rounds : self-training rounds of that adaptation, each on the pseudo-masks of the
        network the round before left (iterative self-training). At ``default``, 3 rather than 1
        raised the adapted Dice on ``../shared/real_sample`` of each of the 3 ensembles of study
        seeds 0-2 (0.918 -> 0.921 on average: 0.919 -> 0.920, 0.921 -> 0.925, 0.915 -> 0.916).
        One round of 3x the steps (``seg_adapt_min_steps`` 90) gave 0.920 on average: most of
        the gain is the longer self-training, a little the refreshed targets. Each round is 1
        epoch (``seg_adapt_epochs``) and at least ``seg_adapt_min_steps`` steps: on the 12 images
        each makes its 30 steps, and on a large corpus the 3 rounds make the steps one round of
        3 epochs made before (600 images on 2 cores: 176 s, against 162 s). ``paper`` keeps 1:
        its 10 epochs on up to 5000 images already make thousands of steps, and its GPU
        estimate stands (rounds there are not measured).
    seg_adapt_min_plausibility : lowest plausibility score
        (:mod:`cxrlib.preprocess.lung_plausibility`) of a pseudo-mask kept for self-training.
    seg_synthetic_images : images of the synthetic ``lungseg`` cohort the lung U-Net for corpora
        without masks trains on (:mod:`cxrlib.preprocess.synthetic_unet`; trained once and cached).
        At ``default``, 2400 rather than 1200 raised the real-sample Dice in each of 3 paired
        trainings (0.885 -> 0.896 on average).
    seg_synthetic_epochs : training epochs of that synthetic U-Net (``seg_epochs`` is the U-Net
        trained on a corpus's own masks). At ``default`` (with ``bce+dice``), 10 rather than 5
        raised the held-out synthetic Dice (0.975 -> 0.979) and the adapted real-sample Dice
        (0.913 -> 0.915) of each of 3 trainings, at twice the time (about 10 min on 2 cores).
    seg_ensemble : how many synthetic U-Nets, each trained with its own seed on its own cohort,
        segment a corpus without masks, their probabilities averaged
        (:class:`cxrlib.models.unet.UNetEnsemble`; 1: a single U-Net). At ``default``, 3 rather
        than 1 raised the adapted Dice on the 12 real radiographs of ``../shared/real_sample``
        to 0.919 (members of seeds 0-2; each alone: 0.915, 0.911, 0.918) and takes away the
        luck of one training; over the ensembles of study seeds 0-2 (9 members), 0.918 +- 0.003
        (one self-training round). 5 members gave 0.922 and 0.919 (seeds 0-4, 4-8), all 9
        0.921: little more than 3.
    seg_min_steps : fewest U-Net optimiser steps; the epochs are raised on a small cohort to reach
        it (``smoke``: a 64-image cohort gets 2 epochs, too few steps otherwise to find the lungs).
    epochs : classifier training epochs per fold.
    cit_epochs : class-inherent-transformation (FuCiTNet) epochs per fold.
    folds : cross-validation folds.
    repetitions : cross-validation repetitions (different shuffles).
    width : channel multiplier for the networks (1.0 = the papers' widths).
    batch_size : training batch size.
    bootstrap : bootstrap resamples for confidence intervals.
    tsne_max_points : largest number of embeddings passed to t-SNE.
    cls_width : channel multiplier of the from-scratch classifiers of notebook 03 (COVID-Net).
    cls_folds : how many folds of the split plan notebook 03 trains (the first ones; at most
        ``folds``), so that its CPU time fits the profile.
    cls_recipe : the training recipe of COVID-Net (:data:`cxrlib.train.training.RECIPES`):
        ``arias2020`` (the paper's Adam 2e-5, which learns almost nothing in a few epochs) or
        ``arias2020-fast`` (Adam 1e-3, precise batch-norm statistics).
    paper_schedules : every training keeps its paper's epochs, batch size and augmentation
        (True), or takes the profile's ``epochs`` (``cit_epochs`` in notebook 02) and
        ``batch_size``, with COVID-SDNet's network trained without augmentation (False: the
        CPU profiles).
    cls_binary_model : the network of seed 000's binary experiments (``resnet50`` in the paper).
    cls_extra_seeds : also run seed 002 (VGG16, original vs equalised) and seed 004 (frozen
        ImageNet backbone) in notebook 03.
    cam_max_images : most images whose Grad-CAM maps notebook 06 scores per experiment (stratified
        by class; the same images in every experiment).
    cam_road_images : of those, how many get the ROAD faithfulness score per experiment (each
        costs a few seconds of sparse solves on a CPU).
    cam_road_percentiles : the percentiles of the map at which ROAD removes pixels (the ROAD
        paper and ``pytorch_grad_cam``'s ``ROADCombined`` use 10, 20, ..., 90; each costs one
        imputation per image).
    cit_recipe : the recipe of notebook 02's transformations (:data:`cxrlib.train.cit.CIT_RECIPES`):
        ``fucitnet2020`` (the paper's) or ``fucitnet-fast`` (randomly initialised generators
        that approach the identity within a few CPU epochs).
    cit_classifier : the CiT classifier's network (ResNet-18 in seed 000).
    cit_classifier_weights : its initial weights: ``imagenet`` (a local file,
        :mod:`cxrlib.models`) or ``""`` (random).
    sdnet_model : the network of COVID-SDNet's 4-class classifier (ResNet-50 in seed 000; its
        recipe follows the model as for ``cls_binary_model``).
    sweep_train_fractions : the shares of patients notebook 03 trains on in seed 003's
        train-fraction sweep (one hold-out COVID-Net on ``exp1`` per share; empty: no sweep).
    probe_size : side of notebook 04's shortcut probes' images, px.
    probe_epochs : COVID-Net epochs of each shortcut probe.
    cit_width : channel multiplier of notebook 02's class-inherent-transformation generators and
        of its randomly initialised perceptual VGG16 (1.0: the paper's 64 maps and VGG16, which
        alone can load ImageNet weights).
    cell_timeout_s : longest time one notebook cell may run, in seconds (papermill's execution
        timeout; 0: no limit). A cell that runs longer, or whose kernel dies, fails its notebook
        with a message naming the cell and this limit (:func:`cxrlib.runner.execute_notebook`).
        ``smoke`` 600, ``default`` 3600, ``paper`` 86400 (a day: the papers' trainings on a GPU).
    gpu_mixed_precision : train in mixed precision on a CUDA device (bfloat16 autocast where the
        GPU supports it, else float16 with loss scaling; :mod:`cxrlib.gpu`). No effect on a
        CPU. Changes the numbers a training gives, so it enters the units' settings hash (when on).
    gpu_channels_last : classifier weights and batches in channels-last memory on a CUDA device
        (tensor cores); the same arithmetic in another layout. No effect on a CPU.
    loader_workers : DataLoader worker processes that prepare and augment the batches while the
        device trains (any device), with pinned memory on CUDA (0: none, the CPU profiles). The
        augmentation's random draws depend on their number, so it enters the units' settings
        hash (when > 0). A SLURM job should have ``cpus_per_task`` of at least this plus 2.
    cudnn_benchmark : cuDNN's autotuner (``torch.backends.cudnn.benchmark``) on a CUDA device,
        and with it non-deterministic algorithms allowed. Off in every profile: the study
        promises that a unit trained again gives the same result (deterministic cuDNN
        algorithms); ``-p profile.cudnn_benchmark=true`` trades that for speed.
    gpu_augmentation : the classifiers' training augmentation drawn batch by batch on a CUDA
        device (:func:`cxrlib.train.training.augment_batch`) rather than image by image in the
        loader (the elastic deformation alone costs a CPU core about 30 ms per 224-px image). Other
        random draws, so it enters the units' settings hash (when on). No effect on a CPU.
    """

    name: str
    n_arias: int
    n_covidgr: int
    synth_size: int
    image_size: int
    seg_size: int
    seg_epochs: int
    seg_batch_size: int
    seg_lr: float
    seg_batch_norm: bool
    seg_min_steps: int
    seg_domain_randomisation: tuple[str, ...]
    seg_loss: str
    seg_adapt_epochs: int
    seg_adapt_min_steps: int
    seg_adapt_max_images: int
    seg_adapt_rounds: int
    seg_adapt_min_plausibility: float
    seg_synthetic_images: int
    seg_synthetic_epochs: int
    seg_ensemble: int
    epochs: int
    cit_epochs: int
    folds: int
    repetitions: int
    width: float
    batch_size: int
    bootstrap: int
    tsne_max_points: int
    cls_width: float
    cls_folds: int
    cls_recipe: str
    cls_binary_model: str
    cls_extra_seeds: bool
    cam_max_images: int
    cam_road_images: int
    cit_width: float
    cam_road_percentiles: tuple[int, ...]
    cell_timeout_s: int
    paper_schedules: bool
    cit_recipe: str
    cit_classifier: str
    cit_classifier_weights: str
    sdnet_model: str
    probe_size: int
    probe_epochs: int
    sweep_train_fractions: tuple[float, ...]
    gpu_mixed_precision: bool
    gpu_channels_last: bool
    loader_workers: int
    cudnn_benchmark: bool
    gpu_augmentation: bool

    def as_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **changes) -> "Profile":
        """A copy with some fields changed; unknown names raise ``TypeError``."""
        return replace(self, **changes)


#: The changes of :mod:`cxrlib.preprocess.domain_randomisation` the U-Net trains with: all but
#: ``opacity``, whose effect on the real-sample Dice is within the spread between trainings
#: (``lungseg`` cohort, ``default`` profile, seeds 0-2: 0.885 +- 0.011 with it, 0.885 +- 0.006
#: without).
_DOMAIN_RANDOMISATION = ("gamma", "window", "clahe", "blur", "sharpen", "noise", "zoom_out", "crop",
                         "rotation")

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", n_arias=120, n_covidgr=64, synth_size=128, image_size=64, seg_size=64,
        seg_epochs=1, seg_batch_size=4, seg_lr=1e-2, seg_batch_norm=True,
        seg_min_steps=20, seg_domain_randomisation=_DOMAIN_RANDOMISATION,
        seg_loss="bce+dice", seg_adapt_epochs=1,
        seg_adapt_min_steps=0, seg_adapt_max_images=64, seg_adapt_min_plausibility=0.9,
        seg_adapt_rounds=2,
        seg_synthetic_images=120,
        seg_synthetic_epochs=1, seg_ensemble=2,
        epochs=1, cit_epochs=1, folds=2, repetitions=1, width=0.25,
        batch_size=16, bootstrap=50, tsne_max_points=200,
        cls_width=0.25, cls_folds=2, cls_recipe="arias2020-fast", cls_binary_model="covidnet",
        cls_extra_seeds=True,
        cam_max_images=24, cam_road_images=3,
        cit_width=0.125, cam_road_percentiles=(25, 50, 75),
        cell_timeout_s=600,
        paper_schedules=False, cit_recipe="fucitnet-fast", cit_classifier="covidnet",
        cit_classifier_weights="", sdnet_model="covidnet", probe_size=64, probe_epochs=1,
        sweep_train_fractions=(0.5, 0.9),
        gpu_mixed_precision=False, gpu_channels_last=False, loader_workers=0,
        cudnn_benchmark=False, gpu_augmentation=False,
    ),
    "default": Profile(
        name="default", n_arias=1200, n_covidgr=400, synth_size=256, image_size=128, seg_size=128,
        seg_epochs=5, seg_batch_size=8, seg_lr=3e-3, seg_batch_norm=True,
        seg_min_steps=0, seg_domain_randomisation=_DOMAIN_RANDOMISATION,
        seg_loss="bce+dice", seg_adapt_epochs=1,
        seg_adapt_min_steps=30, seg_adapt_max_images=600, seg_adapt_min_plausibility=0.9,
        seg_adapt_rounds=3,
        seg_synthetic_images=2400,
        seg_synthetic_epochs=10, seg_ensemble=3,
        epochs=6, cit_epochs=3, folds=5, repetitions=1, width=0.5,
        batch_size=32, bootstrap=500, tsne_max_points=2000,
        cls_width=0.25, cls_folds=2, cls_recipe="arias2020-fast", cls_binary_model="covidnet",
        cls_extra_seeds=False,
        cam_max_images=150, cam_road_images=8,
        cit_width=0.125, cam_road_percentiles=(25, 50, 75),
        cell_timeout_s=3600,
        paper_schedules=False, cit_recipe="fucitnet-fast", cit_classifier="covidnet",
        cit_classifier_weights="", sdnet_model="covidnet", probe_size=64, probe_epochs=3,
        sweep_train_fractions=(0.33, 0.9),
        gpu_mixed_precision=False, gpu_channels_last=False, loader_workers=0,
        cudnn_benchmark=False, gpu_augmentation=False,
    ),
    "paper": Profile(
        name="paper", n_arias=8000, n_covidgr=852, synth_size=1024, image_size=224, seg_size=256,
        seg_epochs=50, seg_batch_size=8, seg_lr=1e-3, seg_batch_norm=False,
        seg_min_steps=0, seg_domain_randomisation=_DOMAIN_RANDOMISATION,
        seg_loss="bce", seg_adapt_epochs=10,
        seg_adapt_min_steps=30, seg_adapt_max_images=5000, seg_adapt_min_plausibility=0.9,
        seg_adapt_rounds=1,
        seg_synthetic_images=8000,
        seg_synthetic_epochs=50, seg_ensemble=1,
        epochs=24, cit_epochs=30, folds=5, repetitions=5, width=1.0,
        batch_size=32, bootstrap=2000, tsne_max_points=10000,
        cls_width=1.0, cls_folds=5, cls_recipe="arias2020", cls_binary_model="resnet50",
        cls_extra_seeds=True,
        cam_max_images=600, cam_road_images=100,
        cit_width=1.0, cam_road_percentiles=(10, 20, 30, 40, 50, 60, 70, 80, 90),
        cell_timeout_s=86400,
        paper_schedules=True, cit_recipe="fucitnet2020", cit_classifier="resnet18",
        cit_classifier_weights="imagenet", sdnet_model="resnet50", probe_size=224,
        probe_epochs=24, sweep_train_fractions=(0.33, 0.5, 0.66, 0.9),
        gpu_mixed_precision=True, gpu_channels_last=True, loader_workers=8,
        cudnn_benchmark=False, gpu_augmentation=True,
    ),
}


def get_profile(name: str | Profile, overrides: dict | None = None) -> Profile:
    """The profile called ``name`` (a :class:`Profile` is returned unchanged), with
    ``overrides`` (field name -> value, checked by :func:`check_overrides`) applied."""
    if isinstance(name, Profile):
        prof = name
    else:
        try:
            prof = PROFILES[name]
        except KeyError:
            raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}"
                             ) from None
    return prof.with_overrides(**check_overrides(overrides)) if overrides else prof


def _field_types() -> dict[str, object]:
    hints = typing.get_type_hints(Profile)
    return {f.name: hints[f.name] for f in fields(Profile)}


def check_overrides(overrides: dict) -> dict:
    """Check profile field overrides (e.g. from ``-p profile.cls_folds=5``) against the fields of
    :class:`Profile` and their types; return them converted (an int for a float field becomes a
    float, a list for a tuple field a tuple).

    Raises
    ------
    ValueError naming the field and what it expects: an unknown field (with the valid ones), a
    value of the wrong type (``True`` is not an int, ``"5"`` is not a number), or ``name``.
    """
    types = _field_types()
    out = {}
    for key, value in dict(overrides or {}).items():
        if key == "name":
            raise ValueError("profile.name cannot be overridden: choose the profile with --profile")
        if key not in types:
            raise ValueError(f"unknown profile field {key!r}; the fields are "
                             f"{', '.join(sorted(k for k in types if k != 'name'))}")
        expected = types[key]
        if expected is bool:
            ok = isinstance(value, bool)
        elif expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif expected is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif expected is str:
            ok = isinstance(value, str)
        else:  # tuple[int, ...] or tuple[str, ...]
            item = typing.get_args(expected)[0]
            ok = (isinstance(value, (list, tuple)) and
                  all(isinstance(v, item) and not isinstance(v, bool) for v in value))
            value = tuple(value) if ok else value
        if not ok:
            name = getattr(expected, "__name__", str(expected))
            if name == "tuple":
                name = f"a list of {typing.get_args(expected)[0].__name__}"
            raise ValueError(f"profile.{key} must be {name}, got {value!r} "
                             f"({type(value).__name__})")
        out[key] = value
    return out
