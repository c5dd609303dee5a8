# Two set-up commands: `make demo` and `make test`. Both create ./.venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-slow test-browser bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch that lies on this disk; a plain `torch` would fetch CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/difflab demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -x --timeout=900

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow --timeout=3600

# The explore page in a real headless browser: Debian's Chromium and its driver (apt-get, once),
# Selenium in the venv; saves docs/explore_*.png. Playwright's own browser download is not needed.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: $(VENV)/.installed
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends chromium chromium-driver; }
	$(PY) -m pip install -q -e '.[browser]'
	$(PY) -m pytest -q -m browser tests/test_browser.py --timeout=900

bench: $(VENV)/.installed
	$(VENV)/bin/difflab bench samplers --out benchmarks/samplers

clean:
	rm -rf $(VENV) difflab-demo
