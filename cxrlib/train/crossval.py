"""The evaluation protocol: an experiment grid trained and tested fold by fold.

The grid is (experiment x model) x repetition x fold. An *experiment* is a preprocessed view of
the images (``exp1``, ``exp2``, ``exp3``, ``sdnet``), or a label mapped to a view
(``{"exp1@train50": "exp1"}``); a *model* is a network name trained with a recipe
(:data:`cxrlib.train.training.DEFAULT_RECIPE` unless named: ``("resnet50", "soares2020")``).

For every fold of the split plan (made once by notebook 00, see :mod:`cxrlib.data.splits`),
:func:`run_crossval` trains on the training folds minus a validation part, selects the epoch on
that validation part (never on the test fold), predicts the test fold and writes, under
``artifacts_dir``:

- ``predictions.parquet``: the test fold's rows (:mod:`cxrlib.train.predictions`);
- ``embeddings/<stem>.npz``: penultimate-layer embeddings of the fold's train/valid/test images;
- ``checkpoints/<stem>.pth``: the selected weights (read them with
  :func:`cxrlib.models.classifiers.load_classifier`);
- ``logs/<stem>.csv``: the fastai CSV log, one line per epoch;
- ``crossval_runs.csv``: one line per trained fold (sizes, epochs, time, weights' origin).

Each fold is a unit of work (:mod:`cxrlib.train.units`, built by :func:`crossval_specs`, trained by
:func:`train_fold`) that any executor (:mod:`cxrlib.train.executors`: ``inline``, ``local``,
``slurm``) may run: it writes its log, embeddings and checkpoint, then its shard
(``shards/<stem>.<settings hash>.*``, written last); only the calling process merges shards into
the predictions table and ``crossval_runs.csv``. A fold counts as done when its rows are in the
table with the same settings hash (``settings_hash`` column); a second call skips done folds, which
makes an interrupted grid restartable, and refuses folds of the same cell made with other settings.

:func:`holdout_plan` is seed 002's 80/20 hold-out as a plan (fold 0 is the test set, fold -1 the
training set) and :func:`run_train_fraction_sweep` is seed 003's train-fraction sweep.

Typical use (notebook 03)::

    read = read_views(run.artifacts, manifest)               # cxrlib.artifacts, QC applied plan =
    read_split_plan(run.artifacts, read.views["image_id"]) setup = classifier_setup(profile) preds
    = run_crossval(read.views, manifest, plan, run.artifacts, experiments=["exp1", "exp3"],
                         models=[setup.covidnet], image_size=profile.image_size, width=setup.width,
                         folds=setup.folds, seed=seed, gpu=setup.gpu,
                         **setup.overrides)        # models: (name, recipe) pairs
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from cxrlib.gpu import OFF, DeviceSettings
from cxrlib.data.manifest import LABELS
from cxrlib.profiles import Profile
from cxrlib.models.classifiers import WIDTH_SCALABLE, build_classifier, save_classifier
from cxrlib.train.predictions import (
    RUN_KEY, CROSSVAL_RUNS_FILE, artifact_stem, make_predictions, read_predictions, save_embeddings,
)
from cxrlib.data.splits import check_split_plan, fold_split, split_groups
from cxrlib.train.training import (
    DEFAULT_RECIPE, TrainingRecipe, default_device, get_recipe, load_images, predict,
    train_classifier,
)
from cxrlib.train.units import (
    FoldSpec, data_hash, inputs_table, make_spec, read_inputs, run_units, write_inputs,
)

__all__ = ["GridEntry", "experiment_grid", "holdout_plan", "cohort_classes", "run_crossval",
           "crossval_specs", "train_fold", "run_train_fraction_sweep", "read_runs",
           "PREDICTIONS_FILE", "CROSSVAL_RUNS_FILE", "ClassifierSetup", "classifier_setup",
           "recipe_for"]

PREDICTIONS_FILE = "predictions.parquet"


@dataclass(frozen=True)
class GridEntry:
    """One (experiment, model, method) cell of the grid; ``view`` is the images it reads and
    ``recipe`` the training recipe whose name is ``method``."""

    experiment: str
    view: str
    model: str
    method: str
    recipe: TrainingRecipe = field(compare=False, repr=False)


def experiment_grid(
    experiments: Sequence[str] | Mapping[str, str],
    models: Sequence[str | tuple[str, str]],
) -> list[GridEntry]:
    """The grid's cells, experiments outermost.

    Parameters
    ----------
    experiments : view names (the experiment is named after its view) or a mapping
        ``{experiment label: view}``.
    models : model names (trained with their default recipe) or ``(model, recipe)`` pairs, the
        recipe a name in :data:`cxrlib.train.training.RECIPES` or a :class:`TrainingRecipe` (its
        ``name`` becomes the ``method``, e.g. ``get_recipe("arias2020").with_overrides(
        name="arias2020-lr1e-3", lr=1e-3)``).
    """
    if isinstance(experiments, str):
        raise TypeError("experiments must be a list of view names or a mapping, not a string")
    pairs = list(experiments.items()) if isinstance(experiments, Mapping) \
        else [(view, view) for view in experiments]
    entries = []
    for label, view in pairs:
        for spec in models:
            model, recipe = (spec, None) if isinstance(spec, str) else tuple(spec)
            if model not in DEFAULT_RECIPE:
                raise ValueError(f"unknown model {model!r}; choose one of {sorted(DEFAULT_RECIPE)}")
            recipe = get_recipe(DEFAULT_RECIPE[model] if recipe is None else recipe)
            artifact_stem(label, model, recipe.name, 0, 0)  # validates the names
            entries.append(GridEntry(label, view, model, recipe.name, recipe))
    if len(set(entries)) != len(entries):
        raise ValueError("the experiment grid lists a cell (experiment, model, method) twice")
    return entries


def holdout_plan(
    manifest: pd.DataFrame,
    test_fraction: float = 0.2,
    seed: int = 0,
    stratify: str = "label",
) -> pd.DataFrame:
    """A hold-out split as a split plan (seed 002: 80/20), grouped by patient.

    Patient groups (see :func:`cxrlib.data.splits.split_groups`) are drawn with scikit-learn's
    ``train_test_split``, stratified by each group's most frequent ``stratify`` value.

    Returns the plan's columns (``image_id``, ``group``, ``repetition`` = 0, ``fold``): fold 0 is
    the test set and fold -1 the training set, which is never a test fold; ``run_crossval`` then
    trains one model, with its validation part drawn from the training set.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    if stratify not in manifest.columns:
        raise ValueError(f"cannot stratify on {stratify!r}: not a manifest column")
    groups = split_groups(manifest).to_numpy()
    group_label = (pd.DataFrame({"group": groups, "y": manifest[stratify].astype(str).to_numpy()})
                   .groupby("group")["y"].agg(lambda s: s.value_counts().index[0]))
    counts = group_label.value_counts()
    stratify_by = group_label.to_numpy() if counts.min() >= 2 else None
    _, test_groups = train_test_split(group_label.index.to_numpy(), test_size=test_fraction,
                                      random_state=seed, stratify=stratify_by)
    return pd.DataFrame({
        "image_id": manifest["image_id"].to_numpy(),
        "group": groups,
        "repetition": 0,
        "fold": np.where(np.isin(groups, test_groups), 0, -1),
    })


def cohort_classes(manifest: pd.DataFrame) -> list[str]:
    """The labels present in the manifest, in the schema's order (the ``p_*`` column order)."""
    present = set(manifest["label"].astype(str))
    unknown = present - set(LABELS)
    if unknown:
        raise ValueError(f"manifest labels {sorted(unknown)} are not among {list(LABELS)}")
    classes = [c for c in LABELS if c in present]
    if len(classes) < 2:
        raise ValueError(f"a classifier needs at least two classes; the manifest has {classes}")
    return classes


def read_runs(artifacts_dir: str | Path) -> pd.DataFrame:
    """The ``crossval_runs.csv`` table (empty if no fold has been trained)."""
    path = Path(artifacts_dir) / CROSSVAL_RUNS_FILE
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=list(RUN_KEY))


def _resolve(path, data_root) -> Path:
    path = Path(path)
    if path.is_absolute():
        return path
    if data_root is None:
        raise ValueError(f"image path {str(path)!r} is relative: pass data_root to resolve it")
    return Path(data_root) / path


class _ViewImages:
    """Prepared images of one view, read once and indexed by image id."""

    def __init__(self, paths: pd.Series, image_size: int, progress: bool):
        self.index = pd.Index(paths.index)
        self.array = load_images(list(paths.to_numpy()), image_size, progress=progress)

    def take(self, image_ids: np.ndarray) -> np.ndarray:
        return self.array[self.index.get_indexer(image_ids)]


def run_crossval(
    images: pd.DataFrame,
    manifest: pd.DataFrame,
    plan: pd.DataFrame,
    artifacts_dir: str | Path,
    experiments: Sequence[str] | Mapping[str, str] = ("exp1",),
    models: Sequence[str | tuple[str, str]] = ("covidnet",),
    repetitions: Sequence[int] | None = None,
    folds: Sequence[int] | None = None,
    image_size: int = 224,
    width: float = 1.0,
    epochs: int | None = None,
    batch_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    data_root: str | Path | None = None,
    save_embeddings_too: bool = True,
    save_checkpoints: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
    executor=None,
    gpu: DeviceSettings | None = None,
) -> pd.DataFrame:
    """Train and test every cell of the grid on every fold of the plan; skip folds already done.

    Parameters
    ----------
    images : one row per (image, view): ``image_id``, ``view``, ``path`` - what
        :func:`cxrlib.artifacts.read_views` returns (absolute paths); relative paths are
        resolved against ``data_root``.
    manifest : validated manifest (true ``label`` of each ``image_id``).
    plan : split plan (``image_id``, ``group``, ``repetition``, ``fold``).
    artifacts_dir : the run folder's ``artifacts/``.
    experiments, models : the grid (see :func:`experiment_grid`).
    repetitions, folds : subsets to run (default: all in the plan; folds < 0 are never test folds).
    image_size : network input side in pixels (``profile.image_size``).
    width : channel multiplier (``profile.width``) for the models that have one
        (``covidnet``, ``vgg16`` without ImageNet weights); the others keep their widths.
    epochs, batch_size : override the recipe's (``profile.epochs``, ``profile.batch_size``);
        None keeps the paper's.
    val_fraction : share of the training patients held out for model selection (seed 000: 10%).
    seed : the run's seed; fold f of repetition r trains with ``seed + 100 * r + f``.
    data_root : folder that relative ``path`` values are relative to (needed only for those).
    save_embeddings_too, save_checkpoints : write those artifacts.
    device : default CUDA when available, else CPU.
    progress : a progress bar over the folds (fastai's own bars stay off; its logs go to CSV).
    executor : where the folds train (:func:`cxrlib.train.executors.get_executor`: ``"inline"``,
        ``"local"``, an executor, or None for the default: ``CXR_EXECUTOR``, else ``inline``
        on a machine with fewer than two GPUs).
    gpu : mixed precision, channels-last memory, loader workers and cuDNN's autotuner of the
        trainings (:class:`cxrlib.gpu.DeviceSettings`, e.g. ``classifier_setup(profile).gpu``;
        None: all off). Mixed precision, loader workers and augmentation on the device, when
        on, are settings of the folds.

    Each fold is a unit of work (:mod:`cxrlib.train.units`): it leaves a shard, merged into the
    predictions table and ``crossval_runs.csv`` by this process only. A fold counts as done when
    its rows carry the same settings hash; folds of a cell made with other settings (seed,
    epochs, image size, width, recipe, split plan...) make the call fail
    (:class:`cxrlib.train.units.UnitSettingsConflict`, naming the differences).

    Returns
    -------
    The rows of the predictions table that belong to the grid (done now or before), with the
    ``settings_hash`` of each row.
    """
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    specs = crossval_specs(images, manifest, plan, artifacts_dir, experiments, models,
                           repetitions, folds, image_size, width, epochs, batch_size,
                           val_fraction, seed, data_root, save_embeddings_too, save_checkpoints,
                           device, progress, gpu=gpu)
    run_units(specs, artifacts_dir, executor=executor, progress=progress,
              desc="cross-validation")
    predictions_path = artifacts_dir / PREDICTIONS_FILE
    table = read_predictions(predictions_path) if predictions_path.is_file() else None
    if table is None:
        return pd.DataFrame()
    wanted = {(s.experiment, s.model, s.method, s.repetition, s.fold) for s in specs}
    in_grid = [tuple(r) in wanted for r in table[list(RUN_KEY)].itertuples(index=False, name=None)]
    return table[np.asarray(in_grid, dtype=bool)].reset_index(drop=True)


def crossval_specs(
    images: pd.DataFrame,
    manifest: pd.DataFrame,
    plan: pd.DataFrame,
    artifacts_dir: str | Path,
    experiments: Sequence[str] | Mapping[str, str] = ("exp1",),
    models: Sequence[str | tuple[str, str]] = ("covidnet",),
    repetitions: Sequence[int] | None = None,
    folds: Sequence[int] | None = None,
    image_size: int = 224,
    width: float = 1.0,
    epochs: int | None = None,
    batch_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    data_root: str | Path | None = None,
    save_embeddings_too: bool = True,
    save_checkpoints: bool = True,
    device: str | torch.device | None = None,
    progress: bool = False,
    gpu: DeviceSettings | None = None,
) -> list[FoldSpec]:
    """The units of :func:`run_crossval` (same parameters), one per (cell, repetition, fold),
    experiments outermost; writes their inputs tables under ``artifacts/shards/inputs/``."""
    artifacts_dir = Path(artifacts_dir)
    for col in ("image_id", "view", "path"):
        if col not in images.columns:
            raise ValueError(f"images table lacks column '{col}' (expected build_views' output)")
    check_split_plan(plan)
    grid = experiment_grid(experiments, models)
    classes = cohort_classes(manifest)
    label_of = manifest.drop_duplicates("image_id").set_index("image_id")["label"].astype(str)
    not_in_manifest = ~plan["image_id"].isin(label_of.index)
    if not_in_manifest.any():
        raise ValueError(f"split plan image {plan['image_id'][not_in_manifest].iloc[0]!r} is not "
                         "in the manifest")
    known_views = set(images["view"])
    for entry in grid:
        if entry.view not in known_views:
            raise ValueError(f"experiment {entry.experiment!r} needs view {entry.view!r}, which "
                             f"the images table lacks (it has {sorted(known_views)})")
    repetitions = sorted(plan["repetition"].unique()) if repetitions is None else list(repetitions)
    overrides = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size)) if v is not None}
    gpu = OFF if gpu is None else gpu
    inputs: dict[str, tuple[Path, str]] = {}
    specs = []
    for entry in grid:
        if entry.view not in inputs:
            rows = images[images["view"] == entry.view].drop_duplicates("image_id")
            paths = rows.set_index("image_id")["path"].map(lambda p: str(_resolve(p, data_root)))
            table = inputs_table(plan, label_of, paths)
            inputs[entry.view] = (write_inputs(artifacts_dir, table), data_hash(table))
        inputs_path, data = inputs[entry.view]
        recipe = entry.recipe.with_overrides(**overrides)
        model_width = float(width) if entry.model in WIDTH_SCALABLE and recipe.weights is None \
            else 1.0
        settings = {
            "unit": "classifier", "view": entry.view, "model": entry.model,
            "recipe": {k: v for k, v in recipe.as_dict().items() if k != "source"},
            "image_size": int(image_size), "width": model_width,
            "val_fraction": float(val_fraction), "seed": int(seed), "classes": list(classes),
            "inputs": data,
        }
        if gpu.hashed():  # only settings that are on: the CPU profiles' hashes stay as they were
            settings["gpu"] = gpu.hashed()
        config = {"view": entry.view, "recipe": recipe, "image_size": int(image_size),
                  "width": model_width, "val_fraction": float(val_fraction), "seed": int(seed),
                  "classes": list(classes)}
        for rep in repetitions:
            in_plan = plan.loc[plan["repetition"] == rep, "fold"].unique()
            rep_folds = sorted(int(f) for f in in_plan if f >= 0)
            if not rep_folds:
                raise ValueError(f"repetition {rep} is not in the split plan")
            for fold in (rep_folds if folds is None else list(folds)):
                specs.append(make_spec(
                    "classifier", entry.experiment, entry.model, entry.method, int(rep),
                    int(fold), artifacts_dir, inputs_path, settings,
                    row_cells=[(entry.experiment, entry.model, entry.method)], config=config,
                    save_embeddings=bool(save_embeddings_too),
                    save_checkpoints=bool(save_checkpoints),
                    device=None if device is None else str(device), progress=bool(progress),
                    gpu=gpu))
    return specs


#: The last view's images read by :func:`train_fold` in this process: (inputs path, size) ->
#: images. Consecutive folds of one view (the grid's order) read them once.
_VIEW_CACHE: dict[tuple[str, int], "_ViewImages"] = {}


def _view_images(spec: FoldSpec, paths: pd.Series, image_size: int) -> "_ViewImages":
    key = (spec.inputs, image_size)
    if key not in _VIEW_CACHE:
        _VIEW_CACHE.clear()
        _VIEW_CACHE[key] = _ViewImages(paths, image_size, spec.progress)
    return _VIEW_CACHE[key]


def train_fold(spec: FoldSpec) -> tuple[pd.DataFrame, dict, str, tuple]:
    """Train, select and test one classifier fold (a unit of :func:`crossval_specs`); write its
    log, embeddings and checkpoint. Returns (its predictions rows, its ``crossval_runs.csv``
    row, that file's name, its key) for :func:`cxrlib.train.units.run_unit` to write as a shard."""
    cfg = spec.config
    rep, fold = spec.repetition, spec.fold
    artifacts_dir = Path(spec.artifacts_dir)
    inputs = read_inputs(spec.inputs)
    plan = inputs[["image_id", "group", "repetition", "fold"]]
    label_of = inputs.drop_duplicates("image_id").set_index("image_id")["label"]
    with_view = inputs.dropna(subset=["path"]).drop_duplicates("image_id")
    view = _view_images(spec, with_view.set_index("image_id")["path"], cfg["image_size"])
    classes, image_size = cfg["classes"], cfg["image_size"]
    device = default_device(spec.device)

    split = fold_split(plan, rep, fold, val_fraction=cfg["val_fraction"], seed=cfg["seed"])
    missing = {name: int((~np.isin(ids, view.index)).sum()) for name, ids in split.items()}
    if any(missing.values()):
        warnings.warn(f"{spec.experiment} r{rep} f{fold}: images without view {cfg['view']!r} "
                      f"are left out ({missing})", UserWarning, stacklevel=2)
    split = {name: ids[np.isin(ids, view.index)] for name, ids in split.items()}
    if not len(split["valid"]):
        raise ValueError(f"{spec.experiment} r{rep} f{fold}: no validation images; model "
                         "selection needs val_fraction > 0")
    class_index = {c: i for i, c in enumerate(classes)}
    y = {name: np.array([class_index[label_of[i]] for i in ids], dtype=np.int64)
         for name, ids in split.items()}

    recipe = cfg["recipe"]
    model_width = cfg["width"]
    unit_seed = cfg["seed"] + 100 * rep + fold
    torch.manual_seed(unit_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the fallback is recorded in init_description
        model = build_classifier(spec.model, len(classes), image_size=image_size,
                                 width=model_width, weights=recipe.weights,
                                 freeze_trunk=recipe.freeze_trunk,
                                 hidden_units=recipe.hidden_units)
    stem = spec.stem
    log_path = artifacts_dir / "logs" / f"{stem}.csv"
    fit = train_classifier(model, view.take(split["train"]), y["train"], view.take(split["valid"]),
                           y["valid"], recipe, classes, log_path=log_path, seed=unit_seed,
                           device=device, progress=False, gpu=spec.gpu)

    names = ("train", "valid", "test") if spec.save_embeddings else ("test",)
    order = np.concatenate([split[n] for n in names])
    probabilities, embeddings = predict(fit.model, view.take(order), device=device)
    if spec.save_embeddings:
        save_embeddings(artifacts_dir / "embeddings" / f"{stem}.npz", order,
                        np.repeat(names, [len(split[n]) for n in names]), embeddings,
                        [label_of[i] for i in order])
    if spec.save_checkpoints:
        save_classifier(fit.model, artifacts_dir / "checkpoints" / f"{stem}.pth", classes,
                        extra={"experiment": spec.experiment, "view": cfg["view"],
                               "method": spec.method, "repetition": rep, "fold": fold,
                               "recipe": recipe.as_dict(), "best_epoch": fit.best_epoch})
    n_test = len(split["test"])
    rows = make_predictions(order[-n_test:], [label_of[i] for i in order[-n_test:]],
                            probabilities[-n_test:], classes, experiment=spec.experiment,
                            model=spec.model, method=spec.method, repetition=rep, fold=fold)
    run = {
        "experiment": spec.experiment, "model": spec.model, "method": spec.method,
        "repetition": rep, "fold": fold, "view": cfg["view"], "image_size": image_size,
        "width": model_width, "n_train": len(split["train"]), "n_valid": len(split["valid"]),
        "n_test": n_test, "epochs_run": len(fit.history), "best_epoch": fit.best_epoch,
        "stopped_early": fit.stopped_early, "train_seconds": round(fit.seconds, 2),
        "device": str(device), "precision": fit.precision, "init": model.init_description,
        "log": str(log_path.relative_to(artifacts_dir)), "notes": " | ".join(fit.notes),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return rows, run, CROSSVAL_RUNS_FILE, RUN_KEY


def run_train_fraction_sweep(
    images: pd.DataFrame,
    manifest: pd.DataFrame,
    artifacts_dir: str | Path,
    fractions: Sequence[float] = (0.33, 0.5, 0.66, 0.9),
    view: str = "exp1",
    model: str | tuple[str, str] = "covidnet",
    seed: int = 0,
    **crossval_options,
) -> pd.DataFrame:
    """Seed 003's train-fraction sweep: one hold-out model per share of patients used to train.

    For each fraction f a :func:`holdout_plan` with ``test_fraction = 1 - f`` is written to
    ``artifacts/split_plan_train<pct>.csv`` and trained as experiment ``<view>@train<pct>``
    (pct = round(100 f)); :func:`cxrlib.analysis.metrics.auc_by_train_fraction` reads the result.
    ``crossval_options`` go to :func:`run_crossval` (image_size, width, epochs...).

    Returns the sweep's rows of the predictions table.
    """
    artifacts_dir = Path(artifacts_dir)
    tables = []
    for fraction in fractions:
        if not 0 < fraction < 1:
            raise ValueError(f"train fractions must be between 0 and 1, got {fraction}")
        pct = int(round(100 * fraction))
        plan = holdout_plan(manifest, test_fraction=1 - fraction, seed=seed)
        artifacts_dir.mkdir(parents=True, exist_ok=True)
        plan.to_csv(artifacts_dir / f"split_plan_train{pct}.csv", index=False)
        tables.append(run_crossval(images, manifest, plan, artifacts_dir,
                                   experiments={f"{view}@train{pct}": view}, models=[model],
                                   seed=seed, **crossval_options))
    return pd.concat(tables, ignore_index=True)


@dataclass(frozen=True)
class ClassifierSetup:
    """How notebook 03 trains at one profile.

    Attributes ----------
    covidnet : (model, recipe) of seed 001's COVID-Net variant.
    binary : (model, recipe) of seed 000's binary experiments.
    folds : fold numbers of the split plan to train (the first ``profile.cls_folds``).
    width : channel multiplier of the width-scalable networks.
    overrides : ``epochs`` / ``batch_size`` for :func:`cxrlib.train.crossval.run_crossval` (empty
        with ``profile.paper_schedules``, where every recipe keeps its paper's values).
    gpu : how the trainings use a CUDA device (:class:`cxrlib.gpu.DeviceSettings` of the
        profile; ``run_crossval(..., gpu=setup.gpu)``); default all off.
    """

    covidnet: tuple[str, TrainingRecipe]
    binary: tuple[str, TrainingRecipe]
    folds: list[int]
    width: float
    overrides: dict
    gpu: DeviceSettings = OFF


def classifier_setup(profile: Profile) -> ClassifierSetup:
    """The :class:`ClassifierSetup` of ``profile`` (its ``cls_*`` fields)."""
    if profile.cls_folds < 1:
        raise ValueError(f"profile {profile.name!r}: cls_folds must be >= 1, "
                         f"got {profile.cls_folds}")
    covid_recipe = get_recipe(profile.cls_recipe)
    binary_model = profile.cls_binary_model
    overrides = {} if profile.paper_schedules else \
        {"epochs": profile.epochs, "batch_size": profile.batch_size}
    return ClassifierSetup(
        covidnet=("covidnet", covid_recipe),
        binary=(binary_model, recipe_for(binary_model, covid_recipe)),
        folds=list(range(min(profile.cls_folds, profile.folds))), width=profile.cls_width,
        overrides=overrides, gpu=DeviceSettings.from_profile(profile))


def recipe_for(model: str, covidnet_recipe: TrainingRecipe) -> TrainingRecipe:
    """The recipe a model of the binary experiments trains with: COVID-Net keeps the profile's
    COVID-Net recipe (``covidnet_recipe``), any other network its paper's
    (:data:`cxrlib.train.training.DEFAULT_RECIPE`)."""
    return covidnet_recipe if model == "covidnet" else get_recipe(DEFAULT_RECIPE[model])
