# Two commands set up everything on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint format clean-venv

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: $(STAMP) lint
	$(PY) -m pytest tests

# The whole pipeline on a synthetic cohort (demo.sh; settings through DEMO_* variables, see its header).
demo: $(STAMP)
	PYTHON=$(abspath $(PY)) bash demo.sh

clean-venv:
	rm -rf $(VENV)
