# The two set-up commands of the README:
#   make demo   create .venv, install fairhpc, run the embedded-default grid (offline, CPU)
#   make test   create .venv, install fairhpc with its test tools, run the test suite
PYTHON     ?= python3
VENV       ?= .venv
# CPU wheel here; on a cluster: TORCH_INDEX=https://download.pytorch.org/whl/cu128 (or your site's index)
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# every package's version, as the test suite passed with them (refreshed by `make lock`)
CONSTRAINTS ?= constraints.txt
CORES      ?= 2
BIN        := $(abspath $(VENV))/bin
PIP        := $(BIN)/python -m pip install -q -c $(abspath $(CONSTRAINTS))
export PATH := $(BIN):$(PATH)

.PHONY: install demo test test-fast lint bench clean lock

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	# deepspeed builds against the torch above: no build isolation
	$(PIP) --no-build-isolation -e ".[dev,bench]"
	touch $@

install: $(VENV)/.installed

demo: install
	snakemake --cores $(CORES)

# three workers on two cores: the third runs while the others wait on subprocesses, Snakemake and SLURM;
# each test file runs whole on one worker (shared fixtures train once), longest files first (tests/conftest.py)
PYTEST     := python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder

test: install
	$(PYTEST)

# the everyday loop: every test but the long integration runs (marked slow: SLURM, whole workflows, op builds)
test-fast: install
	$(PYTEST) -m "not slow"

lint: install
	snakemake --lint
	ruff check fairhpc kernels benchmarks tests

bench: install
	snakemake --cores $(CORES) bench_fair_loss

# Refresh constraints.txt: the newest releases that pyproject.toml admits, resolved in a new virtual
# environment (LOCK_VENV), frozen with their exact versions.  Run `make test` with the result before committing.
LOCK_VENV ?= .venv-lock
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(LOCK_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(LOCK_VENV)/bin/python -m pip install -q --no-build-isolation -e ".[dev,bench]"
	$(LOCK_VENV)/bin/python scripts/lock.py $(LOCK_VENV)/bin/python $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)

clean:
	rm -rf .snakemake results runs logs
