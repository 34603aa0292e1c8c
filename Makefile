# Two commands set up everything on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint format clean-venv

# The pinned requirements first, then the project itself as an editable package (console scripts ad-preprocess and
# ad-analysis; `import preprocessing` / `import analysis` from any folder).
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Test modules run on TEST_WORKERS processes (pytest-xdist; one module per worker, so module fixtures are built once).
TEST_WORKERS ?= 2
test: $(STAMP) lint
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadfile

# The whole pipeline on a synthetic cohort (demo.sh; settings through DEMO_* variables, see its header).
demo: $(STAMP)
	PYTHON=$(abspath $(PY)) bash demo.sh

clean-venv:
	rm -rf $(VENV)

# MONAI Label (monailabel_app/): `make label-env` builds .venv-label, which sees every package of .venv through a .pth
# file (torch, monai and the bundle's dependencies are not installed twice) and adds monailabel 0.8.5 with only what
# its server imports (monailabel_app/requirements.txt, --no-deps: its declared dependencies pull in sam2 and mlflow and
# pin pydicom-seg, which asks for numpy<2). pydicom-seg's one pydicom-2 import is pointed at pydicom 3's `pydicom.uid`.
# `make label LABEL_STUDIES=<folder of NIfTI T1 scans>` serves the model on LABEL_HOST:LABEL_PORT (through
# `python -m monailabel.main`: the `monailabel` script runs whichever `python` is first on PATH).
LABEL_VENV := .venv-label
LABEL_PY := $(LABEL_VENV)/bin/python
LABEL_STAMP := $(LABEL_VENV)/.installed
LABEL_STUDIES ?=
LABEL_HOST ?= 127.0.0.1
LABEL_PORT ?= 8000
LABEL_MODEL_DIR ?= bundle/models
LABEL_APP ?= monailabel_app
LABEL_BUNDLE ?= bundle
LABEL_MODEL := ad_cn_classification

.PHONY: label-env label

label-env: $(LABEL_STAMP)

$(LABEL_STAMP): monailabel_app/requirements.txt | $(STAMP)
	rm -rf $(LABEL_VENV)
	$(PY) -m venv --without-pip $(LABEL_VENV)
	$(PY) -c "import sysconfig; dirs = sorted({sysconfig.get_path('purelib'), sysconfig.get_path('platlib')}); print('import site; ' + '; '.join(f'site.addsitedir({d!r})' for d in dirs))" > "$$($(LABEL_PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))")/_main_venv.pth"
	$(LABEL_PY) -m pip install --quiet --no-deps --no-compile -r monailabel_app/requirements.txt
	$(LABEL_PY) -c "import pathlib, sysconfig; [f.write_text(f.read_text().replace('pydicom._storage_sopclass_uids', 'pydicom.uid')) for f in pathlib.Path(sysconfig.get_path('purelib'), 'pydicom_seg').glob('*.py')]"
	$(LABEL_PY) -c "import pydicom_seg"
	touch $(LABEL_STAMP)

label: label-env
	@test -n "$(LABEL_STUDIES)" || { echo "usage: make label LABEL_STUDIES=<folder of NIfTI T1 scans> [LABEL_PORT=$(LABEL_PORT)] [LABEL_HOST=$(LABEL_HOST)] [LABEL_MODEL_DIR=$(LABEL_MODEL_DIR)]"; exit 2; }
	$(LABEL_PY) -m monailabel.main start_server --app "$(LABEL_APP)" --studies "$(LABEL_STUDIES)" \
		--conf models $(LABEL_MODEL) --conf bundle "$(abspath $(LABEL_BUNDLE))" \
		--conf model_dir "$(abspath $(LABEL_MODEL_DIR))" --host $(LABEL_HOST) --port $(LABEL_PORT)
