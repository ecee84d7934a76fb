# `make test` and `make bench` set everything up on a fresh machine.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# The CPU wheel of torch 2.13 is the one this project is tested with; any
# torch >= 2.6 builds (override TORCH_SPEC, or reuse a venv that has one).
TORCH_SPEC ?= torch==2.13.0
DEPS := $(VENV)/.deps-installed
ARGS ?=

.PHONY: test bench build clean nvcc-check

$(PYTHON):
	$(PY) -m venv $(VENV)

$(DEPS): | $(PYTHON)
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q setuptools wheel numpy ninja pybind11 pytest matplotlib scikit-learn
	touch $@

build: $(DEPS)
	$(PYTHON) -m pip install -q --no-build-isolation -e .

# Compile-check the CUDA kernel headers with nvcc for sm_90 (no GPU needed).
nvcc-check:
	@if command -v nvcc >/dev/null 2>&1; then \
	  echo "nvcc-check: compiling csrc/cuda/check_compile.cu for sm_90"; \
	  nvcc -std=c++17 -arch=sm_90 -c csrc/cuda/check_compile.cu -o /tmp/samplewt_nvcc_check.o; \
	else echo "nvcc-check: nvcc not found, skipped"; fi

test: build nvcc-check
	$(PYTHON) -m pytest -q tests

bench: build
	$(PYTHON) benchmarks/bench.py $(ARGS)

clean:
	rm -rf build *.egg-info samplewt_ops/_C*.so
