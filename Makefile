# Two commands on a fresh machine: `make demo` (main job on the embedded default dataset)
# and `make test` (the suite). Both create .venv/ first; a second run skips the install.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PYTHONDONTWRITEBYTECODE := 1
# The local pip config names mirror folders that may not hold every package: silence that noise.
PIPQ := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: venv demo test lint format lock bench clean repro plots prefect-up prefect-down report-check

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(PIPQ)
	$(PY) -m pip install -q -r requirements.lock 2>&1 | $(PIPQ)
	$(PY) -m pip install -q --no-deps -e . 2>&1 | $(PIPQ)
	touch $@

# The whole pipeline on the embedded `shapes` data (dvc repro), ending with the mIoU table.
demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro
	$(PY) -m pipeline.summary metrics/segmentation.json
	@echo "report: data/report/index.html (one offline page; make report-check renders it)"

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Re-resolve the pins from pyproject.toml in a scratch env and write requirements.lock.
lock:
	rm -rf /tmp/semsynth-lock && $(PYTHON) -m venv /tmp/semsynth-lock
	/tmp/semsynth-lock/bin/pip install -q ".[dev]" 2>&1 | $(PIPQ)
	{ echo "# Exact versions resolved on this machine (Python 3.11). Regenerate: make lock"; \
	  /tmp/semsynth-lock/bin/pip freeze | grep -v '^semsynth'; } > requirements.lock

# The whole pipeline under DVC (only stages whose deps or params changed run).
repro: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro

# Training curves and metrics as one HTML page that renders offline (Vega from vendor/vega).
plots: $(STAMP)
	$(VENV)/bin/dvc plots show -o plots
	@echo "open plots/index.html"

# The report page (`semsynth report`, the last stage of `dvc repro`) in headless Chromium: fails on
# console errors, failed loads or any request outside the page, and writes a full-page screenshot
# (SCREENSHOT=docs/report.png refreshes the README's). Installs nothing: without Chromium it says
# how to install it.
SCREENSHOT ?= build/report.png
report-check: $(STAMP)
	$(PY) scripts/report_check.py data/report/index.html --screenshot $(SCREENSHOT)

# A local Prefect server (SQLite, 127.0.0.1) + a process worker, all deployments of prefect.yaml.
prefect-up: $(STAMP)
	bash scripts/prefect_up.sh

prefect-down:
	bash scripts/prefect_down.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
