# facerank — two commands: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean browser

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first (CPU wheel), so nothing pulls a CUDA build; every version from constraints.txt
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[test,scale,milvus-server]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/facerank demo

test: $(STAMP) browser
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q

# The web page test drives Debian's headless Chromium; install it when we can (root + apt).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
	      echo "note: could not install chromium; the browser test will be skipped"; \
	  else echo "note: chromium not found; the browser test will be skipped"; fi; }

bench: $(STAMP)
	$(PY) -m benchmarks.extract

clean:
	rm -rf $(VENV) .cache
