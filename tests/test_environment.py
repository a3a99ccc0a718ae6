"""pyproject.toml, the lock file and environment.yml agree, and the lock holds every platform."""
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


def test_environment_yml_installs_the_project_with_the_lock():
    """environment.yml takes Python from conda and everything else from pip, with the lock as
    constraints: the same pins as `make setup`, so the two cannot drift apart."""
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if not isinstance(d, dict)]
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert conda == ["python=3.11", "pip"]
    assert pip == [["-c requirements-lock.txt", "-e .[test]"]]


def test_known_pins():
    py = _pyproject()
    assert str(py["torch"]) == "==2.14.1" and str(py["torchvision"]) == "==0.29.1"
    assert "2.10" not in py["plum-dispatch"]  # fastai breaks with plum-dispatch 2.10
    for name in ("fastai", "jupyterlab", "papermill", "pydicom", "seaborn", "scikit-learn",
                 "ipywidgets", "grad-cam", "scikit-image", "nbconvert", "ipykernel"):
        assert name in py, name


def _lock() -> list[Requirement]:
    lines = (REPO_ROOT / "requirements-lock.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line and not line.startswith((" ", "#"))]


#: marker environments of three platforms (packaging.markers names)
PLATFORMS = {
    "linux": {"sys_platform": "linux", "platform_machine": "x86_64", "os_name": "posix",
              "platform_system": "Linux"},
    "macos": {"sys_platform": "darwin", "platform_machine": "arm64", "os_name": "posix",
              "platform_system": "Darwin"},
    "windows": {"sys_platform": "win32", "platform_machine": "AMD64", "os_name": "nt",
                "platform_system": "Windows"},
}


def _applies(req: Requirement, platform: str) -> bool:
    env = {"python_version": "3.11", "python_full_version": "3.11.7",
           "implementation_name": "cpython", "platform_python_implementation": "CPython",
           **PLATFORMS[platform]}
    return req.marker is None or req.marker.evaluate(env)


def test_lock_file_agrees_with_pins():
    lock = {canonicalize_name(r.name): r for r in _lock()}
    for req in lock.values():
        assert len(req.specifier) == 1 and str(next(iter(req.specifier))).startswith("=="), req
    for name, spec in _pyproject().items():
        assert name in lock, f"{name} missing from requirements-lock.txt (run `make lock`)"
        version = str(next(iter(lock[name].specifier))).removeprefix("==")
        assert spec.contains(version), f"lock has {name}=={version}, pyproject asks {spec}"


def test_lock_file_holds_every_platform():
    """Resolved for every platform, not frozen on one: each platform gets every package the
    project names, and only Linux the CUDA libraries."""
    lock = _lock()
    direct = set(_pyproject())
    for platform in PLATFORMS:
        names = {canonicalize_name(r.name) for r in lock if _applies(r, platform)}
        assert direct <= names, (platform, sorted(direct - names))
        cuda = {n for n in names if n.startswith("nvidia-")}
        assert bool(cuda) == (platform == "linux"), (platform, sorted(cuda))
    assert any(r.name == "colorama" and _applies(r, "windows") and not _applies(r, "linux")
               for r in lock)
