# The two commands of the README, on a fresh machine with Python 3.11 or newer (any python3: the
# pinned numpy 2.4, scipy 1.17 and pandas 3.1 of requirements.txt have no wheels for 3.10):
#   make study   installs into .venv and runs the main job (python -m samhw study) on the defaults
#   make test    installs into .venv, lints (ruff) and runs every test (what .ci/run calls)
# Another interpreter: make test PYTHON=python3.12
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Data: $SAMHW_DATA if set, else data/kaggle_3m, else the read-only shared copy beside the checkout.
SAMHW_DATA ?= $(firstword $(wildcard data/kaggle_3m) $(wildcard ../shared/datasets/lgg/kaggle_3m))
export SAMHW_DATA

.PHONY: install study test lint python-version

python-version:
	@version=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || { \
		echo "error: no Python at '$(PYTHON)': install Python 3.11 or newer, or name one: make test PYTHON=python3.12" >&2; exit 2; }; \
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: make needs Python 3.11 or newer (the pinned requirements have no wheels for older ones); '$(PYTHON)' is $$version: install a newer one, or name one: make test PYTHON=python3.12" >&2; exit 2; }

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	@$(MAKE) --no-print-directory python-version PYTHON=$(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements-dev.txt -e .
	touch $@

install: $(VENV)/.installed

study: install
	$(BIN)/python -m samhw study --readme README.md

lint: install
	$(BIN)/python -m ruff check samhw tests benchmarks

test: lint
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg notebooks/
