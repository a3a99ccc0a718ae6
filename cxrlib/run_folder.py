"""The folder a study run writes into, as seen from one notebook.

A run folder for one cohort holds ``tables/`` (CSV + Markdown), ``figures/`` (PNG) and
``artifacts/`` (split plan, views, checkpoints, predictions) that later notebooks read. Notebooks
never hand anything to a later notebook except through these files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

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
