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

.PHONY: setup system-deps browser demo test test-fast clean

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

# Debian tools some tests use: Chromium (the dashboard's browser test; Playwright drives it, no browser
# download) and strace (the local-Ray egress test). Installed as root when missing (CI runs as root on
# Debian; a second run is instant); elsewhere those tests skip and say why.
SYSTEM_TOOLS := chromium strace
system-deps:
	@missing=$$(for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || echo $$t; done); \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && apt-get install -y -qq $$missing >/dev/null) \
	  || echo "not installed: $$missing (the tests that need them will skip)"; }

browser: system-deps

test: $(STAMP) system-deps
	$(VENV)/bin/python -m pytest -q -ra --timeout=1500 tests

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -ra -m "not slow" -p no:cacheprovider tests

clean:
	rm -rf runs .pytest_cache
