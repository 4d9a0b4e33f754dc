# Quick start: `make demo` and `make test` work on a fresh machine (they create .venv).
# torch is pinned: on the CPU set-up machines `pip install torch==2.13.0` is a local CPU
# wheel, while any other requirement would download a multi-GB CUDA build.  The
# extension is built against that torch with --no-build-isolation for the same reason.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.deps-stamp
BUILT := $(VENV)/.built-stamp
# Records TORCH_SPEC, dated when the venv's torch was installed: checked on every make, a
# torch that does not satisfy TORCH_SPEC is replaced, and a changed torch rebuilds the extension.
TORCH_STAMP := $(VENV)/.torch-stamp
SOURCES := setup.py $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)
DEPS := numpy ninja pybind11 tqdm pytest pytest-benchmark mnist1d scikit-learn matplotlib
# Only the tests, the benchmarks and CI need these.  triton (1 GB): on a CPU machine it
# serves only the Triton kernels' interpreter tests and their compile check (the GPU
# machines use the Triton that ships with their torch, 3.4 or later); pykeops: a peer row
# of the benchmark.
TEST_DEPS := hypothesis pykeops pytest-xdist triton==3.9.0
TEST_STAMP := $(VENV)/.test-deps-stamp

.PHONY: venv build demo test test-all bench cmake-cpu cmake-cuda-kernels clean FORCE

venv: $(TORCH_STAMP)
$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q $(DEPS)
	touch $@

$(TORCH_STAMP): $(STAMP) FORCE
	@$(PY) tools/torch_spec.py "$(TORCH_SPEC)" $@

$(TEST_STAMP): $(STAMP) Makefile
	$(PIP) install -q $(TEST_DEPS)
	touch $@

build: $(BUILT)
$(BUILT): $(TORCH_STAMP) $(SOURCES)
	PYHYPERSPHERE_CUDA=$${PYHYPERSPHERE_CUDA:-auto} MAX_JOBS=$${MAX_JOBS:-2} \
	  $(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

demo: build
	$(PY) -m pyhypersphere demo

# The fast, complete suite (CI runs this).  Long tests are marked `slow`.  Its tests run
# in TEST_WORKERS processes (pytest-xdist): most are single-threaded (the Triton
# interpreter, small CPU shapes, subprocesses), so two workers use both cores.
TEST_WORKERS ?= 2
test: build $(TEST_STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" tests

test-all: build $(TEST_STAMP)
	$(PY) -m pytest -q tests

bench: build $(TEST_STAMP)
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-columns=median,iqr,rounds -q

# The C++ library and the Python-free CPU benchmark, against LibTorch from the venv.
cmake-cpu: $(TORCH_STAMP)
	cmake -S . -B build/cmake-cpu -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
	cmake --build build/cmake-cpu -j 2

# Every .cu file through nvcc, without torch or a GPU.
cmake-cuda-kernels:
	cmake -S . -B build/cmake-cuda -DPYHYPERSPHERE_CUDA_KERNELS_ONLY=ON -DCMAKE_BUILD_TYPE=Release
	cmake --build build/cmake-cuda

clean:
	rm -rf build *.egg-info pyhypersphere/*.so $(BUILT)
