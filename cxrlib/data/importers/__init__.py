"""Importers: each source's distribution, read as it comes, into one manifest.

``IMPORTERS`` maps a source key to a function ``f(root, options=None, **kwargs) ->
ImportResult``; ``folders`` and ``csv`` also take ``mapping=`` (a dict or a YAML/JSON file).
Every importer's mapping decisions are documented in its module and in
``data_manifests/README.md``. The command line is in :mod:`cxrlib.data.importers.cli`.
"""
from __future__ import annotations

from typing import Callable

from cxrlib.data.importers.actualmed import import_actualmed
from cxrlib.data.importers.bimcv import import_bimcv
from cxrlib.data.importers.chexpert import import_chexpert
from cxrlib.data.importers.cohen import import_cohen
from cxrlib.data.importers.common import ImportOptions, ImportResult, check_source_root
from cxrlib.data.importers.covidgr import import_covidgr
from cxrlib.data.importers.generic import import_csv, import_folders
from cxrlib.data.importers.hm import import_hm
from cxrlib.data.importers.mimic import import_mimic
from cxrlib.data.importers.montgomery import import_montgomery
from cxrlib.data.importers.nih import import_nih
from cxrlib.data.importers.padchest import import_padchest
from cxrlib.data.importers.rsna import import_rsna
from cxrlib.data.importers.shenzhen import import_shenzhen

IMPORTERS: dict[str, Callable[..., ImportResult]] = {
    "bimcv": import_bimcv,
    "hm": import_hm,
    "actualmed": import_actualmed,
    "cohen": import_cohen,
    "covidgr": import_covidgr,
    "nih": import_nih,
    "chexpert": import_chexpert,
    "mimic": import_mimic,
    "padchest": import_padchest,
    "rsna": import_rsna,
    "shenzhen": import_shenzhen,
    "montgomery": import_montgomery,
    "folders": import_folders,
    "csv": import_csv,
}
#: Importers that need ``mapping=`` (``--mapping FILE`` on the command line).
MAPPING_IMPORTERS = ("folders", "csv")


def run_importer(source: str, root, options: ImportOptions | None = None, **kwargs
                 ) -> ImportResult:
    """Run the importer registered as ``source`` on ``root``."""
    try:
        importer = IMPORTERS[source]
    except KeyError:
        raise ValueError(f"unknown source {source!r}; choose one of {sorted(IMPORTERS)}") from None
    check_source_root(root, source)  # a file or a missing path: a clear error, not a traceback
    return importer(root, options, **kwargs)


__all__ = ["IMPORTERS", "MAPPING_IMPORTERS", "ImportOptions", "ImportResult", "run_importer"]
