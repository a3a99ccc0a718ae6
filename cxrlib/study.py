"""What a notebook opens first: the profile, the validated manifest and the run folder.

Every notebook starts with the same parameters cell (papermill injects the values)::

    profile = "smoke"      # smoke | default | paper
    cohort = "arias"       # synthetic cohort used when `manifest` is empty: arias
                           # | arias-noshortcut | covidgr
    manifest = ""          # manifest CSV of a real corpus (empty: the synthetic cohort)
    run_dir = ""           # run folder of this cohort
                           # (empty: reports/interactive/<profile>/<cohort>)
    seed = 0               # one seed for everything random
    interactive = False    # show the ipywidgets browsers
    profile_overrides = {} # profile fields changed for this run (-p profile.FIELD=VALUE)

and then calls ``study = open_study(profile, cohort, manifest, run_dir, seed,
profile_overrides=profile_overrides)``. When ``run_dir`` lies in a run folder of the runner
(its parent holds ``study.json``, :mod:`cxrlib.run_folder`), the profile, the seed and the
cohort's manifest must be the folder's: a notebook run by hand cannot mix its tables into a run
of other settings.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxrlib.data.manifest import data_root_of, load_manifest
from cxrlib.paths import REPORTS_DIR
from cxrlib.profiles import Profile, get_profile
from cxrlib.run_folder import RunFolder, RunFolderConflict, manifest_hash, read_run_claim


@dataclass(frozen=True)
class Study:
    """One cohort of one run, as a notebook sees it.

    Attributes
    ----------
    profile : the scale parameters.
    cohort : the cohort's name (a synthetic cohort of :data:`cxrlib.data.synthetic.COHORTS`, or the
        manifest's file stem).
    preset : the synthetic preset (``arias`` or ``covidgr``) or ``None`` for a real corpus.
    manifest : the validated manifest; ``manifest.attrs['data_root']`` is the image root.
    manifest_path : the CSV it was read from.
    run : the run folder (tables, figures, artifacts).
    seed : the run's seed.
    """

    profile: Profile
    cohort: str
    preset: str | None
    manifest: pd.DataFrame
    manifest_path: Path
    run: RunFolder
    seed: int

    @property
    def data_root(self) -> Path:
        return data_root_of(self.manifest)

    @property
    def classes(self) -> list[str]:
        """The labels present in the cohort, in the schema's order."""
        from cxrlib.data.manifest import LABELS

        present = set(self.manifest["label"])
        return [c for c in LABELS if c in present]

    @property
    def shortcut(self) -> float | None:
        """The synthetic shortcut knob of the cohort (``synth_shortcut``), None when it has none
        or more than one."""
        if "synth_shortcut" not in self.manifest.columns:
            return None
        knobs = self.manifest["synth_shortcut"].dropna().unique()
        return float(knobs[0]) if len(knobs) == 1 else None

    def stamp(self) -> dict:
        """What identifies this cohort's run for a comparison with another run folder: cohort,
        preset, shortcut knob, profile and seed (written to ``artifacts/study.json``)."""
        from cxrlib.profiles import PROFILES

        base = PROFILES.get(self.profile.name)
        changed = {k: v for k, v in self.profile.as_dict().items()
                   if base is None or getattr(base, k) != v}
        return {"cohort": self.cohort, "preset": self.preset, "shortcut": self.shortcut,
                "profile": self.profile.name, "seed": self.seed,
                "profile_overrides": json.loads(json.dumps(changed))}


def open_study(
    profile: str | Profile = "smoke",
    cohort: str = "arias",
    manifest: str | Path = "",
    run_dir: str | Path = "",
    seed: int = 0,
    shortcut: float | None = None,
    progress: bool = True,
    profile_overrides: dict | None = None,
) -> Study:
    """Resolve a notebook's parameters into a :class:`Study`.

    With an empty ``manifest`` the synthetic cohort ``cohort`` (a name of
    :data:`cxrlib.data.synthetic.COHORTS`: a preset and a shortcut knob) at this profile is used,
    and generated first if it is not cached yet; ``shortcut`` overrides the cohort's knob.
    ``profile_overrides`` changes fields of the profile (checked by
    :func:`cxrlib.profiles.check_overrides`).
    """
    prof = get_profile(profile, profile_overrides)
    if manifest:
        manifest_path = Path(manifest).resolve()
        frame = load_manifest(manifest_path)
        preset = frame.attrs["meta"].get("generator", {}).get("preset")
        name = cohort or manifest_path.stem
    else:
        from cxrlib.data.synthetic import cohort_spec, default_cohort

        preset, knob = cohort_spec(cohort)
        manifest_path = Path(default_cohort(
            preset, prof, seed=seed, shortcut=knob if shortcut is None else shortcut,
            progress=progress))
        frame = load_manifest(manifest_path)
        name = cohort
    root = Path(run_dir) if run_dir else REPORTS_DIR / "interactive" / prof.name / name
    check_run_claim(root, name, prof, int(seed), manifest_path)
    study = Study(
        profile=prof,
        cohort=name,
        preset=preset,
        manifest=frame,
        manifest_path=manifest_path,
        run=RunFolder(root),
        seed=int(seed),
    )
    study.run.artifact(STAMP_FILE).write_text(json.dumps(study.stamp(), indent=1))
    return study


def check_run_claim(cohort_dir: str | Path, cohort: str, profile: Profile, seed: int,
                    manifest_path: str | Path) -> None:
    """Check a cohort's folder against the claim of the run folder it lies in (the parent's
    ``study.json``; nothing to check without one): the same profile fields and seed, and, for
    a cohort the claim lists, a manifest of the same content.

    Raises
    ------
    RunFolderConflict naming the run folder and each difference.
    """
    folder = Path(cohort_dir).resolve().parent
    claim = read_run_claim(folder)
    if claim is None:
        return
    settings = claim["settings"]
    theirs = get_profile(settings["profile"], settings.get("profile_overrides") or {}).as_dict()
    ours = profile.as_dict()
    diff = [f"profile {k}: {theirs[k]!r} in the folder, {ours.get(k)!r} here"
            for k in theirs if theirs[k] != ours.get(k)]
    if settings.get("seed") != seed:
        diff.append(f"seed: {settings.get('seed')!r} in the folder, {seed!r} here")
    known = claim["cohorts"].get(cohort)
    if known and known.get("manifest_hash") != manifest_hash(manifest_path):
        diff.append(f"cohort '{cohort}' manifest: {known.get('manifest')} in the folder, "
                    f"{manifest_path} (other content) here")
    if diff:
        raise RunFolderConflict(
            f"run folder {folder} ({folder / 'study.json'}) belongs to other settings: "
            f"{'; '.join(diff)}. Open the study with the folder's settings, or give another "
            "run_dir")


#: The file in a cohort's ``artifacts/`` that :func:`open_study` writes with :meth:`Study.stamp`.
STAMP_FILE = "study.json"


def shortcut_twin_run(study: Study, twin_run_dir: str | Path = "") -> tuple[Path | None, str]:
    """The run folder of the cohort's shortcut-free twin, for comparisons made by the planted one.

    The twin is ``twin_run_dir`` if given, else the sibling folder of the run named by
    :func:`cxrlib.data.synthetic.shortcut_twin` (``arias`` -> ``arias-noshortcut``). It is returned
    only when this cohort has a planted shortcut (knob > 0) and the twin's ``artifacts/study.json``
    shows a lower knob with the same preset, profile and seed.

    Returns
    -------
    (folder, "") or (None, a clause that says why there is no comparison).
    """
    from cxrlib.data.synthetic import COHORTS, shortcut_twin

    if study.shortcut is None:
        return None, "this cohort has no synthetic shortcut knob, so nothing planted to compare"
    if twin_run_dir:
        folder = Path(twin_run_dir)
    elif study.cohort in COHORTS and shortcut_twin(study.cohort):
        folder = study.run.root.parent / shortcut_twin(study.cohort)
    else:
        return None, (f"cohort `{study.cohort}` has no shortcut twin "
                      "(set `twin_run_dir` to compare with one)")
    if not study.shortcut > 0:
        return None, (f"this cohort has no planted shortcut (knob {study.shortcut:g}); the planted "
                      f"cohort `{folder.name}` reports the comparison")
    stamp_path = folder / "artifacts" / STAMP_FILE
    if not stamp_path.is_file():
        return None, (f"the twin `{folder.name}` has not been run in this run folder yet; run it "
                      "first (`python -m cxrlib run --cohorts arias-noshortcut,arias`)")
    twin, ours = json.loads(stamp_path.read_text()), study.stamp()
    for key in ("preset", "profile", "seed", "profile_overrides"):
        if twin.get(key, {} if key == "profile_overrides" else None) != ours[key]:
            return None, (f"the twin `{folder.name}` was run with {key} {twin.get(key)!r} and this "
                          f"cohort with {ours[key]!r}; rerun it with this run's settings")
    if twin.get("shortcut") is None or not twin["shortcut"] < study.shortcut:
        return None, (f"the twin `{folder.name}` has shortcut knob {twin.get('shortcut')}, not "
                      f"below this cohort's {study.shortcut:g}")
    return folder, ""


def beside_twin(planted: pd.DataFrame, clean: pd.DataFrame, keys: list[str],
                value: str) -> pd.DataFrame:
    """A table of the planted cohort and the same table of its shortcut-free twin, side by side.

    Parameters
    ----------
    planted, clean : the two cohorts' tables (e.g. ``embedding_purity``, ``cv_global``).
    keys : columns that identify a row in both (missing values match missing values).
    value : the column compared.

    Returns
    -------
    DataFrame with ``keys``, ``<value>_planted``, ``<value>_clean`` and ``difference`` (planted
    minus clean), one row per key present in both tables.
    """
    def side(table, name):
        out = table[keys + [value]].copy()
        for key in keys:  # NaN keys (e.g. an empty `within`) would never match in a merge
            column = out[key].astype(object)
            out[key] = column.where(column.notna(), "")
        return out.rename(columns={value: f"{value}_{name}"})
    both = side(planted, "planted").merge(side(clean, "clean"), on=keys, how="inner")
    both["difference"] = both[f"{value}_planted"] - both[f"{value}_clean"]
    return both
