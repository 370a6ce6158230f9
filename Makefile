# Two commands for a fresh machine (Python 3.11 and the package registries):
#   make demo   install into .venv and run the pipeline on the built-in demo corpus
#   make test   install into .venv and run the whole test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): setup.py
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

test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python -m pytest -q -ra

bench: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python bench/preprocess.py
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python bench/lstm_speed.py

clean:
	rm -rf work .pytest_cache
