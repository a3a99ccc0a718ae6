"""The evaluation protocol: an experiment grid trained and tested fold by fold.

The grid is (experiment x model) x repetition x fold. An *experiment* is a preprocessed view of
the images (``exp1``, ``exp2``, ``exp3``, ``sdnet``), or a label mapped to a view
(``{"exp1@train50": "exp1"}``); a *model* is a network name trained with a recipe
(:data:`cxrlib.training.DEFAULT_RECIPE` unless named: ``("resnet50", "soares2020")``).

For every fold of the split plan (made once by notebook 00, see :mod:`cxrlib.splits`),
:func:`run_crossval` trains on the training folds minus a validation part, selects the epoch on
that validation part (never on the test fold), predicts the test fold and writes, under
``artifacts_dir``:

- ``predictions.parquet``: the test fold's rows (:mod:`cxrlib.predictions`);
- ``embeddings/<stem>.npz``: penultimate-layer embeddings of the fold's train/valid/test images;
- ``checkpoints/<stem>.pth``: the selected weights (read them with
  :func:`cxrlib.models.classifiers.load_classifier`);
- ``logs/<stem>.csv``: the fastai CSV log, one line per epoch;
- ``crossval_runs.csv``: one line per trained fold (sizes, epochs, time, weights' origin).

The predictions are written last, so a fold counts as done exactly when its rows are in the
table; a second call skips done folds, which makes an interrupted grid restartable.

:func:`holdout_plan` is seed 002's 80/20 hold-out as a plan (fold 0 is the test set, fold -1 the
training set) and :func:`run_train_fraction_sweep` is seed 003's train-fraction sweep.

Typical use (notebook 03)::

    views = pd.read_csv(run.artifact("views.csv"))          # image_id, view, path
    plan = pd.read_csv(run.artifact("split_plan.csv"))
    preds = run_crossval(views, manifest, plan, run.artifacts, experiments=["exp1", "exp2", "exp3"],
                         models=["covidnet"], image_size=P.image_size, width=P.width,
                         epochs=P.epochs, batch_size=P.batch_size, seed=seed)
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
from tqdm.auto import tqdm

from cxrlib.manifest import LABELS
from cxrlib.models.classifiers import WIDTH_SCALABLE, build_classifier, save_classifier
from cxrlib.predictions import (
    RUN_KEY, RUNS_FILE, append_predictions, artifact_stem, completed_runs, make_predictions,
    read_predictions, save_embeddings,
)
from cxrlib.run_folder import upsert_row
from cxrlib.splits import check_split_plan, fold_split, split_groups
from cxrlib.training import (
    DEFAULT_RECIPE, TrainingRecipe, default_device, get_recipe, load_images, predict,
    train_classifier,
)

__all__ = ["GridEntry", "experiment_grid", "holdout_plan", "cohort_classes", "run_crossval",
           "run_train_fraction_sweep", "read_runs", "PREDICTIONS_FILE", "RUNS_FILE"]

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
        recipe a name in :data:`cxrlib.training.RECIPES` or a :class:`TrainingRecipe` (its
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

    Patient groups (see :func:`cxrlib.splits.split_groups`) are drawn with scikit-learn's
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
    path = Path(artifacts_dir) / RUNS_FILE
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=list(RUN_KEY))


def _append_run(artifacts_dir: Path, row: dict) -> None:
    upsert_row(Path(artifacts_dir) / RUNS_FILE, row, RUN_KEY)


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
) -> pd.DataFrame:
    """Train and test every cell of the grid on every fold of the plan; skip folds already done.

    Parameters
    ----------
    images : one row per (image, view): ``image_id``, ``view``, ``path`` - what
        :func:`cxrlib.views.build_views` returns (absolute paths); relative paths are resolved
        against ``data_root``.
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

    Returns
    -------
    The rows of the predictions table that belong to the grid (done now or before).
    """
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    for col in ("image_id", "view", "path"):
        if col not in images.columns:
            raise ValueError(f"images table lacks column '{col}' (expected build_views' output)")
    check_split_plan(plan)
    grid = experiment_grid(experiments, models)
    classes = cohort_classes(manifest)
    label_of = manifest.set_index("image_id")["label"].astype(str)
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
    units = []
    for entry in grid:
        for rep in repetitions:
            in_plan = plan.loc[plan["repetition"] == rep, "fold"].unique()
            rep_folds = sorted(int(f) for f in in_plan if f >= 0)
            if not rep_folds:
                raise ValueError(f"repetition {rep} is not in the split plan")
            for fold in (rep_folds if folds is None else list(folds)):
                units.append((entry, int(rep), int(fold)))

    predictions_path = artifacts_dir / PREDICTIONS_FILE
    existing = read_predictions(predictions_path) if predictions_path.is_file() else None
    done = completed_runs(existing)
    device = default_device(device)
    loaded: dict[str, _ViewImages] = {}

    bar = tqdm(units, desc="cross-validation", disable=not progress)
    for entry, rep, fold in bar:
        key = (entry.experiment, entry.model, entry.method, rep, fold)
        if key in done:
            continue
        bar.set_postfix_str(f"{entry.experiment} {entry.model} r{rep} f{fold}")
        if entry.view not in loaded:
            rows = images[images["view"] == entry.view].drop_duplicates("image_id")
            paths = rows.set_index("image_id")["path"].map(lambda p: _resolve(p, data_root))
            loaded[entry.view] = _ViewImages(paths, image_size, progress)
        view = loaded[entry.view]
        _run_fold(entry, rep, fold, view, plan, label_of, classes, artifacts_dir,
                             image_size, width, epochs, batch_size, val_fraction, seed,
                             save_embeddings_too, save_checkpoints, device)
    bar.close()

    table = read_predictions(predictions_path) if predictions_path.is_file() else None
    if table is None:
        return pd.DataFrame()
    wanted = {(u[0].experiment, u[0].model, u[0].method, u[1], u[2]) for u in units}
    in_grid = [tuple(r) in wanted for r in table[list(RUN_KEY)].itertuples(index=False, name=None)]
    return table[np.asarray(in_grid, dtype=bool)].reset_index(drop=True)


def _run_fold(entry: GridEntry, rep: int, fold: int, view: _ViewImages, plan: pd.DataFrame,
              label_of: pd.Series, classes: list[str], artifacts_dir: Path, image_size: int,
              width: float, epochs: int | None, batch_size: int | None, val_fraction: float,
              seed: int, save_embeddings_too: bool, save_checkpoints: bool,
              device: torch.device) -> pd.DataFrame:
    """Train, select and test one fold; write its artifacts, the predictions last."""
    split = fold_split(plan, rep, fold, val_fraction=val_fraction, seed=seed)
    missing = {name: int((~np.isin(ids, view.index)).sum()) for name, ids in split.items()}
    if any(missing.values()):
        warnings.warn(f"{entry.experiment} r{rep} f{fold}: images without view {entry.view!r} are "
                      f"left out ({missing})", UserWarning, stacklevel=3)
    split = {name: ids[np.isin(ids, view.index)] for name, ids in split.items()}
    if not len(split["valid"]):
        raise ValueError(f"{entry.experiment} r{rep} f{fold}: no validation images; model "
                         "selection needs val_fraction > 0")
    class_index = {c: i for i, c in enumerate(classes)}
    y = {name: np.array([class_index[label_of[i]] for i in ids], dtype=np.int64)
         for name, ids in split.items()}

    recipe = entry.recipe
    overrides = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size)) if v is not None}
    recipe = recipe.with_overrides(**overrides)
    model_width = width if entry.model in WIDTH_SCALABLE and recipe.weights is None else 1.0
    unit_seed = seed + 100 * rep + fold
    torch.manual_seed(unit_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the fallback is recorded in init_description
        model = build_classifier(entry.model, len(classes), image_size=image_size,
                                 width=model_width, weights=recipe.weights,
                                 freeze_trunk=recipe.freeze_trunk,
                                 hidden_units=recipe.hidden_units)
    stem = artifact_stem(entry.experiment, entry.model, entry.method, rep, fold)
    log_path = artifacts_dir / "logs" / f"{stem}.csv"
    fit = train_classifier(model, view.take(split["train"]), y["train"], view.take(split["valid"]),
                           y["valid"], recipe, classes, log_path=log_path, seed=unit_seed,
                           device=device, progress=False)

    names = ("train", "valid", "test") if save_embeddings_too else ("test",)
    order = np.concatenate([split[n] for n in names])
    probabilities, embeddings = predict(fit.model, view.take(order), device=device)
    if save_embeddings_too:
        save_embeddings(artifacts_dir / "embeddings" / f"{stem}.npz", order,
                        np.repeat(names, [len(split[n]) for n in names]), embeddings,
                        [label_of[i] for i in order])
    if save_checkpoints:
        save_classifier(fit.model, artifacts_dir / "checkpoints" / f"{stem}.pth", classes,
                        extra={"experiment": entry.experiment, "view": entry.view,
                               "method": entry.method, "repetition": rep, "fold": fold,
                               "recipe": recipe.as_dict(), "best_epoch": fit.best_epoch})
    n_test = len(split["test"])
    rows = make_predictions(order[-n_test:], [label_of[i] for i in order[-n_test:]],
                            probabilities[-n_test:], classes, experiment=entry.experiment,
                            model=entry.model, method=entry.method, repetition=rep, fold=fold)
    _append_run(artifacts_dir, {
        "experiment": entry.experiment, "model": entry.model, "method": entry.method,
        "repetition": rep, "fold": fold, "view": entry.view, "image_size": image_size,
        "width": model_width, "n_train": len(split["train"]), "n_valid": len(split["valid"]),
        "n_test": n_test, "epochs_run": len(fit.history), "best_epoch": fit.best_epoch,
        "stopped_early": fit.stopped_early, "train_seconds": round(fit.seconds, 2),
        "device": str(device), "init": model.init_description,
        "log": str(log_path.relative_to(artifacts_dir)), "notes": " | ".join(fit.notes),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    return append_predictions(artifacts_dir / PREDICTIONS_FILE, rows)


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
    (pct = round(100 f)); :func:`cxrlib.metrics.auc_by_train_fraction` reads the result.
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
