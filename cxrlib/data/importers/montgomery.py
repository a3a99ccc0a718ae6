"""Montgomery (NLM tuberculosis set): ``CXR_png/MCUCXR_NNNN_{0,1}.png``,
``ClinicalReadings/*.txt`` and ``ManualMask/{leftMask,rightMask}/*.png``. Mapping: see
:mod:`cxrlib.data.importers.nlm_tb`; sensor CR (Eureka stationary machine, per the source paper);
the left and right lung masks are joined into one 0/255 mask in the cache
(``lung_mask_path``)."""
from __future__ import annotations

from pathlib import Path

from cxrlib.data.importers.common import ImportOptions, ImportResult
from cxrlib.data.importers.nlm_tb import import_nlm_tb

SOURCE = "montgomery"


def import_montgomery(root: str | Path, options: ImportOptions | None = None) -> ImportResult:
    """Import the Montgomery set from ``root``."""
    return import_nlm_tb(root, options, SOURCE, sensor="CR", with_masks=True)
