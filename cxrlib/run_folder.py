"""The folder a study run writes into: one cohort's folder as a notebook sees it, and the run
folder's claim as the runner keeps it.

A run folder for one cohort holds ``tables/`` (CSV + Markdown), ``figures/`` (PNG) and
``artifacts/`` (split plan, views, checkpoints, predictions) that later notebooks read. Notebooks
never hand anything to a later notebook except through these files.

One run, one folder: the run folder's ``study.json`` (:data:`STUDY_FILE`) records the settings
it belongs to (profile, profile overrides, seed, notebook parameters, and their hash), and per
cohort the manifest (path and content hash) and each notebook's last state (status, the files
it wrote). A run with other settings, or another manifest for a cohort already there, is
refused (:class:`RunFolderConflict`, naming each difference) unless the folder is first set
aside (:func:`set_aside_folder`, the runner's ``--fresh``). The outputs of a notebook that fails
are moved to ``<cohort>/stale/<notebook>/`` (:func:`set_aside_outputs`), so no table of an
earlier run passes for the new run's.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class RunFolder:
    """Paths of one cohort's run folder, created on first use."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).resolve())
        for sub in ("tables", "figures", "artifacts"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def save_table(self, df: pd.DataFrame, name: str, index: bool = False) -> Path:
        """Write ``tables/<name>.csv`` and ``tables/<name>.md``; return the CSV path."""
        csv = self.tables / f"{name}.csv"
        df.to_csv(csv, index=index)
        (self.tables / f"{name}.md").write_text(df.to_markdown(index=index) + "\n")
        return csv

    def read_table(self, name: str) -> pd.DataFrame:
        """Read ``tables/<name>.csv`` written by this or an earlier notebook."""
        path = self.tables / f"{name}.csv"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: run the notebook that writes table '{name}' first"
            )
        return pd.read_csv(path)

    def save_figure(self, fig, name: str, dpi: int = 110) -> Path:
        """Save a matplotlib figure as ``figures/<name>.png`` and return the path."""
        path = self.figures / f"{name}.png"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        return path

    def artifact(self, name: str) -> Path:
        """Path of ``artifacts/<name>`` (not created)."""
        return self.artifacts / name


def upsert_row(path: str | Path, row: dict, key: Sequence[str]) -> pd.DataFrame:
    """Write ``row`` into the CSV log at ``path``, replacing any line with the same ``key`` values.

    The file is replaced atomically (written next to it, then renamed), so a run interrupted while
    writing leaves the previous log intact. Returns the table as written.
    """
    path = Path(path)
    table = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if len(table):
        same = np.ones(len(table), dtype=bool)
        for name in key:
            same &= table[name].astype(str).to_numpy() == str(row[name])
        table = table[~same]
    table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
    tmp = path.with_name(path.name + ".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)
    return table


# ------------------------------------------------------------------ the run folder's claim
#: The file at the top of a run folder that says what the folder belongs to.
STUDY_FILE = "study.json"
#: A cohort's folder for the outputs of notebooks that failed: ``stale/<notebook stem>/...``.
STALE_DIR = "stale"
#: A cohort's folders whose files are a notebook's outputs.
OUTPUT_DIRS = ("tables", "figures", "artifacts")
_UNSET = object()
_FRESH_HINT = ("give another --out, or --fresh to move the folder's content aside and start it "
               "afresh")


class RunFolderConflict(ValueError):
    """A run, or a notebook, asked to write into a run folder that belongs to other settings
    or holds another manifest for the cohort; the message names each difference."""


def json_hash(value) -> str:
    """SHA-256 (hex) of ``value`` written as canonical JSON (keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def manifest_hash(csv_path: str | Path) -> str:
    """SHA-256 (hex) of a manifest's content: the CSV's bytes, then its sidecar's (which holds
    the data root), whatever folder the files are in."""
    from cxrlib.data.manifest import sidecar_path

    digest = hashlib.sha256(Path(csv_path).read_bytes())
    side = sidecar_path(csv_path)
    digest.update(b"\0" + (side.read_bytes() if side.is_file() else b""))
    return digest.hexdigest()


def run_settings(profile: str, profile_overrides: dict, seed: int, parameters: dict) -> dict:
    """The settings a run folder belongs to, as JSON values: ``profile`` (name),
    ``profile_overrides`` (field -> value), ``seed`` and ``parameters`` (the notebook
    parameters given, name -> value; ``profile.FIELD`` names are left to the overrides)."""
    return json.loads(json.dumps({
        "profile": profile, "profile_overrides": dict(profile_overrides), "seed": int(seed),
        "parameters": {k: v for k, v in parameters.items() if not k.startswith("profile.")},
    }, default=str))


def read_run_claim(folder: str | Path) -> dict | None:
    """The ``study.json`` of a run folder, or None when it has none.

    Raises
    ------
    RunFolderConflict naming the file when it is not a JSON object.
    """
    path = Path(folder) / STUDY_FILE
    if not path.is_file():
        return None
    try:
        claim = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFolderConflict(f"{path}: not valid JSON ({exc}); {_FRESH_HINT}") from None
    if not isinstance(claim, dict) or not isinstance(claim.get("settings"), dict):
        raise RunFolderConflict(f"{path}: not a run folder's study.json (no 'settings'); "
                                f"{_FRESH_HINT}")
    claim.setdefault("cohorts", {})
    return claim


def write_run_claim(folder: str | Path, claim: dict) -> Path:
    """Write ``study.json`` into ``folder`` (atomically: written beside it, then renamed)."""
    path = Path(folder) / STUDY_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(claim, indent=1, default=str), encoding="utf-8")
    tmp.replace(path)
    return path


def _shown(values: dict, name: str) -> str:
    return repr(values[name]) if name in values else "not set"


def settings_differences(old: dict, new: dict) -> list[str]:
    """Each setting that differs between two :func:`run_settings`, as ``"seed: 0 in the
    folder, 1 now"`` (profile overrides as ``profile.FIELD``, parameters by name)."""
    out = [f"{key}: {old.get(key)!r} in the folder, {new.get(key)!r} now"
           for key in ("profile", "seed") if old.get(key) != new.get(key)]
    for group, prefix in (("profile_overrides", "profile."), ("parameters", "")):
        a, b = old.get(group) or {}, new.get(group) or {}
        out += [f"{prefix}{name}: {_shown(a, name)} in the folder, {_shown(b, name)} now"
                for name in sorted(set(a) | set(b))
                if a.get(name, _UNSET) != b.get(name, _UNSET)]
    return out


def _has_content(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def check_run_settings(folder: str | Path, settings: dict) -> dict:
    """The claim (``study.json`` content) a run with ``settings`` (:func:`run_settings`) may
    write into ``folder``: the folder's own, or a new one when the folder is absent or empty.

    Raises
    ------
    RunFolderConflict when the folder's settings differ (each difference named), or when it
    holds files but no ``study.json`` (where they come from is unknown).
    """
    folder = Path(folder)
    claim = read_run_claim(folder)
    if claim is None:
        if _has_content(folder):
            raise RunFolderConflict(
                f"run folder {folder} holds files but no {STUDY_FILE}, so the manifest and "
                f"settings they come from are unknown; {_FRESH_HINT}")
        return {"settings": settings, "settings_hash": json_hash(settings), "cohorts": {}}
    if claim.get("settings_hash") != json_hash(settings):
        diff = settings_differences(claim["settings"], settings) or ["(the settings hash)"]
        raise RunFolderConflict(
            f"run folder {folder} belongs to other settings: {'; '.join(diff)}. Its tables "
            f"would mix two runs; {_FRESH_HINT}")
    return claim


def claim_cohorts(claim: dict, folder: str | Path, manifests: dict[str, str | Path]) -> dict:
    """Add this run's cohorts to ``claim`` (in place, returned): cohort -> manifest CSV.

    A cohort already in the claim must come with a manifest of the same content
    (:func:`manifest_hash`); its notebooks' states are kept.

    Raises
    ------
    RunFolderConflict naming the cohort, both manifests and their hashes.
    """
    for name, csv in manifests.items():
        digest, known = manifest_hash(csv), claim["cohorts"].get(name)
        if known and known.get("manifest_hash") != digest:
            raise RunFolderConflict(
                f"run folder {folder}: cohort '{name}' was run on another manifest: "
                f"{known.get('manifest')} (sha256 {str(known.get('manifest_hash'))[:12]}) in the "
                f"folder, {csv} (sha256 {digest[:12]}) now. Its tables would mix two "
                f"manifests; {_FRESH_HINT}")
        claim["cohorts"][name] = {**(known or {"notebooks": {}}), "manifest": str(csv),
                                  "manifest_hash": digest}
    return claim


def set_aside_folder(folder: str | Path) -> Path | None:
    """Move a run folder's content aside (nothing is deleted): ``folder`` is renamed to
    ``<folder>.replaced-<YYYYmmdd-HHMMSS>`` beside it, and an empty ``folder`` takes its place.

    Returns the folder the content now lies in, or None when ``folder`` was absent or empty.
    """
    folder = Path(folder)
    if not _has_content(folder):
        return None
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    aside, k = folder.with_name(f"{folder.name}.replaced-{stamp}"), 1
    while aside.exists():
        k += 1
        aside = folder.with_name(f"{folder.name}.replaced-{stamp}-{k}")
    folder.rename(aside)
    folder.mkdir()
    return aside


# ------------------------------------------------------------- a notebook's outputs
def output_files(cohort_dir: str | Path) -> dict[str, int]:
    """Relative POSIX path -> modification time (ns) of every file under a cohort's
    ``tables/``, ``figures/`` and ``artifacts/``."""
    cohort_dir = Path(cohort_dir)
    found = {}
    for sub in OUTPUT_DIRS:
        for dirpath, _, names in os.walk(cohort_dir / sub):
            for name in names:
                path = Path(dirpath, name)
                try:
                    found[path.relative_to(cohort_dir).as_posix()] = path.stat().st_mtime_ns
                except OSError:  # a dangling link or a file removed meanwhile
                    continue
    return found


def changed_outputs(cohort_dir: str | Path, before: dict[str, int]) -> list[str]:
    """The output files (:func:`output_files`) added or modified since ``before``, sorted."""
    return sorted(p for p, t in output_files(cohort_dir).items() if before.get(p) != t)


def failed_outputs(notebooks: dict, name: str, written: Iterable[str]
                   ) -> tuple[list[str], list[str]]:
    """The outputs of notebook ``name`` that failed, split by owner.

    Parameters
    ----------
    notebooks : the cohort's notebook entries of the claim (name -> entry with ``outputs``).
    name : the notebook that failed.
    written : the files it wrote before failing (:func:`changed_outputs`).

    Returns
    -------
    (its own files: written now or in its last recorded run, and by no other notebook;
    files other notebooks write too, such as ``tables/flow.csv``), each sorted.
    """
    mine = set(written) | set((notebooks.get(name) or {}).get("outputs", []))
    others = {f for nb, entry in notebooks.items() if nb != name
              for f in entry.get("outputs", [])}
    return sorted(mine - others), sorted(mine & others)


def set_aside_outputs(cohort_dir: str | Path, notebook: str, files: Iterable[str]) -> list[str]:
    """Move a failed notebook's output ``files`` (relative to ``cohort_dir``) to
    ``stale/<notebook>/`` under the same relative paths, replacing what an earlier failure of
    the notebook left there. Returns the files moved (those that still existed)."""
    cohort_dir = Path(cohort_dir)
    target = cohort_dir / STALE_DIR / notebook
    if target.exists():
        shutil.rmtree(target)
    moved = []
    for rel in files:
        source = cohort_dir / rel
        if source.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            source.replace(target / rel)
            moved.append(rel)
    return moved
