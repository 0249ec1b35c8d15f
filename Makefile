# `make demo` and `make test` each set up everything they need on a fresh Linux machine
# (a virtual environment in .venv with the CPU build of torch and r3hf's C++ extension).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# pytest-xdist workers for `make test` (auto: one per CPU core); whole test files go to one worker.
TEST_WORKERS ?= auto
SOURCES := pyproject.toml setup.py $(shell find csrc -type f 2>/dev/null)

.PHONY: setup demo test bench
setup: $(VENV)/.installed

$(VENV)/.installed: $(SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip setuptools wheel
	$(VENV)/bin/pip install -q $(TORCH) ninja
	$(VENV)/bin/pip install -q --no-build-isolation -e ".[test,demo,hf,trl]"
	touch $@

demo: setup
	$(VENV)/bin/r3hf demo

test: setup
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile
