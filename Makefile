# The README's two commands. Both create .venv and install everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export TOKENIZERS_PARALLELISM := false
# MLproject commands run `python`: make it the venv's, as an activated venv would.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup study test test-slow bench clean

$(BIN)/reverse-align: pyproject.toml requirements-cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-cpu.txt -e '.[dev]'
	touch $@

setup: $(BIN)/reverse-align

# The whole study on the embedded default (tiny preset), into ./mlflow.db.
study: setup
	$(BIN)/mlflow run . -e main --env-manager local

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow -s

clean:
	rm -rf $(VENV) mlflow.db mlruns
