# Two commands do all the set-up on a fresh machine:
#   make demo   runs the sandboxed kernel on notebooks/demo.ipynb
#   make test   lint, type checks and the whole test suite
# Both create .venv, install the Python packages, and install bubblewrap
# with apt-get when it is missing and you are root (otherwise they print the
# command to run).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TEST_USER ?= srtkernel-test

.PHONY: setup bwrap browser demo test lint typecheck pytest test-as-user bench clean

setup: $(STAMP) bwrap

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,demo]' --config-settings editable_mode=compat
	touch $(STAMP)

bwrap:
	@if ! command -v bwrap >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; \
	  else \
	    echo "bubblewrap is missing. Install it first:"; \
	    echo "  sudo apt-get install -y bubblewrap"; \
	    exit 1; \
	  fi; \
	fi

# The browser tests drive Debian's Chromium (Playwright cannot download its
# own here); without it they skip and say what to install.
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium with apt-get (for the browser tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium is missing: the browser tests will skip. Install it with:"; \
	    echo "  sudo apt-get install -y chromium"; \
	  fi; \
	fi

demo: setup
	$(VENV)/bin/srt-kernel doctor
	$(VENV)/bin/srt-kernel install --sys-prefix
	cd notebooks && ../$(VENV)/bin/srt-kernel execute demo.ipynb -o out/demo.ipynb

lint: $(STAMP)
	$(VENV)/bin/ruff check srt_kernel tests benchmarks
	$(VENV)/bin/ruff format --check srt_kernel tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: setup browser
	$(PY) -m pytest -q -ra

# The sandbox is tested as root and as an unprivileged user.
test-as-user: setup
	@if [ "$$(id -u)" = 0 ]; then \
	  bash tests/as_user.sh $(TEST_USER); \
	else \
	  echo "test-as-user: already unprivileged (uid $$(id -u)); the main run covers it"; \
	fi

test: lint typecheck pytest test-as-user

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
