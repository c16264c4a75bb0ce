# The README's two commands: `make run` (embedded stack + the bundled sample) and `make test`.
# Both create the virtual environment on first use; later runs reuse it at once (stamp files).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
# pytest arguments, e.g. `make test PYTEST_ARGS="-k e2e -x"`
PYTEST_ARGS ?=

.PHONY: run test lint venv chromium clean-data

venv: $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned to the CPU wheel that lies on this disk: installed later as a mere
# dependency, pip would pick a multi-GB CUDA build from the index instead.
$(VENV)/.torch-$(TORCH_VERSION): | $(BIN)/python
	$(BIN)/pip install torch==$(TORCH_VERSION)
	touch $@

$(VENV)/.installed: pyproject.toml constraints.txt $(VENV)/.torch-$(TORCH_VERSION)
	$(BIN)/pip install -c constraints.txt -e '.[dev]'
	touch $@

run: venv
	$(BIN)/python -m deployments.embedded

test: venv chromium lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Style and types, configured in pyproject.toml; `make test` runs them first and stops on a finding.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

# tests/test_browser.py drives Debian's chromium (never a browser download: the network is closed).
# Installed with apt when missing; without apt the browser test skips and says why.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium with apt-get (for tests/test_browser.py)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
			|| echo "make chromium: apt-get could not install chromium; the browser test will be skipped" >&2; \
	else \
		echo "make chromium: no /usr/bin/chromium and no apt-get; the browser test will be skipped" >&2; \
	fi

# Wipe the embedded stack's state (Prefect database, stored jobs, caches) under ./data.
clean-data:
	rm -rf data
