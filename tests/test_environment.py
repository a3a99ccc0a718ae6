"""pyproject.toml and environment.yml must declare the same packages with the same versions."""
import re
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from cxrlib.paths import REPO_ROOT


def _pyproject() -> dict[str, SpecifierSet]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["test"]
    return {canonicalize_name(r.name): r.specifier for r in map(Requirement, reqs)}


def _conda_spec(entry: str) -> Requirement:
    # conda writes "python=3.11" for a fuzzy pin; pip's "==" is the same for our purposes
    return Requirement(re.sub(r"^([A-Za-z0-9_.\-]+)=(?!=)", r"\1==", entry.strip()))


def _environment() -> dict[str, SpecifierSet]:
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    out = {}
    for dep in env["dependencies"]:
        entries = dep["pip"] if isinstance(dep, dict) else [dep]
        for e in entries:
            if e.startswith("-e") or e in ("pip",):
                continue
            r = _conda_spec(e)
            out[canonicalize_name(r.name)] = r.specifier
    out.pop("python", None)
    return out


def test_same_packages_and_versions():
    py, env = _pyproject(), _environment()
    assert sorted(set(py) - set(env)) == [], "in pyproject.toml only"
    assert sorted(set(env) - set(py)) == [], "in environment.yml only"
    differ = {n: (str(py[n]), str(env[n])) for n in py if py[n] != env[n]}
    assert differ == {}


def test_known_pins():
    py = _pyproject()
    assert str(py["torch"]) == "==2.14.1" and str(py["torchvision"]) == "==0.29.1"
    assert "2.10" not in py["plum-dispatch"]  # fastai breaks with plum-dispatch 2.10
    for name in ("fastai", "jupyterlab", "papermill", "pydicom", "seaborn", "scikit-learn",
                 "ipywidgets", "grad-cam", "scikit-image", "nbconvert", "ipykernel"):
        assert name in py, name


def test_lock_file_agrees_with_pins():
    lock = {}
    for line in (REPO_ROOT / "requirements-lock.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            lock[canonicalize_name(name)] = version.strip()
    for name, spec in _pyproject().items():
        assert name in lock, f"{name} missing from requirements-lock.txt (run `make lock`)"
        assert spec.contains(lock[name]), f"lock has {name}=={lock[name]}, pyproject asks {spec}"
