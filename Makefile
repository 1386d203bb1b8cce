# risklens: `make demo` and `make test` each set up everything they need on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# A Python >= 3.12 to build the virtual environment from (pyenv shims for other versions fail, so probe).
PYTHON_BOOT ?= $(shell for p in python3.12 python3.13 /root/.pyenv/versions/3.12*/bin/python3 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1 && { command -v $$p || echo $$p; } && break; done)
VENV := .venv
PY := $(VENV)/bin/python
# Caches stay inside the repository.
export PIP_CACHE_DIR := $(CURDIR)/.cache/pip
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export NUMBA_CACHE_DIR := $(CURDIR)/.cache/numba
PYTEST_ARGS ?=

.PHONY: help setup demo test models serve bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: requirements.lock pyproject.toml setup.py protos/risklens/v1/risklens.proto service/risklens/audit/_join.c
	@test -n "$(PYTHON_BOOT)" || { echo "no Python >= 3.12 found; set PYTHON_BOOT"; exit 1; }
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The serial TreeSHAP kernels compiled ahead of time (numba.pycc, the system C compiler): no JIT start-up
# in batch workers and servers. Rebuilt whenever their sources or this machine's CPU changed (the stamp
# says which; a file date would miss a new CPU). Without them numba's JIT serves the same kernels.
setup: $(VENV)/.installed  ## create .venv with the pinned dependencies, generated stubs and compiled kernels
	@$(PY) -c 'from risklens.trees._aot import ensure_built; ensure_built()' >/dev/null || \
		echo "WARNING: TreeSHAP kernels not compiled ahead of time; numba's JIT will serve them"
	@# pip writes bytecode for what it installs, but not for an editable package; where Python may not
	@# write it either (PYTHONDONTWRITEBYTECODE, common in containers) every process compiled all of
	@# risklens again: ~0.5 s on each CLI call, server and worker start. Only changed files are redone.
	@$(PY) -m compileall -q service/risklens

demo: setup  ## start a server, explain the example claims over gRPC, write and verify the audit export
	$(PY) -m risklens.demo

test: setup  ## run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

models: setup  ## rebuild the bundled demo models from the synthetic claims generator
	$(PY) -m risklens.demo_models --out models

serve: setup  ## serve the bundled models on 127.0.0.1:50051
	$(VENV)/bin/risklens serve --models models --port 50051

bench: setup  ## run the benchmarks and print their tables
	for b in benchmarks/[a-z]*.py; do $(PY) $$b || exit 1; done

clean:  ## remove the environment and caches
	rm -rf $(VENV) .cache .pytest_cache var service/risklens/trees/_treeshap_aot.*
