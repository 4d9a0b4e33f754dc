#!/usr/bin/env bash
# A kernel change on a lent GPU, in one short call: build the working tree's extension,
# run the CUDA tests and the backend cross-check, then time the same calls with the
# previous build (a gpubuild.tgz that benchmarks/gpu_run.sh wrote to its $OUT) and the
# new one, alternately, in fresh processes (benchmarks/gpu_profile.py).  "old" is the old
# extension under the working tree's Python package: for kernel changes, not Python ones.
#
#   OUT=dir bash benchmarks/gpu_compare_builds.sh path/to/old/gpubuild.tgz
#
# GPU_COMPARE_CASES: "dtype --grad|--no-grad [more gpu_profile.py flags]" items separated
# by commas (default bf16 and float32, each with and without the gradient; MoCo's queue
# shape is "bfloat16 --grad --n 256 --queue 65536"); GPU_COMPARE_N (default 65536).
# $OUT/summary.txt gets a line per step; the logs stay in $OUT.
set -u
OLD=${1:?usage: gpu_compare_builds.sh OLD_GPUBUILD_TGZ}
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
ROOT=$PWD
START=$(date +%s)
note() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$OUT/summary.txt"; }
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 PYTHONPATH=$ROOT
# The image's extension builds need the system libstdc++ for C++ errors (docs/results/gpu.md).
export LD_PRELOAD=$(g++ -print-file-name=libstdc++.so.6)
so=$(tar tzf "$OLD" | grep '^pyhypersphere/_C.*\.so$') || { echo "no extension in $OLD" >&2; exit 1; }
mkdir -p /tmp/old_build && cp -r pyhypersphere /tmp/old_build/ && tar xzf "$OLD" -C /tmp/old_build "$so"

TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} PYHYPERSPHERE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} \
  timeout 150 python3 setup.py build_ext --inplace >"$OUT/build.log" 2>&1
rc=$?
note "build rc=$rc"
((rc == 0)) || exit 1  # else "new" would time whatever extension the tree holds
PT="timeout 90 python3 -m pytest -q -p no:cacheprovider -rfE"
$PT -n 6 tests/test_cuda.py -m "not slow" >"$OUT/test_cuda.log" 2>&1 &
p1=$!
timeout 90 python3 benchmarks/gpu_crosscheck.py --json "$OUT/crosscheck.json" >"$OUT/crosscheck.log" 2>&1 &
p2=$!
wait $p1; note "test_cuda rc=$? $(tail -1 "$OUT/test_cuda.log")"
wait $p2; note "crosscheck rc=$? $(tail -1 "$OUT/crosscheck.log")"

IFS=, read -ra cases <<<"${GPU_COMPARE_CASES:-bfloat16 --grad,bfloat16 --no-grad,float32 --grad,float32 --no-grad}"
for case in "${cases[@]}"; do
  for build in old new; do
    path=$ROOT
    [[ $build == old ]] && path=/tmp/old_build
    # From /tmp, so that the package comes from PYTHONPATH and not the working directory.
    line=$(cd /tmp && PYTHONPATH=$path timeout 60 python3 "$ROOT/benchmarks/gpu_profile.py" --backend cuda \
      --n "${GPU_COMPARE_N:-65536}" --reps 7 --warmup 2 --dtype $case 2>&1 | tail -1)
    note "$build $line"
  done
done
