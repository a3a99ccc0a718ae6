"""Repository conventions: license, citation, pre-commit configuration, notebooks stored
without outputs."""
import sys
import tomllib

import yaml

from cxrlib.paths import NOTEBOOKS_DIR, REPO_ROOT


def test_license_file_matches_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] == "MIT"
    assert (REPO_ROOT / "LICENSE").read_text().startswith("MIT License\n")


def test_citation_cites_the_project_and_the_five_papers():
    cff = yaml.safe_load((REPO_ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert str(cff["version"]) == project["version"]
    refs = cff["references"]
    assert len(refs) == 5 and all(r["title"] and r["authors"] and r["year"] == 2020 for r in refs)


def test_pre_commit_runs_nbstripout_and_ruff():
    config = yaml.safe_load((REPO_ROOT / ".pre-commit-config.yaml").read_text())
    hooks = {h["id"] for repo in config["repos"] for h in repo["hooks"]}
    assert {"nbstripout", "ruff"} <= hooks


def test_notebooks_are_stored_without_outputs():
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    try:
        from nbtools import needs_strip
    finally:
        sys.path.remove(str(REPO_ROOT / "tools"))
    notebooks = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    assert notebooks and [p.name for p in notebooks if needs_strip(str(p))] == []
