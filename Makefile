# Two commands for a fresh machine: `make demo` (set up, run the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned to the CPU wheel that installs offline here; pyproject declares a looser range.
TORCH := torch==2.13.0
# The current OpenCV major (pyproject allows 4.8+; 5.x has no Haar cascades, so --detector haar and its
# tests need 4.x or opencv-contrib-python-headless); named here so an existing venv moves to it too.
OPENCV := opencv-python-headless==5.1.0.95
# The lean install (`pip install .`, no extras: no torch), checked by `make test-lean` on $(PYTHON),
# or on another Python: `make test-lean LEAN_PYTHON=~/.pyenv/versions/3.13.0/bin/python3` (the torch
# wheel installed here is for 3.11 only, so the full suite runs on 3.11).
LEAN_PYTHON ?= $(PYTHON)
LEAN := .venv-lean-$(shell $(LEAN_PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')

.PHONY: venv demo test test-lean browser clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[all,test]" "$(OPENCV)"
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

# The lean install first, so the full suite's summary is the run's last line.
test: venv browser
	$(MAKE) test-lean
	$(PY) -m pytest -q --durations=15

# A second venv, without --system-site-packages, so it cannot see torch: its dependencies come
# from the index (pip's cache makes reruns cheap) and are installed again when pyproject changes;
# this checkout is reinstalled each run (~10 s). tests/test_lean.py then checks that the astronaut
# reads as happy there without torch, and that the training commands name the extra.
$(LEAN)/.installed: pyproject.toml
	rm -rf $(LEAN)
	$(LEAN_PYTHON) -m venv $(LEAN)
	$(LEAN)/bin/python -m pip install -q --upgrade pip
	$(LEAN)/bin/python -m pip install -q . "$(OPENCV)"
	touch $@

test-lean: venv $(LEAN)/.installed
	$(LEAN)/bin/python -m pip install -q --no-deps --force-reinstall .
	FERLAB_LEAN_PYTHON=$(abspath $(LEAN))/bin/python $(PY) -m pytest -q tests/test_lean.py -k clean_install

clean:
	rm -rf $(VENV) .venv-lean* build *.egg-info src/*.egg-info
