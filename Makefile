# Quick start: `make demo` (set up .venv, print the parity table), `make test` (set up, run the tests).
# Framework versions are make variables: e.g. `make test TORCH_SPEC="torch==2.5.1" TORCH_INDEX=...` on a GPU box.

PYTHON ?= python3
VENV ?= .venv
# Exactly this version: it is the CPU wheel on this machine's disk; a range would fetch a CUDA build.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
MINDSPORE_SPEC ?= mindspore>=2.3
JITTOR_SPEC ?= jittor>=1.3.9
# MindSpore's compiled ops need NumPy 1.x.
NUMPY_SPEC ?= numpy<2
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (0: one process, the default). Each test file runs whole on
# one worker, so its module fixtures are built once; each worker after the first gets a Jittor
# kernel cache of its own (tests/conftest.py). Two workers took 9:41 against 16:16 warm on 2 cores,
# but one run of five failed MindSpore's two-process launch (its ring all-reduce timed out while
# the other worker held the cores; now MS_NODE_TIMEOUT), and in a sixth a worker segfaulted in
# MindSpore's libmindspore_cluster.so and xdist hung after replacing it, so CI stays in one process.
PYTEST_WORKERS ?= 0

# Jittor reads these at import: offline it must not download oneDNN (use_mkl=0), and with nvcc
# installed but no GPU it must not look for CUDA (nvcc_path=""). The user's own settings win.
export use_mkl ?= 0
ifeq ($(origin nvcc_path),undefined)
ifeq ($(shell nvidia-smi -L 2>/dev/null),)
export nvcc_path :=
endif
endif

BIN := $(VENV)/bin
STAMP := $(VENV)/.rbn-installed

.PHONY: demo test parity bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet "$(NUMPY_SPEC)" "$(MINDSPORE_SPEC)" "$(JITTOR_SPEC)" -e ".[all,test]"
	touch $@

demo: install
	$(BIN)/rbn parity

parity: demo

test: install
	$(BIN)/python -m pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

bench: install
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
