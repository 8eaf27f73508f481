# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help demo test test-fast lint bench-ingest clean

help:
	@echo "make demo      - set up .venv, ingest the shipped sample (data/sample) into data/records, verify it,"
	@echo "                 train 3 epochs from scratch on CPU (model_save/demo-*/, log/demo-*/), print the metrics,"
	@echo "                 and detect the labels of one sample photo"
	@echo "make test      - set up .venv and run the whole test suite (what CI runs)"
	@echo "make test-fast - the tests not marked slow (no end-to-end training): under 2 minutes"
	@echo "make lint      - ruff check and ruff format --check"
	@echo "make bench-ingest - ingestion benchmark (bench/ingest.py), prints ratios"
	@echo "make clean     - remove data/records, data/cache and caches (keeps .venv)"

# The project installed in place (editable) with its test and lint tools and Apache Beam (the tests run
# --engine beam); re-installed only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint,beam]'
	touch $(STAMP)

# Ingest the shipped sample, then train a few minutes on CPU from scratch (offline: no ImageNet weights).
DEMO_RUN ?= demo-$(shell date +%Y%m%d-%H%M%S)
demo: $(STAMP)
	$(PY) generate_dataset.py data/sample/train+val.txt --labels data/sample/labels.txt --out data/records
	$(PY) generate_dataset.py --verify data/records
	$(PY) train.py --data data/records --weights none --image-size 96 --epochs 3 --run $(DEMO_RUN)
	$(PY) detect.py data/sample/photos/0491.jpg --model model_save/$(DEMO_RUN)

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The benchmarks' extra dependencies (scikit-image: the reference in bench/ingest.py).
$(VENV)/.installed-bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,lint,beam,bench]'
	touch $@

bench-ingest: $(VENV)/.installed-bench
	$(PY) bench/ingest.py

clean:
	rm -rf data/records data/cache .pytest_cache .ruff_cache bench/out log/demo-* model_save/demo-*
