"""Units of work: one fold training as a frozen, picklable spec that runs anywhere and leaves a
shard, and the one writer that merges shards into the predictions table.

A **unit** is one fold training: a classifier fold of notebooks 03 and 04
(:func:`cxrlib.train.crossval.run_crossval`) or a CiT / COVID-SDNet fold of notebook 02
(:func:`cxrlib.train.cit.run_cit_crossval`). Its :class:`FoldSpec` holds

- its keys: ``kind``, ``experiment``, ``model``, ``method``, ``repetition``, ``fold`` (the file
  stem :func:`cxrlib.train.predictions.artifact_stem` of its log, embeddings and checkpoint);
- its input paths: the run folder's ``artifacts/`` and an *inputs table*
  (``artifacts/shards/inputs/<hash>.parquet``: the split plan's rows in the plan's order, each
  image's true label and its image path for the unit's view);
- its settings: everything that changes the result (view, model, the training recipe after
  overrides, image size, width, validation share, the run's seed, the classes, a hash of the
  inputs table's ids, labels and plan, and, when on, mixed precision, the number of loader
  workers and augmentation on the device of :mod:`cxrlib.gpu`), as canonical JSON, and their
  hash (:func:`settings_hash`, 16 hex digits). Keys (repetition, fold) are not settings: every fold
  of one (experiment, model, method) cell of a run carries the same hash.

:func:`run_unit` runs a spec (in this process or in another, see :mod:`cxrlib.train.executors`) and
writes its own **shard** under ``artifacts/shards/``, after its log, embeddings and checkpoint::

    <stem>.<settings hash>.parquet   the unit's rows of the predictions table (if it has any)
    <stem>.<settings hash>.json      the unit's keys, settings, runs row (crossval_runs.csv or
                                     cit_runs.csv) - written last: the unit is complete when
                                     this file exists

Both are written to a unique temporary name and renamed, so no reader sees half a file and two
processes never write the same file. Only the **merge** (:func:`merge_shards`, run by the driver,
under a lock) writes ``predictions.parquet`` and the runs tables: it merges the pending shards
(replacing rows of the same units), then moves them to ``shards/merged/``. A crash between the
two leaves the shards pending, and the next start merges them again (the merge is idempotent)
without retraining anything.

The predictions table gains a ``settings_hash`` column. A unit counts as done only when its rows
(or, for a unit without rows such as notebook 02's lambda sweep, its merged shard) carry the
same settings hash; a folder holding units of the same (experiment, model, method) made with
other settings is refused (:class:`UnitSettingsConflict`, naming each differing setting, e.g.
``seed: 0 in the folder, 1 now``), since its tables would mix two runs.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from cxrlib.train.predictions import (
    RUN_KEY, artifact_stem, merge_predictions, read_predictions, validate_predictions,
)
from cxrlib.run_folder import RunFolderConflict

__all__ = [
    "FoldSpec", "make_spec", "settings_hash", "settings_differences", "UnitSettingsConflict",
    "inputs_table", "write_inputs", "read_inputs", "run_unit", "write_shard", "read_shard",
    "pending_shards", "merged_shards", "merge_shards", "check_settings", "is_done", "run_units",
    "PREDICTIONS_FILE", "SHARDS_DIR", "MERGED_DIR", "INPUTS_DIR", "HASH_COLUMN",
]

PREDICTIONS_FILE = "predictions.parquet"
#: Folder of ``artifacts/`` where units leave their shards.
SHARDS_DIR = "shards"
#: Subfolder of :data:`SHARDS_DIR` holding the shards already merged.
MERGED_DIR = "merged"
#: Subfolder of :data:`SHARDS_DIR` holding the inputs tables of the units.
INPUTS_DIR = "inputs"
#: Column of the predictions and runs tables with the settings hash of the unit of each row.
HASH_COLUMN = "settings_hash"
_HASH_DIGITS = 16
_LOCK_FILE = ".merge.lock"
_FRESH_HINT = ("give another run folder (--out, or run_dir), or --fresh to move the folder's "
               "content aside and start it afresh")


class UnitSettingsConflict(RunFolderConflict):
    """A folder holds units of a cell (experiment, model, method) made with other settings; the
    message names each differing setting."""


# --------------------------------------------------------------------------------------------
# Settings and their hash


def _canonical(value, sort_keys: bool = True):
    """``value`` as plain JSON values (tuples as lists, numpy scalars as Python ones)."""
    return json.loads(json.dumps(value, sort_keys=sort_keys, default=_json_default))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def _settings_json(settings: dict) -> str:
    return json.dumps(_canonical(settings), sort_keys=True, separators=(",", ":"))


def settings_hash(settings: dict) -> str:
    """The hash (16 hex digits of SHA-256) of a unit's settings written as canonical JSON: it
    changes with every value of ``settings`` and with nothing else."""
    return hashlib.sha256(_settings_json(settings).encode("utf-8")).hexdigest()[:_HASH_DIGITS]


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def settings_differences(old: dict | None, new: dict) -> list[str]:
    """Each setting that differs, as ``"seed: 0 in the folder, 1 now"`` (nested settings as
    ``recipe.epochs``)."""
    if old is None:
        return ["settings unknown (units written without a settings hash, or their shards are "
                "gone)"]
    a, b = _flatten(_canonical(old)), _flatten(_canonical(new))
    missing = object()
    return [f"{_GLOSS.get(name, name)}: {a[name]!r} in the folder, {b[name]!r} now"
            if name in a and name in b
            else f"{_GLOSS.get(name, name)}: {a[name]!r} in the folder, not set now" if name in a
            else f"{_GLOSS.get(name, name)}: not set in the folder, {b[name]!r} now"
            for name in sorted(set(a) | set(b)) if a.get(name, missing) != b.get(name, missing)]


#: How :func:`settings_differences` names the settings whose key alone says little.
_GLOSS = {"inputs": "inputs (hash of the split plan, the labels and which images have the view)"}


# --------------------------------------------------------------------------------------------
# The spec


@dataclass(frozen=True)
class FoldSpec:
    """One fold training, everything a process needs to run it (picklable).

    Attributes
    ----------
    kind : ``"classifier"`` (:func:`cxrlib.train.crossval.train_fold`) or ``"cit"``
        (:func:`cxrlib.train.cit.crossval.cit_fold`).
    experiment, model, method, repetition, fold : the unit's keys; its artifacts' stem is
        ``artifact_stem(experiment, model, method, repetition, fold)``.
    artifacts_dir : the run folder's ``artifacts/`` (absolute).
    inputs : the inputs table (:func:`write_inputs`; absolute).
    settings_json : the settings (canonical JSON); ``settings_hash`` their hash.
    row_cells : the (experiment, model, method) cells whose rows the unit writes into the
        predictions table (empty: the unit writes none, e.g. notebook 02's lambda sweep).
    config : the objects the unit trains with (recipes...), all described by the settings.
    save_embeddings, save_checkpoints, device, progress : options that do not change the
        result (``device`` None: CUDA when available, else the CPU).
    gpu : how the unit uses a CUDA device (:class:`cxrlib.gpu.DeviceSettings`; None: all off).
        Those of its settings that change the result (mixed precision, loader workers,
        augmentation on the device) are in the settings as ``gpu`` when on; channels-last
        memory and cuDNN's autotuner are not, like ``device``.
    """

    kind: str
    experiment: str
    model: str
    method: str
    repetition: int
    fold: int
    artifacts_dir: str
    inputs: str
    settings_json: str
    settings_hash: str
    row_cells: tuple[tuple[str, str, str], ...] = ()
    config: Any = field(default=None, compare=False, repr=False)
    save_embeddings: bool = True
    save_checkpoints: bool = True
    device: str | None = None
    progress: bool = False
    gpu: Any = None

    @property
    def settings(self) -> dict:
        return json.loads(self.settings_json)

    @property
    def stem(self) -> str:
        return artifact_stem(self.experiment, self.model, self.method, self.repetition, self.fold)

    @property
    def cell(self) -> tuple[str, str, str]:
        return (self.experiment, self.model, self.method)

    @property
    def shard_name(self) -> str:
        """``<stem>.<settings hash>``: the shard's file name without suffix."""
        return f"{self.stem}.{self.settings_hash}"

    @property
    def label(self) -> str:
        return f"{self.experiment}/{self.model}/{self.method} r{self.repetition} f{self.fold}"


def make_spec(kind: str, experiment: str, model: str, method: str, repetition: int, fold: int,
              artifacts_dir: str | Path, inputs: str | Path, settings: dict,
              row_cells: Iterable[tuple[str, str, str]] = (), config: Any = None,
              **options) -> FoldSpec:
    """A :class:`FoldSpec` with its settings hashed (``options``: ``save_embeddings``,
    ``save_checkpoints``, ``device``, ``progress``, ``gpu``)."""
    if kind not in _KINDS:
        raise ValueError(f"unknown unit kind {kind!r}; choose one of {sorted(_KINDS)}")
    device = options.pop("device", None)
    spec = FoldSpec(kind=kind, experiment=str(experiment), model=str(model), method=str(method),
                    repetition=int(repetition), fold=int(fold),
                    artifacts_dir=str(Path(artifacts_dir).resolve()),
                    inputs=str(Path(inputs).resolve()), settings_json=_settings_json(settings),
                    settings_hash=settings_hash(settings),
                    row_cells=tuple(tuple(str(v) for v in c) for c in row_cells), config=config,
                    device=None if device is None else str(device), **options)
    spec.stem  # validates the names
    return spec


# --------------------------------------------------------------------------------------------
# Inputs tables


def inputs_table(plan: pd.DataFrame, labels: pd.Series, paths: pd.Series) -> pd.DataFrame:
    """The split plan's rows (``image_id``, ``group``, ``repetition``, ``fold``, in the plan's
    order, which the validation draw depends on) with each image's ``label`` and its ``path``
    for the unit's view (missing where the image has no such view).

    ``labels`` and ``paths`` are indexed by image id.
    """
    out = plan[["image_id", "group", "repetition", "fold"]].copy().reset_index(drop=True)
    ids = out["image_id"].astype(str)
    out["image_id"] = ids.to_numpy(dtype=object)
    out["group"] = out["group"].astype(str).to_numpy(dtype=object)
    out["repetition"] = out["repetition"].astype(np.int64)
    out["fold"] = out["fold"].astype(np.int64)
    labels = pd.Series(labels).astype(str)
    labels.index = labels.index.astype(str)
    missing = ~ids.isin(labels.index)
    if missing.any():
        raise ValueError(f"split plan image {ids[missing].iloc[0]!r} has no label")
    out["label"] = labels.reindex(ids).to_numpy(dtype=object)
    paths = pd.Series(paths)
    paths = pd.Series(paths.astype(str).to_numpy(dtype=object), index=paths.index.astype(str))
    out["path"] = paths.reindex(ids).to_numpy(dtype=object)
    return out


def _text_hash(frame: pd.DataFrame) -> str:
    return hashlib.sha256(frame.to_csv(index=False).encode("utf-8")).hexdigest()


def data_hash(inputs: pd.DataFrame) -> str:
    """Hash of what in an inputs table changes a result: ids, groups, repetitions, folds and
    labels in the plan's order, and which images have the view (not where their files lie)."""
    part = inputs[["image_id", "group", "repetition", "fold", "label"]].astype(str)
    part["has_view"] = inputs["path"].notna().astype(int).to_numpy()
    return _text_hash(part)[:_HASH_DIGITS]


def write_inputs(artifacts_dir: str | Path, inputs: pd.DataFrame) -> Path:
    """Write an inputs table (:func:`inputs_table`) as
    ``artifacts/shards/inputs/<content hash>.parquet`` (once; atomically) and return its path."""
    folder = Path(artifacts_dir) / SHARDS_DIR / INPUTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_text_hash(inputs)[:_HASH_DIGITS]}.parquet"
    if not path.is_file():
        _atomic_write(path, lambda tmp: inputs.to_parquet(tmp, index=False))
    return path


def read_inputs(path: str | Path) -> pd.DataFrame:
    """An inputs table written by :func:`write_inputs`."""
    frame = pd.read_parquet(path)
    for col in ("image_id", "group", "label"):
        frame[col] = frame[col].astype(str).to_numpy(dtype=object)
    frame["path"] = frame["path"].astype(object).where(frame["path"].notna(), None)
    return frame


# --------------------------------------------------------------------------------------------
# Running a unit and its shard


def _classifier_unit(spec):
    from cxrlib.train.crossval import train_fold

    return train_fold(spec)


def _cit_unit(spec):
    from cxrlib.train.cit.crossval import cit_fold

    return cit_fold(spec)


#: kind -> the function that trains a unit: ``spec -> (rows or None, runs row, runs file,
#: runs key)``. The seam for another kind of unit.
_KINDS: dict[str, Callable] = {"classifier": _classifier_unit, "cit": _cit_unit}


def run_unit(spec: FoldSpec) -> Path:
    """Train one unit and write its shard (its other artifacts first); return the shard's
    ``.json`` path. A top-level function, so that any process (or a SLURM job) can run it."""
    rows, runs_row, runs_file, runs_key = _KINDS[spec.kind](spec)
    return write_shard(spec, rows, runs_row, runs_file, runs_key)


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` to a unique temporary file beside ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_shard(spec: FoldSpec, rows: pd.DataFrame | None, runs_row: dict, runs_file: str,
                runs_key: Sequence[str]) -> Path:
    """Write a unit's shard: its predictions rows (``.parquet``, with ``settings_hash``), then
    its description and runs row (``.json``, last). Returns the ``.json`` path."""
    folder = Path(spec.artifacts_dir) / SHARDS_DIR
    n_rows = 0
    if rows is not None and len(rows):
        rows = validate_predictions(rows.assign(**{HASH_COLUMN: spec.settings_hash}),
                                    origin=spec.label)
        n_rows = len(rows)
        _atomic_write(folder / f"{spec.shard_name}.parquet",
                      lambda tmp: rows.to_parquet(tmp, index=False))
    meta = {
        "stem": spec.stem, "kind": spec.kind, "experiment": spec.experiment, "model": spec.model,
        "method": spec.method, "repetition": spec.repetition, "fold": spec.fold,
        "settings_hash": spec.settings_hash, "settings": spec.settings,
        "row_cells": [list(c) for c in spec.row_cells], "rows": n_rows,
        "runs_file": runs_file, "runs_key": list(runs_key),
        "runs_row": _canonical({**runs_row, HASH_COLUMN: spec.settings_hash}, sort_keys=False),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path = folder / f"{spec.shard_name}.json"
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(meta, indent=1),
                                                   encoding="utf-8"))
    return path


def read_shard(path: str | Path) -> dict:
    """A shard's ``.json`` (its description and runs row)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _shards_in(folder: Path) -> list[Path]:
    """The shard descriptions (``<stem>.<16 hex digits>.json``) in ``folder``, by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.json") if _SHARD_NAME.match(p.name))


_SHARD_NAME = re.compile(r"^.+\.[0-9a-f]{%d}\.json$" % _HASH_DIGITS)


def pending_shards(artifacts_dir: str | Path) -> list[Path]:
    """The complete shards (``.json`` present) not merged yet, by name."""
    return _shards_in(Path(artifacts_dir) / SHARDS_DIR)


def merged_shards(artifacts_dir: str | Path) -> list[Path]:
    """The shards merged into the tables, by name."""
    return _shards_in(Path(artifacts_dir) / SHARDS_DIR / MERGED_DIR)


# --------------------------------------------------------------------------------------------
# The one writer


@contextlib.contextmanager
def _merge_lock(artifacts_dir: Path):
    from filelock import FileLock

    folder = artifacts_dir / SHARDS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / _LOCK_FILE)):
        yield


def _write_table(path: Path, table: pd.DataFrame) -> None:
    _atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))


def _write_csv(path: Path, table: pd.DataFrame) -> None:
    _atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def _mark_merged(shards: list[Path]) -> None:
    for js in shards:
        target = js.parent / MERGED_DIR
        target.mkdir(exist_ok=True)
        parquet = js.with_suffix(".parquet")
        if parquet.is_file():
            os.replace(parquet, target / parquet.name)
        os.replace(js, target / js.name)


def _same_keys(table: pd.DataFrame, keys: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Rows of ``table`` whose ``columns`` (compared as text) are among ``keys``' rows."""
    if table.empty or keys.empty or any(c not in table.columns for c in columns):
        return np.zeros(len(table), dtype=bool)
    ours = pd.MultiIndex.from_frame(table[list(columns)].astype(str))
    theirs = pd.MultiIndex.from_frame(keys[list(columns)].astype(str))
    return np.asarray(ours.isin(theirs), dtype=bool)


def merge_shards(artifacts_dir: str | Path) -> list[dict]:
    """Merge the pending shards into ``predictions.parquet`` and the runs tables, then move them
    to ``shards/merged/``; return their descriptions (:func:`read_shard`).

    Each unit's rows replace every row of the same (experiment, model, method, repetition,
    fold); each runs row replaces the line with the same runs key. Only one process merges at a
    time (a lock file), the tables are replaced atomically, and merging the same shards twice
    changes nothing, so a merge a crash left half-done is finished by the next call.
    """
    artifacts_dir = Path(artifacts_dir)
    if not (artifacts_dir / SHARDS_DIR).is_dir():
        return []
    with _merge_lock(artifacts_dir):
        shards = pending_shards(artifacts_dir)
        if not shards:
            return []
        metas = [read_shard(p) for p in shards]
        parts = [pd.read_parquet(p.with_suffix(".parquet")) for p, m in zip(shards, metas)
                 if m["rows"]]
        if parts:
            new = validate_predictions(pd.concat(parts, ignore_index=True), origin="shards")
            path = artifacts_dir / PREDICTIONS_FILE
            existing = read_predictions(path) if path.is_file() else None
            if existing is not None:
                existing = existing[~_same_keys(existing, new.drop_duplicates(list(RUN_KEY)),
                                                RUN_KEY)]
            merged = merge_predictions(existing, new)  # in key order, however it was batched
            merged = merged.sort_values(list(RUN_KEY) + ["image_id"], kind="stable")
            _write_table(path, merged.reset_index(drop=True))
        by_file: dict[tuple[str, tuple], list[dict]] = {}
        for meta in metas:
            by_file.setdefault((meta["runs_file"], tuple(meta["runs_key"])), []).append(
                meta["runs_row"])
        for (name, key), rows in by_file.items():
            path = artifacts_dir / name
            new = pd.DataFrame(rows).drop_duplicates(list(key), keep="last")
            old = pd.read_csv(path) if path.is_file() else pd.DataFrame()
            old = old[~_same_keys(old, new, key)]
            _write_csv(path, pd.concat([old, new], ignore_index=True) if len(old) else new)
        _mark_merged(shards)
    return metas


# --------------------------------------------------------------------------------------------
# Done units and other settings


def _read_table(artifacts_dir: Path) -> pd.DataFrame | None:
    path = artifacts_dir / PREDICTIONS_FILE
    return read_predictions(path) if path.is_file() else None


def _known_settings(artifacts_dir: Path) -> tuple[dict[str, dict], list[dict]]:
    """(settings hash -> settings, descriptions of every shard) of a folder's shards."""
    if not (artifacts_dir / SHARDS_DIR).is_dir():
        return {}, []
    with _merge_lock(artifacts_dir):  # no merge moves a shard while they are read
        metas = [read_shard(p) for p in pending_shards(artifacts_dir)
                 + merged_shards(artifacts_dir)]
    return {m["settings_hash"]: m["settings"] for m in metas}, metas


def check_settings(specs: Sequence[FoldSpec], artifacts_dir: str | Path,
                   table: pd.DataFrame | None = None) -> None:
    """Refuse to run ``specs`` into a folder that holds units of one of their cells made with
    other settings: rows of the predictions table of a cell a spec writes, or shards of a
    spec's own cell, with another (or no) settings hash.

    Raises
    ------
    UnitSettingsConflict naming the folder, the cell and each differing setting.
    """
    artifacts_dir = Path(artifacts_dir)
    known, metas = _known_settings(artifacts_dir)
    table = _read_table(artifacts_dir) if table is None else table
    wanted: dict[tuple, FoldSpec] = {}
    for spec in specs:
        for cell in spec.row_cells:
            wanted.setdefault(("rows",) + tuple(cell), spec)
        wanted.setdefault(("unit",) + spec.cell, spec)
    found: dict[tuple, set] = {}
    if table is not None and len(table):
        hashes = (table[HASH_COLUMN].astype(object).where(table[HASH_COLUMN].notna(), None)
                  if HASH_COLUMN in table.columns else pd.Series([None] * len(table)))
        cells = pd.DataFrame({"experiment": table["experiment"], "model": table["model"],
                              "method": table["method"], "hash": hashes.to_numpy()})
        for (e, m, me), group in cells.groupby(["experiment", "model", "method"], sort=False,
                                               dropna=False):
            found[("rows", e, m, me)] = set(group["hash"])
    for meta in metas:
        found.setdefault(("unit", meta["experiment"], meta["model"], meta["method"]),
                         set()).add(meta["settings_hash"])
    for key, spec in wanted.items():
        other = sorted((h for h in found.get(key, ()) if h != spec.settings_hash),
                       key=lambda h: (h is None, str(h)))
        if not other:
            continue
        theirs = other[0]
        diff = settings_differences(known.get(theirs), spec.settings) \
            or [f"(settings hash {theirs} in the folder, {spec.settings_hash} now)"]
        what = "rows of the predictions table" if key[0] == "rows" else "fold trainings"
        raise UnitSettingsConflict(
            f"{artifacts_dir} holds {what} of {'/'.join(key[1:])} made with other settings: "
            f"{'; '.join(diff)}. A fold counts as done only with the same settings, and the "
            f"tables would mix two runs; {_FRESH_HINT}")


def is_done(spec: FoldSpec, table: pd.DataFrame | None, merged: set[str]) -> bool:
    """Whether a unit is done: every cell it writes has rows for its repetition and fold, all
    with its settings hash; for a unit that writes no rows, its shard is merged (``merged``:
    the merged shards' names without suffix)."""
    if not spec.row_cells:
        return spec.shard_name in merged
    if table is None or table.empty or HASH_COLUMN not in table.columns:
        return False
    for experiment, model, method in spec.row_cells:
        rows = table[(table["experiment"] == experiment) & (table["model"] == model)
                     & (table["method"] == method) & (table["repetition"] == spec.repetition)
                     & (table["fold"] == spec.fold)]
        if rows.empty or not (rows[HASH_COLUMN].astype(str) == spec.settings_hash).all():
            return False
    return True


def run_units(specs: Sequence[FoldSpec], artifacts_dir: str | Path, executor=None,
              progress: bool = False, desc: str = "units") -> list[dict]:
    """The driver: finish a merge a crash left half-done, refuse other settings
    (:func:`check_settings`), run the units not done with ``executor``
    (:func:`cxrlib.train.executors.get_executor`: a name, an executor or None for the default) and
    merge each shard as it arrives. Returns the shard descriptions of the units run now, in the
    order of ``specs``."""
    from tqdm.auto import tqdm

    from cxrlib.train.executors import get_executor

    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    merge_shards(artifacts_dir)
    table = _read_table(artifacts_dir)
    check_settings(specs, artifacts_dir, table)
    merged = {p.stem for p in merged_shards(artifacts_dir)}
    todo, seen = [], set()
    for spec in specs:
        if spec.shard_name not in seen and not is_done(spec, table, merged):
            todo.append(spec)
            seen.add(spec.shard_name)
    if not todo:
        return []
    done: dict[str, dict] = {}
    bar = tqdm(total=len(todo), desc=desc, disable=not progress)

    def on_done(spec: FoldSpec, shard: Path) -> None:
        for meta in merge_shards(artifacts_dir):
            done[f"{meta['stem']}.{meta['settings_hash']}"] = meta
        bar.set_postfix_str(spec.label)
        bar.update()

    try:
        get_executor(executor).run(todo, on_done)
    finally:
        bar.close()
    out = []
    for spec in todo:  # another driver's merge may have taken a shard: read it where it went
        path = artifacts_dir / SHARDS_DIR / MERGED_DIR / f"{spec.shard_name}.json"
        meta = done.get(spec.shard_name) or (read_shard(path) if path.is_file() else None)
        if meta is not None:
            out.append(meta)
    return out
