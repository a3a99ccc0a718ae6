# cxr-study: `make study` runs the whole study, `make test` runs the tests, `make lint` checks
# the code (ruff) and that notebooks are stored without outputs.
# Each creates the virtual environment .venv (Python 3.11) on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
KERNEL := cxr-study
STAMP := $(VENV)/.cxr-study-installed
PROFILE ?= default
# pytest workers (pytest-xdist); CI has 2 cores
JOBS ?= 2

.PHONY: setup study smoke test lint benchmarks lock clean-data

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-lock.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "cxr-study needs Python 3.11 (found %s)" % sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: pip takes these builds from local files where they exist
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -c requirements-lock.txt -e '.[test]'
	$(PY) -m ipykernel install --prefix $(abspath $(VENV)) --name $(KERNEL) --display-name "Python (cxr-study)"
	touch $(STAMP)

study: setup
	$(PY) -m cxrlib run --profile $(PROFILE)

smoke: setup
	$(PY) -m cxrlib run --profile smoke

test: setup
	$(PY) -m pytest -n $(JOBS) --dist loadfile --durations=15

# ruff with pyproject.toml's settings, and notebooks stored without outputs (the same checks as
# .pre-commit-config.yaml)
lint: setup
	$(VENV)/bin/ruff check cxrlib tests benchmarks tools
	$(PY) tools/nbtools.py check notebooks/*.ipynb

benchmarks: setup
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Refresh the lock file after changing pyproject.toml: uv resolves for every platform at once
# (--universal: platform-specific packages such as CUDA's get environment markers), keeping the
# versions already in requirements-lock.txt where they still fit.
UV_VERSION := 0.13.9
lock: setup
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --universal --python-version 3.11.5 \
		--custom-compile-command "make lock" --quiet -o requirements-lock.txt

clean-data:
	rm -rf data
