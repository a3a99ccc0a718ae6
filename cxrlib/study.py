"""What a notebook opens first: the profile, the validated manifest and the run folder.

Every notebook starts with the same parameters cell (papermill injects the values)::

    profile = "smoke"      # smoke | default | paper
    cohort = "arias"       # synthetic cohort used when `manifest` is empty: arias | arias-noshortcut | covidgr
    manifest = ""          # manifest CSV of a real corpus (empty: the synthetic cohort)
    run_dir = ""           # run folder of this cohort (empty: reports/interactive/<profile>/<cohort>)
    seed = 0               # one seed for everything random
    interactive = False    # show the ipywidgets browsers

and then calls ``study = open_study(profile, cohort, manifest, run_dir, seed)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxrlib.manifest import load_manifest
from cxrlib.paths import REPORTS_DIR
from cxrlib.profiles import Profile, get_profile
from cxrlib.run_folder import RunFolder


@dataclass(frozen=True)
class Study:
    """One cohort of one run, as a notebook sees it.

    Attributes
    ----------
    profile : the scale parameters.
    cohort : the cohort's name (a synthetic cohort of :data:`cxrlib.synthetic.COHORTS`, or the
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
        return Path(self.manifest.attrs["data_root"])

    @property
    def classes(self) -> list[str]:
        """The labels present in the cohort, in the schema's order."""
        from cxrlib.manifest import LABELS

        present = set(self.manifest["label"])
        return [c for c in LABELS if c in present]

    def image_path(self, row) -> Path:
        """Absolute path of a manifest row's image."""
        return self.data_root / row["path"]


def open_study(
    profile: str | Profile = "smoke",
    cohort: str = "arias",
    manifest: str | Path = "",
    run_dir: str | Path = "",
    seed: int = 0,
    shortcut: float | None = None,
    progress: bool = True,
) -> Study:
    """Resolve a notebook's parameters into a :class:`Study`.

    With an empty ``manifest`` the synthetic cohort ``cohort`` (a name of
    :data:`cxrlib.synthetic.COHORTS`: a preset and a shortcut knob) at this profile is used, and
    generated first if it is not cached yet; ``shortcut`` overrides the cohort's knob.
    """
    prof = get_profile(profile)
    if manifest:
        manifest_path = Path(manifest).resolve()
        frame = load_manifest(manifest_path)
        preset = frame.attrs["meta"].get("generator", {}).get("preset")
        name = cohort or manifest_path.stem
    else:
        from cxrlib.synthetic import cohort_spec, default_cohort

        preset, knob = cohort_spec(cohort)
        manifest_path = Path(default_cohort(
            preset, prof, seed=seed, shortcut=knob if shortcut is None else shortcut,
            progress=progress))
        frame = load_manifest(manifest_path)
        name = cohort
    root = Path(run_dir) if run_dir else REPORTS_DIR / "interactive" / prof.name / name
    return Study(
        profile=prof,
        cohort=name,
        preset=preset,
        manifest=frame,
        manifest_path=manifest_path,
        run=RunFolder(root),
        seed=int(seed),
    )
