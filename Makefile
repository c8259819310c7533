# The two commands of the README, on a fresh machine with Python 3.11:
#   make study   installs into .venv and runs the main job (python -m samhw study) on the defaults
#   make test    installs into .venv and runs every test (what .ci/run calls)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Data: $SAMHW_DATA if set, else data/kaggle_3m, else the read-only shared copy beside the checkout.
SAMHW_DATA ?= $(firstword $(wildcard data/kaggle_3m) $(wildcard ../shared/datasets/lgg/kaggle_3m))
export SAMHW_DATA

.PHONY: install study test

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements-dev.txt -e .
	touch $@

install: $(VENV)/.installed

study: install
	$(BIN)/python -m samhw study --readme README.md

test: install
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg notebooks/
