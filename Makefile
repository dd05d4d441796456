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

.PHONY: setup lock study test test-slow bench clean

# Every package at the version and hash of requirements-lock.txt (`make lock` writes it), then the
# project itself without dependencies. torch is the CPU wheel (torch==2.13.0+cpu, one hash): pip finds
# it through its find-links (/opt/wheels on this project's machines; elsewhere e.g.
# PIP_FIND_LINKS=https://download.pytorch.org/whl/cpu/torch/ make setup), never a CUDA build from PyPI.
# pip itself first, from requirements-pip.txt (pinned, hashed): Python 3.11's pip 23.2 refuses the lock's
# extras (typepy[datetime]) in --require-hashes mode.
$(BIN)/reverse-align: pyproject.toml requirements-lock.txt requirements-pip.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements-pip.txt
	$(BIN)/pip install --quiet --require-hashes -r requirements-lock.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

setup: $(BIN)/reverse-align

# The whole study on the embedded default (tiny preset), into ./mlflow.db.
study: setup
	$(BIN)/mlflow run . -e main --env-manager local

# Rewrites requirements-lock.txt from pyproject.toml (its dev extra), Python 3.11, with sha256 hashes,
# and requirements-pip.txt (the pip that installs it).
# uv keeps the versions the lock already has; new or changed requirements are resolved anew
# (`make lock UPGRADE=--upgrade` moves everything to the newest release). uv lives in its own venv.
LOCK_VENV := .venv-lock
TORCH_PIN := torch==2.13.0+cpu
TORCH_WHEELS ?= /opt/wheels
UV_VERSION := 0.13.9
PIP_VERSION := 26.3
UPGRADE ?=
lock:
	test -x $(LOCK_VENV)/bin/uv || ($(PY) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install --quiet uv==$(UV_VERSION))
	echo '$(TORCH_PIN)' > $(LOCK_VENV)/torch-pin.txt
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
		--find-links $(TORCH_WHEELS) -c $(LOCK_VENV)/torch-pin.txt --custom-compile-command 'make lock' --no-strip-extras \
		--quiet $(UPGRADE) -o requirements-lock.txt
	echo 'pip==$(PIP_VERSION)' > $(LOCK_VENV)/pip.in
	$(LOCK_VENV)/bin/uv pip compile $(LOCK_VENV)/pip.in --generate-hashes --python-version 3.11 \
		--custom-compile-command 'make lock' --quiet -o requirements-pip.txt

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow -s

clean:
	rm -rf $(VENV) $(LOCK_VENV) mlflow.db mlruns
