#!/usr/bin/env bash
# The GPU validation run (issue 11) in one command, for a lent GPU machine (H100/H200:
# torch with CUDA, nvcc, ninja, pybind11, pytest; no package registry).
#
#   OUT=dir GPU_RUN_BUDGET=420 GPU_RUN_STAGES="build check bench" bash benchmarks/gpu_run.sh
#
# Stages (GPU_RUN_STAGES picks; default all three):
#   build  the extension with its CUDA kernels in place (setup.py build_ext --inplace,
#          TORCH_CUDA_ARCH_LIST, default 9.0) and the kernels-only CMake build (smoke test,
#          host tests), side by side; skipped when .gpubuild/gpubuild.tgz holds a build of
#          the same sources (it is written to $OUT after a build, to be carried back);
#   check  side by side: tests/test_cuda.py, tests/test_triton*.py on CUDA tensors, the
#          CUDA tests through the Triton backend, the rest of the suite (its CUDA cases;
#          tests/test_implementations.py: every GPU implementation of gpu_backend.TABLE),
#          the backend cross-check (benchmarks/gpu_crosscheck.py), compute-sanitizer
#          (memcheck, racecheck, synccheck) over the standalone smoke test
#          (GPU_RUN_SANITIZER=0 skips it);
#   bench  one at a time: uniform_bench_cuda, benchmarks/cuda_bars.py (both backends,
#          N = 1,048,576, a queue shape), the `pyhypersphere bench --device cuda` sweep, the
#          peers (FlexAttention, KeOps) each case in its own process; GPU_RUN_BENCH lists
#          the items and their order (uniform_bars: the bars of issues 23 and 24 by
#          benchmarks/gpu_bars.py, into $OUT/gpu_bars.json for docs/gpu_bars.json; standalone bars
#          sweep_float32 sweep_bfloat16 contrastive_clip contrastive_nt_xent peers);
#   profile  ncu (hardware counters, stall reasons) over one call per case of
#          GPU_RUN_PROFILE_CASES (loss:backend:dtype:grad|no-grad[:K]), N = GPU_RUN_PROFILE_N,
#          or with a K-row queue MoCo's N = 256 (runs between check and bench);
#   slow   tests/test_cuda.py -m slow (N = 1e5, 1e6, 64-bit offsets; about 60 GiB).
# After the build, benchmarks/error_path_check.py checks that C++ errors and warnings
# reach Python (see there); a failure is retried with the system libstdc++ preloaded.
# Every stage has a time cap and the whole run ends within GPU_RUN_BUDGET seconds, so the
# logs come back: $OUT/summary.txt (a line per stage), $OUT/logs.tgz (every log and JSON).
# pykeops/keopscore wheels in .whl/ are installed to /tmp/site first when present.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
LOG=$OUT/logs
mkdir -p "$LOG"
BUDGET=${GPU_RUN_BUDGET:-420}
STAGES=${GPU_RUN_STAGES:-build check bench}
START=$(date +%s)
SUMMARY=$OUT/summary.txt
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
PY=${PY:-python3}

left() { echo $((BUDGET - ($(date +%s) - START))); }
note() { echo "$*" | tee -a "$SUMMARY"; }
# run NAME CAP CMD...: CMD under `timeout` (CAP, or less when the budget runs out), output
# to $LOG/NAME.log, a summary line with rc and seconds.
run() {
  local name=$1 cap=$2 l t s rc
  shift 2
  l=$(left)
  t=$((cap < l - 15 ? cap : l - 15))
  if ((t < 10)); then note "$name SKIPPED (budget spent)"; return 99; fi
  s=$(date +%s)
  timeout -k 5 "$t" "$@" >"$LOG/$name.log" 2>&1
  rc=$?
  note "$name rc=$rc $(($(date +%s) - s))s$([[ $rc == 124 || $rc == 137 ]] && echo " TIMEOUT(cap ${t}s)")"
  return $rc
}
pack() {
  tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOG"
  note "total $(($(date +%s) - START))s"
}
trap pack EXIT

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm --format=csv
  nvcc --version | tail -2
  $PY -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))"
  command -v compute-sanitizer ncu
} >"$LOG/env.log" 2>&1
head -3 "$LOG/env.log" | tail -2 >>"$SUMMARY"

if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$LOG/wheels.log" 2>&1 && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi

KBUILD=build/cmake-cuda
src_hash() { find csrc cmake setup.py CMakeLists.txt -type f | sort | xargs cat | sha256sum | cut -c1-16; }

if [[ " $STAGES " == *" build "* ]]; then
  hash=$(src_hash)
  if [[ -f .gpubuild/gpubuild.tgz ]] && tar xzf .gpubuild/gpubuild.tgz && [[ "$(cat .gpubuild-hash 2>/dev/null)" == "$hash" ]]; then
    note "build: reused the carried build of sources $hash"
  else
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
    run build_ext 330 env PYHYPERSPHERE_CUDA=1 MAX_JOBS=${MAX_JOBS:-14} $PY setup.py build_ext --inplace &
    run build_kernels 330 bash -c "cmake -S . -B $KBUILD -DPYHYPERSPHERE_CUDA_KERNELS_ONLY=ON -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_CUDA_ARCHITECTURES=${TORCH_CUDA_ARCH_LIST//./} && cmake --build $KBUILD -j 4" &
    wait
    echo "$hash" >.gpubuild-hash
    tar czf "$OUT/gpubuild.tgz" pyhypersphere/_C*.so .gpubuild-hash \
      $KBUILD/uniform_bench_cuda $KBUILD/mma_layout_test $KBUILD/rowblock_plan_test $KBUILD/tile_size_test \
      2>>"$LOG/build_ext.log"
  fi
  $PY -c "import json, pyhypersphere; print(json.dumps(pyhypersphere.build_info()))" >"$LOG/build_info.log" 2>&1
  tail -1 "$LOG/build_info.log" | cut -c1-300 >>"$SUMMARY"
  grep -q '"with_cuda": true' "$LOG/build_info.log" || { note "no CUDA build: stopping"; exit 1; }
fi

# C++ errors and warnings must reach Python.  On the first run, with the extension built by
# the image's /opt/gcc g++, every such path crashed inside libstdc++; preloading the PATH
# g++'s libstdc++ (the system one there) fixed it, so that is tried for what follows.
if ! run error_paths 120 $PY benchmarks/error_path_check.py; then
  lib=$(g++ -print-file-name=libstdc++.so.6 2>/dev/null)
  if [[ -f "$lib" ]] && LD_PRELOAD=$lib run error_paths_preloaded 120 $PY benchmarks/error_path_check.py; then
    export LD_PRELOAD=$lib
    note "error paths: fixed by preloading $lib"
  elif [[ -x /usr/bin/g++ && "$(command -v g++)" != /usr/bin/g++ ]]; then
    note "error paths still crash with LD_PRELOAD=$lib: rebuilding with /usr/bin/g++"
    rm -rf build/temp.*
    run build_ext_system_gxx 200 env CC=/usr/bin/gcc CXX=/usr/bin/g++ PYHYPERSPHERE_CUDA=1 MAX_JOBS=${MAX_JOBS:-14} \
      $PY setup.py build_ext --inplace
    run error_paths_system_gxx 120 $PY benchmarks/error_path_check.py
  else
    note "error paths still crash (tried LD_PRELOAD=$lib)"
  fi
fi

if [[ " $STAGES " == *" check "* ]]; then
  CAP=${GPU_RUN_CHECK_CAP:-240}
  PT="env OMP_NUM_THREADS=2 $PY -m pytest -q -p no:cacheprovider -rfE"
  run host_tests 30 bash -c "$KBUILD/mma_layout_test && $KBUILD/rowblock_plan_test && $KBUILD/tile_size_test"
  run smoke 60 "$KBUILD/uniform_bench_cuda" --reps 1 --skip-timing
  run test_cuda $CAP env PYHYPERSPHERE_GPU_BACKEND=cuda $PT -n 4 tests/test_cuda.py -m "not slow" --junitxml="$LOG/test_cuda.xml" &
  run test_triton_cuda $CAP $PT tests/test_triton.py tests/test_triton_flash.py tests/test_triton_contrastive.py &
  run test_cuda_via_triton $CAP env PYHYPERSPHERE_GPU_BACKEND=triton $PT -n 4 tests/test_cuda.py -m "not slow" &
  run crosscheck $CAP $PY benchmarks/gpu_crosscheck.py --json "$LOG/crosscheck.json" &
  run test_suite $CAP $PT -n 8 tests -m "not slow" --ignore=tests/test_cuda.py --ignore=tests/test_triton.py --ignore=tests/test_triton_flash.py \
    --ignore=tests/test_triton_contrastive.py &
  if [[ ${GPU_RUN_SANITIZER:-1} == 1 ]]; then
    (for tool in memcheck racecheck synccheck; do
      run "sanitizer_$tool" 120 compute-sanitizer --tool "$tool" --error-exitcode 1 "$KBUILD/uniform_bench_cuda" --reps 1 --skip-timing
    done) &
  fi
  wait
fi

if [[ " $STAGES " == *" profile "* ]]; then
  # ncu over one call per case (benchmarks/gpu_profile.py brackets it with
  # cudaProfilerStart/Stop); the text report lands in $LOG/profile_<case>.log.
  NCU="ncu --clock-control none --profile-from-start off --section SpeedOfLight --section Occupancy \
    --section LaunchStats --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section SourceCounters"
  for case in ${GPU_RUN_PROFILE_CASES:-uniform:cuda:bfloat16:grad uniform:cuda:bfloat16:no-grad \
      uniform:triton:bfloat16:grad uniform:cuda:float32:grad nt_xent:triton:bfloat16:grad}; do
    IFS=: read -r loss backend dtype grad queue <<<"$case"
    n=${GPU_RUN_PROFILE_N:-65536}
    [[ -n $queue ]] && n=256
    grad=${grad:-grad}
    run "profile_${loss}_${backend}_${dtype}_${grad}${queue:+_q$queue}" 60 $NCU $PY benchmarks/gpu_profile.py \
      --loss "$loss" --backend "$backend" --dtype "$dtype" --"$grad" --queue "${queue:-0}" --n "$n"
  done
fi

# The bench stage's items, each a function; GPU_RUN_BENCH names which run and in what order.
bench_standalone() { run bench_cuda_standalone 60 "$KBUILD/uniform_bench_cuda" --skip-check --reps 5; }
# Peers separately: KeOps 2.3 segfaulted compiling its float32 formula on the first run.
bench_bars() { run cuda_bars 200 $PY benchmarks/cuda_bars.py --skip-peers --json "$LOG/cuda_bars.json"; }
# The bars of issues 23 and 24 (benchmarks/gpu_bars.py): the public losses, and the CUDA row kernel
# with the Triton kernel side by side in one process, into docs/gpu_bars.json
# (carried back in $OUT) and the log.
bench_uniform_bars() {
  cp docs/gpu_bars.json "$OUT/gpu_bars.json" 2>/dev/null || true
  run uniform_bars 300 $PY benchmarks/gpu_bars.py --json "$OUT/gpu_bars.json"
}
bench_sweep_float32() { sweep float32; }
bench_sweep_bfloat16() { sweep bfloat16; }
sweep() {
  run "sweep_$1" 120 $PY -m pyhypersphere bench --device cuda --n 256,1024,4096,16384,65536 --dtype "$1" \
    --impl pyhypersphere,triton,reference --max-n reference=8192 --isolation none --repeat 5 \
    --max-seconds 3 --no-plot --no-progress --out "$LOG/sweep_$1"
}
# The contrastive losses on the Triton kernels against the dense formula (and Inf-CL when
# installed; the image has no registry, so only if carried).
bench_contrastive_clip() { contrastive clip; }
bench_contrastive_nt_xent() { contrastive nt_xent; }
contrastive() {
  run "contrastive_$1" 90 $PY -m pyhypersphere bench --device cuda --loss "$1" --n 4096,16384,65536 \
    --dtype float32,bfloat16 --impl pyhypersphere,dense,inf-cl --max-n dense=16384 --isolation none \
    --repeat 5 --max-seconds 3 --no-plot --no-progress --out "$LOG/contrastive_$1"
}
bench_peers() {
  run sweep_peers 150 $PY -m pyhypersphere bench --device cuda --n 4096,65536 --dtype float32 \
    --impl pyhypersphere,flex,keops --isolation process --timeout 60 --repeat 5 --max-seconds 3 \
    --no-plot --no-progress --out "$LOG/sweep_peers"
}
if [[ " $STAGES " == *" bench "* ]]; then
  for item in ${GPU_RUN_BENCH:-uniform_bars standalone bars sweep_float32 sweep_bfloat16 contrastive_clip contrastive_nt_xent peers}; do
    if declare -F "bench_$item" >/dev/null; then "bench_$item"; else note "bench item $item: unknown, skipped"; fi
  done
fi

if [[ " $STAGES " == *" slow "* ]]; then
  run test_cuda_slow 300 $PY -m pytest -q -p no:cacheprovider -rfE tests/test_cuda.py -m slow
fi
