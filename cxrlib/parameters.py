"""Run parameters from the command line: ``-p NAME=VALUE`` and ``--params FILE.yaml``.

A notebook declares its parameters in the cell tagged ``parameters``; papermill's inspection reads
them (name, default, inferred type). A parameter given to the runner goes to every notebook that
declares it, and a name no notebook declares is an error that lists the valid names per notebook::

    python -m cxrlib run --manifest corpus.csv -p unet_weights=/data/unet.pt \\
        -p min_lung_fraction=0.25
    python -m cxrlib run -p profile.cls_folds=5 --params my_run.yaml

Values are YAML scalars (``0.25`` a float, ``true`` a bool, ``[0.0, 0.1]`` a list, ``abc`` a
string). ``profile.FIELD`` overrides a field of the run's profile (checked against
:class:`cxrlib.profiles.Profile`); every notebook receives the overrides as ``profile_overrides``.
A parameters file holds a mapping of the same names; profile fields either as ``profile.FIELD:``
keys or under a ``profile:`` mapping.

The parameters the runner sets itself (``profile``, ``cohort``, ``manifest``, ``run_dir``,
``seed``, ``interactive``, ``profile_overrides``) are not accepted here; their command-line options
are named in the error.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cxrlib.profiles import check_overrides

#: Parameters every notebook declares and the runner fills, with the option that sets them.
RUNNER_PARAMETERS = {
    "profile": "--profile", "cohort": "--cohorts", "manifest": "--manifest",
    "run_dir": "--out", "seed": "--seed", "interactive": "(headless runs are never interactive)",
    "profile_overrides": "-p profile.FIELD=VALUE",
}
PROFILE_PREFIX = "profile."


def parse_assignment(text: str) -> tuple[str, object]:
    """``"NAME=VALUE"`` -> ``(NAME, VALUE parsed as a YAML scalar)``; ``"NAME="`` gives ``""``.

    Raises ValueError for text without ``=`` or with an empty name, and for a value YAML cannot
    parse, naming the assignment.
    """
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"-p expects NAME=VALUE, got {text!r}")
    if not raw.strip():
        return name, ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ValueError(f"-p {text!r}: the value is not valid YAML: "
                         f"{str(exc).splitlines()[0]}") from None
    return name, value


def read_params_file(path: str | Path) -> dict:
    """A YAML parameters file as a flat mapping (a ``profile:`` mapping becomes
    ``profile.FIELD`` keys).

    Raises FileNotFoundError, or ValueError naming the file for YAML that does not parse or does
    not hold a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parameters file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read parameters file {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"parameters file {path} must hold a mapping (NAME: VALUE), got "
                         f"{type(data).__name__}")
    flat = {}
    for key, value in data.items():
        if key == "profile" and isinstance(value, dict):
            flat.update({f"{PROFILE_PREFIX}{k}": v for k, v in value.items()})
        else:
            flat[str(key)] = value
    return flat


def declared_parameters(notebooks: list[Path]) -> dict[str, dict[str, dict]]:
    """Notebook file name -> {parameter name -> papermill's inspection (``default``, ``help``)
    plus ``type``, the type of the default's Python literal (``str``, ``float``, ``bool``, ...;
    ``None`` when it is not a literal)} for each notebook's ``parameters`` cell."""
    import ast

    declared = {}
    for nb in notebooks:
        params = _inspect(nb)
        for info in params.values():
            try:
                info["type"] = type(ast.literal_eval(info["default"])).__name__
            except (ValueError, SyntaxError, TypeError):
                info["type"] = None
        declared[nb.name] = params
    return declared


def _inspect(notebook: Path) -> dict:
    """papermill's inspection of a notebook's parameters cell. A notebook without a kernelspec
    (papermill needs one to pick the language) is inspected as the Python notebook the runner
    executes it as."""
    import tempfile

    import nbformat
    import papermill as pm

    nb = nbformat.read(notebook, as_version=4)
    if nb.metadata.get("kernelspec", {}).get("name"):
        return pm.inspect_notebook(str(notebook))
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python"}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / notebook.name
        nbformat.write(nb, copy)
        return pm.inspect_notebook(str(copy))


def _coerce(value, type_name: str, name: str, notebook: str):
    """``value`` converted to the type of the notebook's default, or a
    ValueError naming the parameter, the notebook and the expected type."""
    scalar = isinstance(value, (str, int, float, bool)) or value is None
    if type_name == "str":
        if isinstance(value, str):
            return value
        if scalar and value is not None:  # YAML read 2020 or 0.5: the notebook wants text
            return str(value)
    elif type_name == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif type_name == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif type_name == "bool":
        if isinstance(value, bool):
            return value
    elif type_name == "list":
        if isinstance(value, list):
            return value
    elif type_name == "dict":
        if isinstance(value, dict):
            return value
    else:  # a default that is None or not a literal: pass as given
        return value
    raise ValueError(f"parameter {name} of {notebook} must be {type_name} (its default is of that "
                     f"type), got {value!r} ({type(value).__name__})")


@dataclass
class RunParameters:
    """What the runner passes beyond its own parameters.

    Attributes
    ----------
    given : the names and values as given (command line and file), for ``run.json``.
    profile_overrides : profile field -> value, checked.
    per_notebook : notebook file name -> {parameter -> value} it receives.
    """

    given: dict = field(default_factory=dict)
    profile_overrides: dict = field(default_factory=dict)
    per_notebook: dict = field(default_factory=dict)


def resolve_parameters(given: dict, notebooks: list[Path]) -> RunParameters:
    """Check ``given`` (name -> value) against the notebooks' declared parameters and the profile's
    fields, and say which notebook receives what.

    Raises
    ------
    ValueError : a runner-owned name (with the option to use instead), a profile field that does
        not exist or has the wrong type, a name no notebook of this run declares (with the valid
        names per notebook), or a value of the wrong type for a notebook that declares it.
    """
    overrides = {k[len(PROFILE_PREFIX):]: v for k, v in given.items()
                 if k.startswith(PROFILE_PREFIX)}
    rest = {k: v for k, v in given.items() if not k.startswith(PROFILE_PREFIX)}
    owned = sorted(set(rest) & set(RUNNER_PARAMETERS))
    if owned:
        raise ValueError("; ".join(f"{name} is set by the runner: use {RUNNER_PARAMETERS[name]}"
                                   for name in owned))
    checked = check_overrides(overrides)
    declared = declared_parameters(notebooks)
    unknown = sorted(name for name in rest
                     if not any(name in params for params in declared.values()))
    if unknown:
        listing = "\n".join(
            f"  {nb}: {', '.join(n for n in params if n not in RUNNER_PARAMETERS) or '(none)'}"
            for nb, params in declared.items())
        raise ValueError(f"no notebook of this run declares {', '.join(unknown)}; the parameters "
                         f"are, per notebook:\n{listing}\n  and every profile field as "
                         f"profile.FIELD (see cxrlib/profiles.py)")
    blind = [nb for nb, params in declared.items() if "profile_overrides" not in params]
    if checked and blind:
        raise ValueError(f"{', '.join(blind)} declare(s) no profile_overrides parameter, so they "
                         "would run with the profile unchanged: add `profile_overrides = {}` to "
                         "the parameters cell and pass it to open_study")
    per_notebook = {}
    for nb, params in declared.items():
        per_notebook[nb] = {name: _coerce(value, params[name]["type"], name, nb)
                            for name, value in rest.items() if name in params}
        if "profile_overrides" in params:
            per_notebook[nb]["profile_overrides"] = json.loads(json.dumps(checked))
    # tuples as lists, as papermill and run.json take them
    as_json = json.loads(json.dumps(checked))
    return RunParameters(given=dict(given), profile_overrides=as_json, per_notebook=per_notebook)
