# Two commands for a fresh machine: `make demo` (set up, run the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned to the CPU wheel that installs offline here; pyproject declares a looser range.
TORCH := torch==2.13.0

.PHONY: venv demo test browser clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[all,test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m ferlab demo

# The browser test drives Debian's Chromium with Playwright's driver (its own browser download
# never works offline). Installed here when we may (root with apt-get); otherwise it is skipped.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the browser test"; \
		apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
		|| { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } \
		|| echo "could not install chromium: the browser test will be skipped"; \
	fi

test: venv browser
	$(PY) -m pytest -q --durations=15

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
