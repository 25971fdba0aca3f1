# The two set-up commands of the README:
#   make demo   create .venv, install fairhpc, run the embedded-default grid (offline, CPU)
#   make test   create .venv, install fairhpc with its test tools, run the test suite
PYTHON     ?= python3
VENV       ?= .venv
# CPU wheel here; on a cluster use e.g. TORCH_SPEC="torch==2.13.0" with the CUDA index of your site
TORCH_SPEC ?= torch==2.13.0
CORES      ?= 2
BIN        := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	# deepspeed builds against the torch above: no build isolation
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[dev,bench]"
	touch $@

install: $(VENV)/.installed

demo: install
	snakemake --cores $(CORES)

test: install
	# two workers (this machine's cores); each test file runs whole on one worker (shared fixtures train once)
	python -m pytest -q -n 2 --dist loadfile

lint: install
	snakemake --lint
	ruff check fairhpc kernels benchmarks tests

bench: install
	snakemake --cores $(CORES) bench_fair_loss

clean:
	rm -rf .snakemake results runs logs
