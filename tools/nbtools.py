"""Maintainer tools for the study notebooks (not part of cxrlib).

    python tools/nbtools.py strip notebooks/*.ipynb   # remove outputs and execution counts
    python tools/nbtools.py check notebooks/*.ipynb   # exit 1 if any still has them (make lint)

Notebooks are stored without outputs; executed copies belong in reports/.
"""
from __future__ import annotations

import sys

import nbformat


def _stripped(nb) -> None:
    """Remove outputs, execution counts and papermill's metadata from ``nb`` (in place)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)


def needs_strip(path: str) -> bool:
    """True if the notebook at ``path`` holds outputs, execution counts or papermill metadata."""
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    _stripped(nb)
    return nbformat.writes(nb) != before


def strip(path: str) -> bool:
    """Remove outputs, execution counts and per-cell metadata noise; True if the file changed."""
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    _stripped(nb)
    after = nbformat.writes(nb)
    if after != before:
        nbformat.write(nb, path)
    return after != before


def build(path: str, cells: list[tuple[str, str]], presets: list[str] | None = None) -> None:
    """Write a notebook from ``(kind, source)`` pairs; kind is ``md``, ``code`` or ``params``
    (a code cell tagged ``parameters`` for papermill)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "cxr-study", "display_name": "Python (cxr-study)",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    if presets:
        nb.metadata["cxr_study"] = {"presets": presets}
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
        else:
            cell = nbformat.v4.new_code_cell(src)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    nbformat.write(nb, path)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("strip", "check"):
        sys.exit(__doc__)
    if sys.argv[1] == "check":
        dirty = [p for p in sys.argv[2:] if needs_strip(p)]
        if dirty:
            sys.exit(f"{len(dirty)} notebook(s) stored with outputs: {', '.join(dirty)}\n"
                     f"run: python tools/nbtools.py strip {' '.join(dirty)}")
        print(f"{len(sys.argv) - 2} notebook(s) stored without outputs")
        sys.exit(0)
    changed = [p for p in sys.argv[2:] if strip(p)]
    print(f"stripped {len(changed)} notebook(s)" + (": " + ", ".join(changed) if changed else ""))
