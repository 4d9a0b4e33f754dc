#!/usr/bin/env bash
# Compile check of the CUDA side on a machine without a GPU (and without a CUDA torch):
#   1. the kernels-only CMake build (cmake/cuda_kernels.cmake) for every arch of
#      CUDA_ARCHS: every csrc/cuda/*.cu through nvcc, the standalone smoke test, and the
#      host tests of the row kernel's fragment layouts (mma_layout_test), work split,
#      parts and algorithm (rowblock_plan_test) and block-size rule (tile_size_test),
#      which are then run;
#   2. per arch, one line per uniformity row kernel from its SASS (tools/sass_loop_stats.py):
#      arch= kernel= dtype= tensor_core= regs= spills= gemms_per_tile= exps_per_pair=
#      nonmma_per_pair= ; fails on a spill or a stack frame, and on more than 16 non-MMA
#      instructions per pair for a bf16, fp16 or TF32 kernel.  CUDA_GATE_BUDGET=warn is an
#      opt-out that reports every kernel over the budget without failing;
#   3. the torch glue (csrc/cuda/*.cpp) syntax-checked against torch's headers with
#      -DPYHYPERSPHERE_WITH_CUDA (the CPU torch wheel ships the ATen/c10 CUDA headers).
# Prints a skip line and exits 0 when nvcc is not found.
#
# Environment: NVCC (default: nvcc on PATH), CUDA_HOME (default /usr/local/cuda),
# PY (default .venv/bin/python), CUDA_ARCHS (default "80;86;90"), JOBS (default 2),
# BUILD_DIR (default build/cmake-cuda-ci), CUOBJDUMP (default: CUDA_HOME's, else the one
# Triton ships), CUDA_GATE_BUDGET (fail, the default, or warn: the opt-out above).
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-$(command -v nvcc || true)}
if [[ -z "$NVCC" ]]; then
  echo "cuda_compile_check: nvcc not found, skipping the CUDA compile check"
  exit 0
fi
PY=${PY:-.venv/bin/python}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
ARCHS=${CUDA_ARCHS:-80;86;90}
BUILD_DIR=${BUILD_DIR:-build/cmake-cuda-ci}
start=$(date +%s)

echo "== nvcc: every csrc/cuda/*.cu, the smoke test, the host tests (archs $ARCHS)"
mkdir -p "$(dirname "$BUILD_DIR")"
cmake -S . -B "$BUILD_DIR" -DPYHYPERSPHERE_CUDA_KERNELS_ONLY=ON -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" > "$BUILD_DIR.configure.log" 2>&1 \
  || { cat "$BUILD_DIR.configure.log"; exit 1; }
cmake --build "$BUILD_DIR" -j "${JOBS:-2}"
"$BUILD_DIR/mma_layout_test"
"$BUILD_DIR/rowblock_plan_test"
"$BUILD_DIR/tile_size_test"

echo "== SASS of the row kernels: registers, spills, the main loop's instruction mix"
CUOBJDUMP=${CUOBJDUMP:-$CUDA_HOME/bin/cuobjdump}
if [[ ! -x "$CUOBJDUMP" ]]; then
  CUOBJDUMP=$("$PY" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump"))')
fi
object=$(find "$BUILD_DIR" -name 'uniform_kernels.cu.o' | head -1)
[[ -n "$object" ]] || { echo "cuda_compile_check: uniform_kernels.cu.o not found under $BUILD_DIR" >&2; exit 1; }
status=0
for arch in ${ARCHS//;/ }; do
  "$CUOBJDUMP" -sass -arch "sm_$arch" "$object" > "$BUILD_DIR/uniform_kernels.sm_$arch.sass"
  "$CUOBJDUMP" -res-usage -arch "sm_$arch" "$object" > "$BUILD_DIR/uniform_kernels.sm_$arch.res"
  "$PY" tools/sass_loop_stats.py --arch "$arch" --sass "$BUILD_DIR/uniform_kernels.sm_$arch.sass" \
    --res-usage "$BUILD_DIR/uniform_kernels.sm_$arch.res" --budget "${CUDA_GATE_BUDGET:-fail}" || status=1
done
[[ $status == 0 ]] || { echo "cuda_compile_check: the SASS gate failed" >&2; exit 1; }

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
