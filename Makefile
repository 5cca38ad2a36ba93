# Two entry points for a fresh machine:
#   make repro   create .venv, install requirements, run the whole DVC pipeline
#   make test    create .venv, install requirements, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: repro test venv

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements.txt
	touch $@

repro: venv
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

test: venv
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest -q
