# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help demo test test-fast lint lock bench-ingest clean browser

help:
	@echo "make demo      - set up .venv, ingest the demo sample (data/demo) into data/records, verify it,"
	@echo "                 train on CPU from the shipped trunk (configs/demo.yaml; model_save/demo-*/, log/demo-*/),"
	@echo "                 evaluate (report/demo-*/index.html), detect one sample photo, print the next commands"
	@echo "make test      - set up .venv (and chromium, for the page's browser test) and run the whole test suite (what CI runs)"
	@echo "make test-fast - the tests not marked slow (no end-to-end training): under 2 minutes"
	@echo "make lint      - ruff check, ruff format --check, mypy, import-linter (the layers)"
	@echo "make lock      - recompile requirements.txt (the exact tested versions) from pyproject.toml's ranges"
	@echo "make bench-ingest - ingestion benchmark (bench/ingest.py), prints ratios"
	@echo "make clean     - remove data/records, data/cache and caches (keeps .venv)"

# The exact versions CI tested (requirements.txt: a lock with hashes compiled by uv from pyproject.toml's
# ranges and extras: test, lint, beam, jax, bench, serve, onnx), then the project itself in place without dependencies;
# re-installed only when either file changes. Installed by uv (the lock's own version; its hashes checked):
# 17 s on a fresh machine where pip takes about 3 minutes; pip does it where uv cannot reach the registry.
# --compile-bytecode: pip writes the .pyc files at install, uv only when asked; without them (and with
# PYTHONDONTWRITEBYTECODE set, as on our CI machines) every command compiled TensorFlow's and Keras' 3,500
# modules from source again: 5-6 s more for each start of detect.py, train.py, ... and each test's process.
# `pip install -e .` with pyproject.toml's ranges still works for those who embed the package.
UV_VERSION := $(shell sed -n 's/^uv==\([0-9.]*\).*/\1/p' requirements.txt)
$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -r requirements.txt || \
	  { echo "uv could not install requirements.txt: pip instead (slower)"; $(PY) -m pip install --quiet -r requirements.txt; }
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Refresh the lock from pyproject.toml (newest versions its ranges allow), for every platform and Python
# it supports; then `make test` to check them before committing it.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --extra lint --extra beam --extra jax --extra bench --extra serve --extra onnx \
		--universal --generate-hashes --custom-compile-command "make lock" --quiet -o requirements.txt

# Ingest the shipped sample, train on CPU from the trunk this project ships (offline: no ImageNet
# weights; configs/demo.yaml says the recipe and its cost), evaluate, detect one photo, say what next.
DEMO_RUN ?= demo-$(shell date +%Y%m%d-%H%M%S)
demo: $(STAMP)
	$(PY) generate_dataset.py data/demo/train+val.txt --labels data/demo/labels.txt --out data/records --config configs/demo-data.yaml
	$(PY) generate_dataset.py --verify data/records
	$(PY) train.py --config configs/demo.yaml --data data/records --run $(DEMO_RUN)
	$(PY) evaluate.py --model model_save/$(DEMO_RUN) --data data/records --out report/$(DEMO_RUN)
	$(PY) detect.py data/demo/photos/0139.jpg --model model_save/$(DEMO_RUN)
	@echo
	@echo "The demo made: data/records (the dataset), model_save/$(DEMO_RUN) (the model bundle),"
	@echo "log/$(DEMO_RUN) (history.csv, TensorBoard: .venv/bin/tensorboard --logdir log) and"
	@echo "report/$(DEMO_RUN)/index.html (the evaluation report: open it in a browser)."
	@echo "Next, with your own data (source .venv/bin/activate first):"
	@echo "  # 1. your list of id,url,l0..l12 lines -> records, then a model (add --weights imagenet when Keras' file is at hand)"
	@echo "  python generate_dataset.py MY_LIST.txt --labels MY_LABELS.txt --out data/mine"
	@echo "  python train.py --data data/mine --weights data/pretrained/densenet121-clothing.weights.h5 --run mine"
	@echo "  # 2. detect every photo of a folder (the demo's model here; yours is model_save/mine)"
	@echo "  python detect.py MY_PHOTOS/ --model model_save/$(DEMO_RUN) --json detections.json"
	@echo "  # 3. evaluate with the HTML report"
	@echo "  python evaluate.py --model model_save/$(DEMO_RUN) --data data/records --out report/$(DEMO_RUN)"

# Two test processes (pytest-xdist): most tests wait on a TensorFlow start-up or a child process, so two
# at once fit CI's 2 cores (here, 2026-12-07: 204 tests, pytest 22:34 with the machine quiet; --dist worksteal with
# an eager replica test took 28:48 on a fresh clone (210 tests): neither kept; install ~1 min).
# PYTEST_ARGS= runs serially.
PYTEST_ARGS ?= -n 2
test: $(STAMP) browser
	$(PY) -m pytest $(PYTEST_ARGS)

# serve.py's page is tested in a real browser: Debian's chromium driven by selenium through its chromedriver
# (pip and `playwright install` cannot fetch a browser build here; apt-get can). Installed when missing, as
# root or with sudo; without apt-get, say what to install (the browser test then fails naming it).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if command -v apt-get >/dev/null; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    echo "installing chromium and chromium-driver with apt-get (serve.py's page is tested in a browser)"; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "warning: install chromium and chromedriver (on PATH) for the browser test of serve.py's page"; \
	  fi; }

test-fast: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow"

# ruff (style), mypy (types, on the package), import-linter (imports point down the layers: ARCHITECTURE.md).
# .pre-commit-config.yaml runs the same three.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench-ingest: $(STAMP)
	$(PY) bench/ingest.py

clean:
	rm -rf data/records data/cache .pytest_cache .ruff_cache bench/out log/demo-* model_save/demo-* report/demo-*
