"""Every study notebook takes the same papermill parameters, parseable by papermill, and is stored
without outputs."""
import json

import papermill as pm
import pytest

from cxrlib.paths import NOTEBOOKS_DIR
from cxrlib.runner import list_notebooks

STANDARD = {"profile", "cohort", "manifest", "run_dir", "seed", "interactive", "profile_overrides"}


@pytest.mark.parametrize("notebook", list_notebooks(None, NOTEBOOKS_DIR), ids=lambda p: p.stem)
def test_standard_parameters_parse(notebook):
    params = pm.inspect_notebook(str(notebook))
    assert STANDARD <= set(params), f"missing {STANDARD - set(params)}"
    # papermill gives up on a line it cannot parse and then drops the type/default
    for name in STANDARD:
        assert params[name]["default"] not in (None, ""), (
            f"{name}: papermill could not parse its line")
    assert params["profile"]["default"] == '"smoke"'


@pytest.mark.parametrize("notebook", list_notebooks(None, NOTEBOOKS_DIR), ids=lambda p: p.stem)
def test_stored_without_outputs(notebook):
    nb = json.loads(notebook.read_text())
    assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
