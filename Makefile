# Two commands for a fresh machine (Python 3.11, 3.12 or 3.13, and the package registries):
#   make demo   install into .venv and run the pipeline on the built-in demo corpus
#   make test   install into .venv and run the whole test suite
#   make test-fast   the same without the tests marked slow
# PYTHON: the newest of python3.13, 3.12, 3.11 that runs (a pyenv shim on the PATH may
# exist and still fail, so each is run, not looked up); `make PYTHON=/path/python` wins.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11; do \
	$$p -c 'import sys; assert (3, 11) <= sys.version_info[:2] <= (3, 13)' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test test-fast install bench clean

$(STAMP): setup.py
	@test -n "$(PYTHON)" || { echo "make: no python3.13, python3.12 or python3.11 runs here; install one or give PYTHON=/path/to/python" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lmpipe preprocess --config pipeline_config.yaml
	$(BIN)/lmpipe train --config pipeline_config.yaml
	$(BIN)/lmpipe export --config pipeline_config.yaml
	@latest=$$(ls work/export/lm | grep -E '^[0-9]+$$' | sort -n | tail -1); \
	for method in greedy beam_search sample top_k top_p; do \
	  echo "== $$method"; \
	  $(BIN)/lmpipe generate --export-dir work/export/lm/$$latest --method $$method \
	    --max-new-tokens 20 --min-new-tokens 8 "the for statement" || exit 1; \
	done; \
	echo "dataset: work/data/  MLflow: sqlite:///work/mlflow.db (mlflow ui --backend-store-uri sqlite:///work/mlflow.db)"; \
	echo "exported model: work/export/lm/$$latest  serve it: $(BIN)/lmpipe serve"

# Two test processes (pytest-xdist), each test file whole in one of them (its module
# fixtures built once): 327 tests in 12.7 min on 2 cores against 33.9 min in one process.
TEST_WORKERS ?= 2
PYTEST = TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

bench: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python bench/preprocess.py
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python bench/lstm_speed.py

clean:
	rm -rf work .pytest_cache
