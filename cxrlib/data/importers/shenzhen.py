"""Shenzhen (China set, NLM tuberculosis set): ``CXR_png/CHNCXR_NNNN_{0,1}.png`` and
``ClinicalReadings/*.txt``. Mapping: see :mod:`cxrlib.data.importers.nlm_tb`; sensor DX (Philips
DX Digital Diagnose, per the source paper)."""
from __future__ import annotations

from pathlib import Path

from cxrlib.data.importers.common import ImportOptions, ImportResult
from cxrlib.data.importers.nlm_tb import import_nlm_tb

SOURCE = "shenzhen"


def import_shenzhen(root: str | Path, options: ImportOptions | None = None) -> ImportResult:
    """Import the Shenzhen set from ``root``."""
    return import_nlm_tb(root, options, SOURCE, sensor="DX", with_masks=False)
