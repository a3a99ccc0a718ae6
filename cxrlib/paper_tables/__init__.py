"""The source papers' published numbers, shipped as CSV so that users without ../shared have them.

``load("arias2020_table2_corpus")`` returns the table as printed (see README.md in this folder).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent

#: The study's experiments of seed 001 and their names in its tables (``experiment`` column).
ARIAS_EXPERIMENT = {"exp1": "exp1_raw", "exp2": "exp2_cropped", "exp3": "exp3_segmented"}


def available() -> list[str]:
    """Names of the shipped tables."""
    return sorted(p.stem for p in HERE.glob("*.csv"))


def load(name: str) -> pd.DataFrame:
    """The published table ``name`` (file stem, e.g. ``"tabik2020_table3_covidgr"``)."""
    path = HERE / f"{name}.csv"
    if not path.is_file():
        raise KeyError(f"no published table {name!r}; available: {available()}")
    return pd.read_csv(path)
