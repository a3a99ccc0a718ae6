"""Where things live, resolved from the repository root, never from the working directory."""
from __future__ import annotations

import os
from pathlib import Path

#: The repository root (the folder that holds ``cxrlib/``).
REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
REPORTS_DIR = REPO_ROOT / "reports"
MANIFESTS_DIR = REPO_ROOT / "data_manifests"


def data_dir() -> Path:
    """Folder for generated data (synthetic cohorts, caches): ``$CXR_DATA_DIR`` or ``<repo>/data``.

    It is ignored by git; delete it to start afresh.
    """
    return Path(os.environ.get("CXR_DATA_DIR", REPO_ROOT / "data")).resolve()
