"""Where a run comes from: the code, the data, the software and the machine, for ``run.json``.

:func:`collect_provenance` gathers, without any network access:

- ``git``: the commit of the checkout and whether its tracked files were changed (``dirty``);
  ``commit`` None with the reason in ``error`` when the code is not a git checkout or git is
  missing;
- ``manifests``: per cohort the manifest's and its sidecar's path and SHA-256, the hash the run
  folder's ``study.json`` keeps (:func:`cxrlib.run_folder.manifest_hash`), the number of images
  and the images per source;
- ``system``: Python, the operating system, the CPU model and count, and the GPUs with their
  driver when ``torch.cuda`` has any;
- ``packages``: every installed distribution as ``name==version`` (sorted by name).

The runner stores it in :class:`cxrlib.runner.RunRecord`; :mod:`cxrlib.report.compare` explains the
differences between two runs.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from cxrlib.paths import REPO_ROOT


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git(repo: Path, *args: str) -> str:
    res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                         timeout=20)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr.strip()
                           else f"git {' '.join(args)} exited {res.returncode}")
    return res.stdout.strip()


def git_state(repo: str | Path = REPO_ROOT) -> dict:
    """``{"commit": full SHA-1, "dirty": bool}`` of the checkout at ``repo`` (dirty: a tracked
    file differs from the commit; untracked files do not count), or ``{"commit": None, "dirty":
    None, "error": why}`` when it is not a git checkout or git is not installed."""
    try:
        commit = _git(Path(repo), "rev-parse", "HEAD")
        dirty = bool(_git(Path(repo), "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        return {"commit": None, "dirty": None, "error": f"not a git checkout ({exc})"}
    return {"commit": commit, "dirty": dirty}


def manifest_provenance(csv_path: str | Path) -> dict:
    """The manifest's and its sidecar's path and SHA-256, the combined hash of
    :func:`cxrlib.run_folder.manifest_hash`, the number of images and the images per source."""
    import pandas as pd

    from cxrlib.data.manifest import sidecar_path
    from cxrlib.run_folder import manifest_hash

    csv_path = Path(csv_path)
    side = sidecar_path(csv_path)
    out = {"path": str(csv_path), "sha256": file_sha256(csv_path),
           "sidecar": str(side) if side.is_file() else None,
           "sidecar_sha256": file_sha256(side) if side.is_file() else None,
           "manifest_hash": manifest_hash(csv_path)}
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    out["images"] = int(len(table))
    if "source" in table.columns:
        counts = table["source"].value_counts()
        out["images_per_source"] = {str(k): int(counts[k]) for k in sorted(counts.index)}
    return out


def installed_packages() -> list[str]:
    """Every installed distribution as ``name==version``, sorted by name (case-insensitive)."""
    import importlib.metadata as md

    found = {}
    for dist in md.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            found.setdefault(name.lower().replace("_", "-"), f"{name}=={dist.version}")
    return [found[k] for k in sorted(found)]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _gpus() -> list[dict]:
    """The CUDA devices torch sees (name, memory, CUDA version, driver); empty without any."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    driver = None
    if shutil.which("nvidia-smi"):
        try:
            res = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=20)
            driver = res.stdout.strip().splitlines()[0] if res.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError):
            driver = None
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "cuda": torch.version.cuda, "driver": driver})
    return out


def system_info() -> dict:
    """Python, the operating system, the CPU and the GPUs (when ``torch.cuda`` has any)."""
    return {"python": platform.python_version(), "python_implementation":
            platform.python_implementation(), "executable": sys.executable,
            "os": platform.platform(), "machine": platform.machine(), "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(), "gpus": _gpus()}


def collect_provenance(manifests: dict[str, str | Path], repo: str | Path = REPO_ROOT) -> dict:
    """Everything above for a run whose cohorts read ``manifests`` (cohort -> manifest CSV)."""
    return {"git": git_state(repo),
            "manifests": {name: manifest_provenance(csv) for name, csv in manifests.items()},
            "system": system_info(),
            "packages": installed_packages()}
