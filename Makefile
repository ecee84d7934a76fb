# `make test` and `make bench` set everything up on a fresh machine.
#
#   make test             .venv (torch 2.13.0 CPU): build the CPU extension, nvcc-check, pytest
#   make bench            the benchmark suite in .venv (ARGS=--quick for a subset)
#   make nvcc-check       compile-check the CUDA kernels with nvcc alone (no torch, no GPU)
#   make test-cuda-build  .venv-cuda (torch 2.14.1, CUDA 13.0): build the CUDA extension
#                         without a GPU, check every op has a CUDA kernel, run pytest
#   make gpu-check        on a GPU machine, with its own python/torch: build, tests with CUDA,
#                         compute-sanitizer, GPU benchmark, one summary (tools/gpu_check.py)
#   make gpu-check-dry-run  the same without a GPU, in .venv-cuda: each step says "no GPU"
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# Tested torch versions: 2.13.0 CPU (make test, here), 2.14.1 with CUDA 13.0 (make
# test-cuda-build, here, without a GPU), 2.11 with CUDA 13.0 on the GPU machines (make
# gpu-check). Other versions may build; they are not tested. TORCH_SPEC overrides the
# pin; a venv that already has a torch keeps it.
TORCH_SPEC ?= torch==2.13.0
DEPS := $(VENV)/.deps-installed
TEST_DEPS := setuptools wheel ninja pytest expecttest numpy
# make bench's extras (pyproject's [bench]): charts, and the digits dataset.
BENCH_DEPS := matplotlib scikit-learn
ARGS ?=
MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
export MAX_JOBS

.PHONY: test bench build clean nvcc-check test-cuda-build _test-cuda-build cuda-venv cuda-tree gpu-check gpu-check-dry-run

$(PYTHON):
	$(PY) -m venv $(VENV)

$(DEPS): | $(PYTHON)
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q $(TEST_DEPS) $(BENCH_DEPS)
	touch $@

build: $(DEPS)
	@echo "build: pip install --no-build-isolation -e . (MAX_JOBS=$(MAX_JOBS))"
	@start=$$(date +%s); $(PYTHON) -m pip install -q --no-build-isolation -e . \
	  && echo "build: built in $$(( $$(date +%s) - start )) s"

# Compile-check the CUDA kernels with nvcc for sm_90 (no GPU, no torch needed). The C++
# standard is the one the torch of $(STD_PYTHON) requires (setup.py --print-cxx-std reads
# its headers without importing it): c++17 up to torch 2.13, c++20 from 2.14; c++17 when
# there is no such python yet. (make test-cuda-build passes STD_PYTHON=.venv-cuda's.)
STD_PYTHON ?= $(PYTHON)
NVCC_CHECK_SRC := $(wildcard csrc/cuda/standalone/check_compile.cu)
nvcc-check:
	@if ! command -v nvcc >/dev/null 2>&1; then echo "nvcc-check: nvcc not found, skipped"; \
	elif [ -z "$(NVCC_CHECK_SRC)" ]; then echo "nvcc-check: no check_compile.cu found, skipped"; \
	else std=$$($(STD_PYTHON) setup.py --print-cxx-std 2>/dev/null || echo c++17); \
	  echo "nvcc-check: compiling $(NVCC_CHECK_SRC) for sm_90 with -std=$$std"; \
	  nvcc -std=$$std -arch=sm_90 -c $(NVCC_CHECK_SRC) -o /tmp/samplewt_nvcc_check.$$$$.o \
	    && rm -f /tmp/samplewt_nvcc_check.$$$$.o; fi

test: build nvcc-check
	$(PYTHON) -m pytest -q tests

bench: build
	$(PYTHON) benchmarks/bench.py $(ARGS)

# ---------------------------------------------------------------------------------------
# make test-cuda-build: the CUDA build for real, on a machine with nvcc and no GPU.
#
# Why a copy of the tree: `pip install -e .` builds in the source tree, writing
# samplewt_ops/_C.<python tag>.so, build/ and *.egg-info there. Both venvs have the same
# python, so the same .so name: a CUDA build in the tree would replace the CPU one that
# .venv imports (and built against another torch, it would not load there). So the CUDA
# build gets a tree of its own, $(CUDA_TREE)/ (git-ignored): every file git tracks or
# would track (untracked, not ignored) is copied there with its timestamps, after the
# previous copy's files are removed (so a source deleted or moved here does not linger in
# the csrc/cuda/*.cu glob). Its build/ is kept, so ninja only recompiles what changed.
# .venv-cuda's editable install points at that copy, and pytest runs from inside it, so
# `import samplewt_ops` there can only find the CUDA build, and the CPU build in the main
# tree is never touched: `make test` keeps working in .venv afterwards.
# No TORCH_CUDA_ARCH_LIST, CUDA_HOME or CUDA_PATH is passed on (env -u): setup.py finds
# the toolkit and picks the default architectures itself, as it would for a new user.
# ---------------------------------------------------------------------------------------
CUDA_VENV ?= .venv-cuda
CUDA_PYTHON := $(abspath $(CUDA_VENV))/bin/python
CUDA_TORCH_SPEC ?= torch==2.14.1
CUDA_TREE ?= build-cuda

$(CUDA_PYTHON):
	$(PY) -m venv $(CUDA_VENV)

cuda-tree:
	@mkdir -p $(CUDA_TREE)
	@find $(CUDA_TREE) -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  git ls-files -z --cached --others --exclude-standard \
	    | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C $(CUDA_TREE); \
	else \
	  tar --exclude='./.venv*' --exclude='./build*' --exclude='./.git' --exclude='*.so' \
	    --exclude='./.whl' -cf - . | tar -xf - -C $(CUDA_TREE); \
	fi
	@echo "cuda-tree: copied the sources to $(CUDA_TREE)/"

cuda-venv: | $(CUDA_PYTHON)
	$(CUDA_PYTHON) -m pip install -q "$(CUDA_TORCH_SPEC)" $(TEST_DEPS)

test-cuda-build:
	@if ! command -v nvcc >/dev/null 2>&1; then \
	  echo "test-cuda-build: skipped (no nvcc on PATH)"; \
	else $(MAKE) --no-print-directory _test-cuda-build; fi

_test-cuda-build: cuda-venv
	$(MAKE) --no-print-directory cuda-tree
	@echo "test-cuda-build: SAMPLEWT_CUDA=1 pip install --no-build-isolation -e . in $(CUDA_TREE)/ (MAX_JOBS=$(MAX_JOBS))"
	@start=$$(date +%s); \
	cd $(CUDA_TREE) && env -u TORCH_CUDA_ARCH_LIST -u CUDA_HOME -u CUDA_PATH SAMPLEWT_CUDA=1 \
	  $(CUDA_PYTHON) -m pip install -q --no-build-isolation -e . \
	  && echo "test-cuda-build: built in $$(( $$(date +%s) - start )) s"
	cd $(CUDA_TREE) && $(CUDA_PYTHON) tools/gpu_check.py --check-kernels
	$(MAKE) --no-print-directory nvcc-check STD_PYTHON=$(CUDA_PYTHON)
	cd $(CUDA_TREE) && $(CUDA_PYTHON) -m pytest -q tests

# ---------------------------------------------------------------------------------------
# make gpu-check: everything that needs a GPU, on a GPU machine, with that machine's own
# python and torch (no venv; GPU_PYTHON=... picks another): builds in this tree, runs the
# suite with CUDA, compute-sanitizer, the GPU benchmark, and prints one summary. Wheels
# from the git-ignored .whl/ (liger-kernel) are used when present. See tools/gpu_check.py.
# make gpu-check-dry-run: the same script without a GPU, in .venv-cuda and in the
# $(CUDA_TREE)/ copy (so the CPU build here is not replaced): every step runs up to where
# it needs the GPU and says "no GPU"; its exit code 2 (= no GPU, nothing failed) is a pass.
# ---------------------------------------------------------------------------------------
GPU_PYTHON ?= python3

gpu-check:
	$(GPU_PYTHON) tools/gpu_check.py $(ARGS)

gpu-check-dry-run: cuda-venv
	$(MAKE) --no-print-directory cuda-tree
	@if [ -d .whl ]; then rm -rf $(CUDA_TREE)/.whl && cp -a .whl $(CUDA_TREE)/.whl; fi
	@cd $(CUDA_TREE) && $(CUDA_PYTHON) tools/gpu_check.py $(ARGS); rc=$$?; \
	  if [ $$rc -eq 2 ]; then echo "gpu-check-dry-run: ok (exit 2 = no GPU, nothing failed)"; exit 0; fi; exit $$rc

clean:
	rm -rf build *.egg-info samplewt_ops/_C*.so $(CUDA_TREE)
