"""Notebook 02 fold by fold, and reading its artifacts back.

:func:`run_cit_crossval` does both stages fold by fold with the split plan of notebook 00 and
writes the rows of models ``fucitnet`` and ``covid-sdnet`` (:data:`CIT_MODELS`) into
``predictions.parquet``; each fold also leaves ``cit/<stem>.pth`` (generators and CiT classifier,
read by :func:`load_cit`), ``cit/<stem>_history.csv`` (one line per epoch, read by
:func:`read_cit_history`) and ``cit/<stem>_split.csv`` (image_id, role: the images that trained,
validated and tested it), and a line in ``cit_runs.csv`` (:func:`read_cit_runs`). Each fold is a
unit of work (:mod:`cxrlib.train.units`: :func:`cit_specs`, :func:`cit_fold`) that any executor
may run; its rows and line reach the tables through its shard, merged by the calling process.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrlib.data.splits import check_split_plan, fold_split
from cxrlib.gpu import OFF, DeviceSettings
from cxrlib.models.cit import CiTGenerator
from cxrlib.models.classifiers import WIDTH_SCALABLE, build_classifier
from cxrlib.train.cit.loop import fucitnet_probabilities, train_cit, transform_images
from cxrlib.train.cit.networks import perceptual_network
from cxrlib.train.cit.recipe import CIT_RECIPES, CiTRecipe
from cxrlib.train.cit.sdnet import (
    SDNET_CLASSES, sdnet_dataset, sdnet_fusion, sdnet_probabilities,
)
from cxrlib.train.crossval import classifier_setup, recipe_for
from cxrlib.train.predictions import artifact_stem, make_predictions, validate_predictions
from cxrlib.train.training import (
    TrainingRecipe, default_device, load_images, predict, train_classifier,
)
from cxrlib.train.units import (
    FoldSpec, data_hash, inputs_table, make_spec, read_inputs, run_units, write_inputs,
)

__all__ = [
    "CIT_MODELS", "CIT_RUNS_FILE", "RUNS_KEY", "CiTSetup", "run_cit_crossval", "cit_specs",
    "cit_fold", "read_cit_runs", "read_cit_history", "load_cit",
]


#: The two methods of seed 000 built on the transformations (the ``model`` column).
CIT_MODELS = ("fucitnet", "covid-sdnet")
CIT_RUNS_FILE = "cit_runs.csv"

#: The key of a line of :data:`CIT_RUNS_FILE`.
RUNS_KEY = ("experiment", "lam", "repetition", "fold")


# --------------------------------------------------------------------------------------------
# Setup and the folds


@dataclass(frozen=True)
class CiTSetup:
    """How notebook 02 trains at one profile.

    Attributes
    ----------
    recipe : the CiT recipe (``profile.cit_recipe``: ``fucitnet2020`` as in the paper,
        ``fucitnet-fast`` on a CPU).
    cit_classifier : (model name, width, weights) of the CiT classifier
        (``profile.cit_classifier``: ResNet-18 from ImageNet in the paper).
    sdnet : (model name, training recipe) of COVID-SDNet's 4-class network.
    sdnet_width : its width (width-scalable models only).
    generator_width : channel multiplier of the generators and the perceptual VGG16.
    folds : folds of the split plan to train (as notebook 03).
    gpu : how both trainings use a CUDA device (:class:`cxrlib.gpu.DeviceSettings`, the
        profile's ``gpu_*``, ``loader_workers`` and ``cudnn_benchmark``; default all off).
    """

    recipe: CiTRecipe
    cit_classifier: tuple[str, float, str | None]
    sdnet: tuple[str, TrainingRecipe]
    sdnet_width: float
    generator_width: float
    folds: list[int]
    gpu: DeviceSettings = OFF

    @classmethod
    def from_profile(cls, profile) -> "CiTSetup":
        base = classifier_setup(profile)
        recipe = CIT_RECIPES[profile.cit_recipe].with_overrides(epochs=profile.cit_epochs)
        name = profile.cit_classifier
        cit_classifier = (name, base.width if name in WIDTH_SCALABLE else 1.0,
                          profile.cit_classifier_weights or None)
        sdnet = (profile.sdnet_model, recipe_for(profile.sdnet_model, base.covidnet[1]))
        if not profile.paper_schedules:
            recipe = recipe.with_overrides(batch_size=profile.batch_size)
            sdnet = (sdnet[0], sdnet[1].with_overrides(
                epochs=profile.cit_epochs, batch_size=profile.batch_size, augmentation=None,
                augment_classes=None))
        width = base.width if sdnet[0] in WIDTH_SCALABLE else 1.0
        return cls(recipe=recipe, cit_classifier=cit_classifier, sdnet=sdnet, sdnet_width=width,
                   generator_width=profile.cit_width, folds=base.folds, gpu=base.gpu)


def run_cit_crossval(
    images: pd.DataFrame,
    manifest: pd.DataFrame,
    plan: pd.DataFrame,
    artifacts_dir: str | Path,
    setup: CiTSetup,
    experiment: str = "sdnet",
    view: str = "sdnet",
    image_size: int = 224,
    lam: float | None = None,
    folds: Sequence[int] | None = None,
    repetitions: Sequence[int] | None = None,
    with_sdnet: bool = True,
    write_predictions: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    executor=None,
) -> pd.DataFrame:
    """FuCiTNet and COVID-SDNet trained and tested on each fold of the split plan.

    Parameters
    ----------
    images : views table (``image_id``, ``view``, ``path`` absolute), e.g.
        :func:`cxrlib.artifacts.read_views`.
    manifest : validated manifest of a binary cohort (labels ``control`` and ``covid19``).
    plan : split plan (restricted to the images to use).
    artifacts_dir : the run folder's ``artifacts/``.
    setup : :class:`CiTSetup` (``CiTSetup.from_profile(profile)``).
    experiment, view : experiment label of the rows and the view the images come from.
    image_size : network input side in pixels.
    lam : override of the recipe's lambda (the sweep); None keeps it.
    folds, repetitions : subsets to run (default ``setup.folds``, every repetition).
    with_sdnet : also train COVID-SDNet's 4-class network.
    write_predictions : write the rows into ``predictions.parquet`` (the sweep does not).
    val_fraction : share of the training patients held out for early stopping (seed 000: 10%).
    seed : fold f of repetition r trains with ``seed + 100 r + f``.
    executor : where the folds train (:func:`cxrlib.train.executors.get_executor`; None: the
        default).

    Each fold is a unit of work (:mod:`cxrlib.train.units`, :func:`cit_specs`, :func:`cit_fold`):
    its rows and ``cit_runs.csv`` line reach the tables through its shard, merged by this process.
    A fold is skipped when done with the same settings: its rows are in the table with its settings
    hash (with ``write_predictions``), or its shard is merged (without); folds made with other
    settings make the call fail (:class:`cxrlib.train.units.UnitSettingsConflict`).

    Returns one line per fold trained now (the ``cit_runs.csv`` columns); the folds' per-epoch
    histories are read with :func:`read_cit_history`.
    """
    artifacts_dir = Path(artifacts_dir)
    specs = cit_specs(images, manifest, plan, artifacts_dir, setup, experiment, view, image_size,
                      lam, folds, repetitions, with_sdnet, write_predictions, val_fraction, seed,
                      device, progress)
    metas = run_units(specs, artifacts_dir, executor=executor, progress=progress, desc="CiT")
    return pd.DataFrame([m["runs_row"] for m in metas])


def cit_specs(
    images: pd.DataFrame,
    manifest: pd.DataFrame,
    plan: pd.DataFrame,
    artifacts_dir: str | Path,
    setup: CiTSetup,
    experiment: str = "sdnet",
    view: str = "sdnet",
    image_size: int = 224,
    lam: float | None = None,
    folds: Sequence[int] | None = None,
    repetitions: Sequence[int] | None = None,
    with_sdnet: bool = True,
    write_predictions: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> list[FoldSpec]:
    """The units of :func:`run_cit_crossval` (same parameters), one per (repetition, fold),
    keyed (experiment, ``fucitnet``, ``<CiT classifier>-lam<lambda>``, repetition, fold); writes
    their inputs table under ``artifacts/shards/inputs/``."""
    artifacts_dir = Path(artifacts_dir)
    check_split_plan(plan)
    labels = manifest.drop_duplicates("image_id").set_index("image_id")["label"].astype(str)
    classes = ["control", "covid19"]
    if set(labels) != set(classes):
        raise ValueError(f"FuCiTNet and COVID-SDNet need a binary control / covid19 cohort; this "
                         f"manifest has labels {sorted(set(labels))}")
    rows = images[images["view"] == view].drop_duplicates("image_id")
    if rows.empty:
        raise ValueError(f"the images table has no view {view!r} (it has "
                         f"{sorted(set(images['view']))}): run notebook 01 first")
    recipe = setup.recipe if lam is None else setup.recipe.with_overrides(lam=float(lam))
    plan = plan[plan["image_id"].isin(rows["image_id"])]
    inputs = inputs_table(plan, labels, rows.set_index("image_id")["path"])
    inputs_path = write_inputs(artifacts_dir, inputs)
    repetitions = sorted(plan["repetition"].unique()) if repetitions is None else list(repetitions)
    folds = setup.folds if folds is None else list(folds)
    cit_name, cit_width, cit_weights = setup.cit_classifier
    sdnet_name, sdnet_recipe = setup.sdnet
    settings = {
        "unit": "cit", "view": view, "image_size": int(image_size),
        "val_fraction": float(val_fraction), "seed": int(seed), "classes": classes,
        "recipe": {k: v for k, v in recipe.as_dict().items() if k != "source"},
        "cit_classifier": {"model": cit_name, "width": float(cit_width), "weights": cit_weights},
        "generator_width": float(setup.generator_width),
        "sdnet": {"model": sdnet_name, "width": float(setup.sdnet_width),
                  "recipe": {k: v for k, v in sdnet_recipe.as_dict().items() if k != "source"}},
        "inputs": data_hash(inputs),
    }
    if setup.gpu.hashed():  # only settings that are on: the CPU profiles' hashes stay as they were
        settings["gpu"] = setup.gpu.hashed()
    cells = [(experiment, "fucitnet", cit_name)] \
        + ([(experiment, "covid-sdnet", sdnet_name)] if with_sdnet else [])
    config = {"setup": setup, "recipe": recipe, "view": view, "image_size": int(image_size),
              "val_fraction": float(val_fraction), "seed": int(seed), "classes": classes,
              "with_sdnet": bool(with_sdnet), "write_predictions": bool(write_predictions)}
    return [make_spec("cit", experiment, "fucitnet", f"{cit_name}-lam{recipe.lam:g}", int(rep),
                      int(fold), artifacts_dir, inputs_path, settings,
                      row_cells=cells if write_predictions else [], config=config,
                      device=None if device is None else str(device), progress=bool(progress),
                      gpu=setup.gpu)
            for rep in repetitions for fold in folds]


#: What :func:`cit_fold` keeps between the folds it trains in one process: the last view's
#: images and the perceptual network (the same for every fold of a run).
_CIT_CACHE: dict[tuple, object] = {}


def _cached(key: tuple, make):
    if key not in _CIT_CACHE:
        for old in [k for k in _CIT_CACHE if k[0] == key[0]]:
            del _CIT_CACHE[old]
        _CIT_CACHE[key] = make()
    return _CIT_CACHE[key]


def _classifier_for_cit(name: str, n_classes: int, image_size: int, width: float,
                        weights: str | None) -> nn.Module:
    """The CiT classifier; with ImageNet weights a ResNet keeps its stem and layer1 frozen."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the fallback is in init_description
        model = build_classifier(name, n_classes, image_size=image_size, width=width,
                                 weights=weights)
    if model.init_description.startswith("ImageNet") and name.startswith("resnet"):
        net = model.backbone
        for module in (net.conv1, net.bn1, net.layer1):
            for p in module.parameters():
                p.requires_grad_(False)
        model.init_description += "; conv1, bn1 and layer1 frozen"
    return model


def cit_fold(spec: FoldSpec) -> tuple[pd.DataFrame | None, dict, str, tuple]:
    """Train and test one fold of :func:`cit_specs`: the generators and CiT classifier
    (``cit/<stem>.pth``, ``_split.csv``, ``_history.csv``), then COVID-SDNet's network. Returns
    (its predictions rows, or None without ``write_predictions``; its ``cit_runs.csv`` line;
    that file's name; its key) for :func:`cxrlib.train.units.run_unit` to write as a shard."""
    cfg = spec.config
    setup, recipe, classes = cfg["setup"], cfg["recipe"], cfg["classes"]
    experiment, view, image_size = spec.experiment, cfg["view"], cfg["image_size"]
    rep, fold, seed = spec.repetition, spec.fold, cfg["seed"]
    artifacts_dir = Path(spec.artifacts_dir)
    inputs = read_inputs(spec.inputs)
    plan = inputs[["image_id", "group", "repetition", "fold"]]
    labels = inputs.drop_duplicates("image_id").set_index("image_id")["label"]
    paths = inputs.dropna(subset=["path"]).drop_duplicates("image_id").set_index("image_id")["path"]
    device = default_device(spec.device)
    features, perceptual = _cached(("perceptual", setup.generator_width, seed),
                                   lambda: perceptual_network(setup.generator_width, seed=seed))
    index, array = _cached(("images", spec.inputs, image_size), lambda: (
        pd.Index(paths.index.to_numpy()),
        load_images(list(paths.to_numpy()), image_size, progress=spec.progress)))
    cit_name, cit_width, cit_weights = setup.cit_classifier

    split = fold_split(plan, rep, fold, val_fraction=cfg["val_fraction"], seed=seed)
    x = {name: array[index.get_indexer(ids)] for name, ids in split.items()}
    y = {name: np.array([classes.index(labels[i]) for i in ids], dtype=np.int64)
         for name, ids in split.items()}
    unit_seed = seed + 100 * int(rep) + int(fold)
    torch.manual_seed(unit_seed)
    classifier = _classifier_for_cit(cit_name, 2, image_size, cit_width, cit_weights)
    start = time.perf_counter()
    gpu = OFF if spec.gpu is None else spec.gpu
    fit = train_cit(x["train"], y["train"], x["valid"], y["valid"], classifier, features,
                    recipe, setup.generator_width, perceptual, seed=unit_seed,
                    device=device, gpu=gpu)
    cit_seconds = time.perf_counter() - start
    stem = spec.stem
    folder = artifacts_dir / "cit"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"generators": fit.generators.state_dict(),
                "classifier": fit.classifier.state_dict(),
                "classifier_args": fit.classifier.build_args, "classes": classes,
                "generator_width": setup.generator_width,
                "extra": {"experiment": experiment, "view": view,
                          "repetition": int(rep), "fold": int(fold),
                          "recipe": recipe.as_dict(), "best_epoch": int(fit.best_epoch),
                          "perceptual": perceptual}},
               folder / f"{stem}.pth")
    pd.concat([pd.DataFrame({"image_id": split[n], "role": n}) for n in split]) \
        .to_csv(folder / f"{stem}_split.csv", index=False)
    history = fit.history.assign(experiment=experiment, lam=recipe.lam, repetition=rep,
                                 fold=fold)
    history.to_csv(folder / f"{stem}_history.csv", index=False)

    test_ids, test_labels = split["test"], [labels[i] for i in split["test"]]
    with_sdnet = cfg["with_sdnet"]
    transformed = {n: transform_images(fit.generators, x[n], device=device)
                   for n in (x if with_sdnet else ["test"])}
    fused = fucitnet_probabilities(fit.generators, fit.classifier, x["test"], device,
                                   transformed["test"])
    run = {"experiment": experiment, "lam": recipe.lam, "repetition": rep, "fold": fold,
           "view": view, "image_size": image_size, "n_train": len(split["train"]),
           "n_valid": len(split["valid"]), "n_test": len(test_ids),
           "epochs_run": len(fit.history), "best_epoch": fit.best_epoch,
           "stopped_early": fit.stopped_early, "cit_seconds": round(cit_seconds, 2),
           "fucitnet_test_accuracy": float((fused.argmax(1) == y["test"]).mean()),
           "valid_accuracy": float(fit.history["valid_accuracy"].iloc[fit.best_epoch]),
           "cit_classifier": cit_name, "cit_init": classifier.init_description,
           "perceptual": perceptual, "recipe": recipe.name, "precision": gpu.precision(device),
           "checkpoint": str((folder / f"{stem}.pth").relative_to(artifacts_dir)),
           "split": str((folder / f"{stem}_split.csv").relative_to(artifacts_dir)),
           "notes": " | ".join(fit.notes)}
    new = [make_predictions(test_ids, test_labels, fused, classes, experiment=experiment,
                            model="fucitnet", method=cit_name, repetition=rep,
                            fold=fold)]
    if with_sdnet:
        new.append(_sdnet_fold(transformed, y, split, test_labels, classes, setup,
                               image_size, experiment, rep, fold, unit_seed,
                               artifacts_dir, device, run, gpu))
    run["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    rows = pd.concat(new, ignore_index=True) if cfg["write_predictions"] else None
    return rows, run, CIT_RUNS_FILE, RUNS_KEY


def _sdnet_fold(transformed: dict, y: dict, split: dict, test_labels: list, classes: list,
                setup: CiTSetup, image_size: int, experiment: str, rep: int, fold: int,
                unit_seed: int, artifacts_dir: Path, device, run: dict,
                gpu: DeviceSettings = OFF) -> pd.DataFrame:
    """Train COVID-SDNet's 4-class network on both transforms (``transformed[split]``: (2, N,
    S, S) from :func:`transform_images`); the test fold's fused rows."""
    name, recipe = setup.sdnet
    train_x, train_y = sdnet_dataset(transformed["train"], y["train"])
    valid_x, valid_y = sdnet_dataset(transformed["valid"], y["valid"])
    torch.manual_seed(unit_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = build_classifier(name, len(SDNET_CLASSES), image_size=image_size,
                                 width=setup.sdnet_width, weights=recipe.weights,
                                 hidden_units=recipe.hidden_units if name != "covidnet" else None)
    stem = artifact_stem(experiment, "covid-sdnet", name, rep, fold)
    sd_fit = train_classifier(model, train_x, train_y, valid_x, valid_y, recipe,
                              list(SDNET_CLASSES), log_path=artifacts_dir / "logs" / f"{stem}.csv",
                              seed=unit_seed, device=device, gpu=gpu)
    theta = predict(sd_fit.model, transformed["test"][1], device=device)[0]
    psi = predict(sd_fit.model, transformed["test"][0], device=device)[0]
    positive = sdnet_fusion(theta, psi)
    rows = make_predictions(split["test"], test_labels, sdnet_probabilities(theta, psi), classes,
                            experiment=experiment, model="covid-sdnet", method=name,
                            repetition=rep, fold=fold)
    rows["predicted"] = np.where(positive, classes[1], classes[0])
    run.update({"sdnet_model": name, "sdnet_init": model.init_description,
                "sdnet_recipe": recipe.name, "sdnet_epochs_run": len(sd_fit.history),
                "sdnet_seconds": round(sd_fit.seconds, 2),
                "sdnet_test_accuracy": float((positive == (y["test"] == 1)).mean())})
    return validate_predictions(rows, origin=f"{experiment}/covid-sdnet r{rep} f{fold}")


# --------------------------------------------------------------------------------------------
# Reading back


def read_cit_runs(artifacts_dir: str | Path) -> pd.DataFrame:
    """The ``cit_runs.csv`` table: one line per trained fold (empty if none)."""
    path = Path(artifacts_dir) / CIT_RUNS_FILE
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def read_cit_history(artifacts_dir: str | Path) -> pd.DataFrame:
    """Every trained fold's per-epoch history (``cit/*_history.csv``) in one table: the
    :class:`TrainedCiT` history columns plus ``experiment``, ``lam``, ``repetition``, ``fold``."""
    files = sorted((Path(artifacts_dir) / "cit").glob("*_history.csv"))
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


def load_cit(path: str | Path) -> dict:
    """Read a fold's ``cit/<stem>.pth``: ``{"generators": nn.ModuleList (eval), "classes",
    "generator_width", "classifier": the CiT classifier (eval), "extra"}``."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    generators = nn.ModuleList(CiTGenerator(1, blob["generator_width"])
                               for _ in blob["classes"])
    generators.load_state_dict(blob["generators"])
    args = dict(blob["classifier_args"])
    args.pop("freeze_trunk", None)
    classifier = build_classifier(args.pop("name"), weights=None, **args)
    classifier.load_state_dict(blob["classifier"])
    return {"generators": generators.eval(), "classifier": classifier.eval(),
            "classes": blob["classes"], "generator_width": blob["generator_width"],
            "extra": blob.get("extra", {})}
