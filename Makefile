# Two commands for a fresh machine (Python 3.11 + pip; no GPU needed):
#   make demo   # install into .venv, then run the main job (SST-2 + MiniLM-L6, BitFit, 2 MPI ranks)
#   make test   # install into .venv (with the dev extra), then run the test suite
PYTHON ?= python3
VENV   ?= .venv
NP     ?= 2
CONFIG ?= configs/sst2_minilm_bitfit.yaml
ROOT_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-run-as-root,)

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/mpirun $(ROOT_FLAGS) --oversubscribe --bind-to none -n $(NP) \
		$(VENV)/bin/python -m hpcfed.main config=$(CONFIG) $(ARGS)

test: install
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) data_cache runs .pytest_cache
