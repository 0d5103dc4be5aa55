# Two entry points on a fresh machine: `make demo` and `make test` (both set up .venv first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean gguf-converter

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU wheel of torch (other versions pull a multi-GB CUDA build); tests and --device only
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# megatron-core in a venv of its own (never a dependency of the project): the Megatron oracle
.venv-mcore/.installed: Makefile
	$(PYTHON) -m venv .venv-mcore
	.venv-mcore/bin/python -m pip install -q torch==2.13.0
	.venv-mcore/bin/python -m pip install -q megatron-core==0.16.1 numpy
	touch $@

demo: setup
	$(PY) examples/demo.py

test: setup .venv-mcore/.installed
	$(PY) -m pytest

# llama.cpp's converter for `prune-surgery gguf`, fetched ahead of time (otherwise on first use)
gguf-converter: setup
	$(PY) -m prune_surgery.llamacpp.converter

bench: setup
	$(PY) bench/run_bench.py

clean:
	rm -rf $(VENV) .venv-mcore demo bench/work
