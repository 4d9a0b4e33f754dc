#!/usr/bin/env bash
# Compile check of the CUDA side on a machine without a GPU (and without a CUDA torch):
#   1. the kernels-only CMake build (cmake/cuda_kernels.cmake): every csrc/cuda/*.cu
#      through nvcc, the standalone benchmark, and the host tests of the kernels'
#      closed-form tile order, tile-size rule, element mapping and turn rule, which are then run;
#   2. the torch glue (csrc/cuda/*.cpp) syntax-checked against torch's headers with
#      -DPYHYPERSPHERE_WITH_CUDA (the CPU torch wheel ships the ATen/c10 CUDA headers).
# Prints a skip line and exits 0 when nvcc is not found.
#
# Environment: NVCC (default: nvcc on PATH), CUDA_HOME (default /usr/local/cuda),
# PY (default .venv/bin/python), CUDA_ARCHS (default 90; "80;90" builds what setup.py
# ships, about twice the time), JOBS (default 2), BUILD_DIR (default build/cmake-cuda-ci).
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-$(command -v nvcc || true)}
if [[ -z "$NVCC" ]]; then
  echo "cuda_compile_check: nvcc not found, skipping the CUDA compile check"
  exit 0
fi
PY=${PY:-.venv/bin/python}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
ARCHS=${CUDA_ARCHS:-90}
BUILD_DIR=${BUILD_DIR:-build/cmake-cuda-ci}
start=$(date +%s)

echo "== nvcc: every csrc/cuda/*.cu, the benchmark, the tile-order, tile-size, tile-element and tile-state tests (archs $ARCHS)"
mkdir -p "$(dirname "$BUILD_DIR")"
cmake -S . -B "$BUILD_DIR" -DPYHYPERSPHERE_CUDA_KERNELS_ONLY=ON -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" > "$BUILD_DIR.configure.log" 2>&1 \
  || { cat "$BUILD_DIR.configure.log"; exit 1; }
cmake --build "$BUILD_DIR" -j "${JOBS:-2}"
"$BUILD_DIR/tile_order_test"
"$BUILD_DIR/tile_size_test"
"$BUILD_DIR/tile_elements_test"
"$BUILD_DIR/tile_states_test"

echo "== g++ -fsyntax-only: the torch glue with -DPYHYPERSPHERE_WITH_CUDA"
if [[ ! -f "$CUDA_HOME/include/cuda_runtime_api.h" ]]; then
  echo "cuda_compile_check: $CUDA_HOME/include/cuda_runtime_api.h not found (set CUDA_HOME)" >&2
  exit 1
fi
mapfile -t TORCH_INCLUDES < <("$PY" -c \
  'from torch.utils.cpp_extension import include_paths; print("\n".join(include_paths()))')
SYSTEM_INCLUDES=()
for dir in "${TORCH_INCLUDES[@]}" "$CUDA_HOME/include"; do SYSTEM_INCLUDES+=(-isystem "$dir"); done
# C10_CUDA_NO_CMAKE_CONFIGURE_FILE: the CPU wheel lacks c10's generated cuda_cmake_macros.h.
for src in csrc/cuda/*.cpp; do
  "${CXX:-g++}" -std=c++17 -fsyntax-only -Wall -Wextra -Werror -DPYHYPERSPHERE_WITH_CUDA \
    -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -Icsrc "${SYSTEM_INCLUDES[@]}" "$src"
  echo "ok  $src"
done
echo "cuda_compile_check: passed in $(( $(date +%s) - start )) s"
