# make demo: set up .venv and build the embedded 1k-pair sample end to end into runs/demo/.
# make test: set up .venv and run the whole test suite.
# Both are idempotent: the environment is rebuilt only when pyproject.toml or requirements.lock change.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE := disabled
export HF_HUB_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-fast clean browser

setup: $(STAMP)

# requirements.lock is the full resolved set (installed with --no-deps, so img2dataset's `dataclasses`
# backport, which breaks Prefect's server, never comes in); the project itself is installed editable.
$(STAMP): pyproject.toml requirements.lock
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(VENV)/bin/python -m pip install -q --no-deps -r requirements.lock
	$(VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	$(VENV)/bin/python -m pip uninstall -q -y dataclasses 2>/dev/null || true
	$(VENV)/bin/python -c "import torch, torchvision, open_clip_train.main, ray, img2dataset, prefect, fasttext"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/wit demo --out runs/demo

# Debian's headless Chromium for the dashboard's browser test (Playwright drives it; no browser download).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

test: $(STAMP) browser
	$(VENV)/bin/python -m pytest -q -ra --timeout=1500 tests

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -ra -m "not slow" -p no:cacheprovider tests

clean:
	rm -rf runs .pytest_cache
