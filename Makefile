# Two entry points (see README): `make quickstart` and `make test`.
# Both create .venv on first use and install fedsim with its dev extras into it.
PYTHON ?= python3
VENV   ?= .venv
# Leave empty to let pip pick torch==2.13.0 from its configured indexes/find-links (on the
# project's CPU build machines this is a local CPU wheel). Elsewhere, choose a build, e.g.
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu     (CPU only, small)
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128   (CUDA 12.8)
TORCH_INDEX ?=
PYTEST_ARGS ?=

STAMP := $(VENV)/.fedsim-installed

.PHONY: setup quickstart test test-fast clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet "torch==2.13.0" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/fedsim run scenarios/quickstart.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
