#!/usr/bin/env bash
# Everything to run on a lent GPU machine, in one go (one device call):
#   bash scripts/gpu_check.sh "$OUT"
# builds kernkit with its CUDA kernels (ptxas -v to catch register spills),
# runs the CUDA tests, compute-sanitizer memcheck + racecheck on them, and the
# GPU benchmarks, and captures golden per-lane fragments of every mma/ldmatrix wrapper to compare
# with the simt emulator, writing at most 8 files into the output folder (the device tool brings
# back 8). Keeps going after a failing step; exits non-zero if any failed.
set -uo pipefail
OUT=${1:-${OUT:-gpu_results}}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
status=0
note() { echo "$*" | tee -a "$SUMMARY"; }
run_step() {  # name logfile command...
  local name=$1 log=$2; shift 2
  local t0=$(date +%s)
  "$@" > "$log" 2>&1
  local rc=$?
  note "[$name] rc=$rc ($(( $(date +%s) - t0 ))s) -> $(basename "$log")"
  tail -n 5 "$log" | sed 's/^/    /' >> "$SUMMARY"
  [ $rc -eq 0 ] || status=1
}

note "date: $(date -u +%Y-%m-%dT%H:%MZ)  commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
note "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"

export KERNKIT_PTXAS_VERBOSE=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
run_step build "$OUT/build.log" pip install --no-build-isolation --no-deps -v .
spills=$(grep -E "bytes spill (stores|loads)" "$OUT/build.log" | grep -vc " 0 bytes spill stores, 0 bytes spill loads")
note "[ptxas] kernels with register spills: $spills (details in build.log)"

cd /tmp  # import the installed package, not the source tree
REPO=$OLDPWD
python -m kernkit | tee -a "$SUMMARY"
run_step all-tests "$OUT/tests_all.log" python -m pytest "$REPO/tests" -q -rs -x
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
{
  run_step memcheck "$OUT/sanitizer.log" compute-sanitizer --tool memcheck --error-exitcode 1 \
    python -m pytest "$REPO/tests" -q -m cuda -x
  mv "$OUT/sanitizer.log" "$OUT/sanitizer_memcheck.tmp"
  run_step racecheck "$OUT/sanitizer.log" compute-sanitizer --tool racecheck --error-exitcode 1 \
    python -m pytest "$REPO/tests" -q -m cuda -x
  cat "$OUT/sanitizer_memcheck.tmp" >> "$OUT/sanitizer.log" && rm -f "$OUT/sanitizer_memcheck.tmp"
}
unset PYTORCH_NO_CUDA_MEMORY_CACHING
cd "$REPO"
# golden fragments: the simt self-test's capture kernels on the GPU, checked there against the PTX
# tables and CuTe's layouts, then compared with the emulator (results in fragments.json + summary)
run_step fragments "$OUT/fragments.tmp" bash -c "nvcc -std=c++17 -O2 -arch=sm_90a -Icsrc scripts/gpu_fragments.cu \
  -o /tmp/gpu_fragments && /tmp/gpu_fragments '$OUT/fragments.json' && python scripts/compare_fragments.py '$OUT/fragments.json'"
grep -E "^(OK|BAD)|difference|failed" "$OUT/fragments.tmp" >> "$SUMMARY"; rm -f "$OUT/fragments.tmp"
run_step bench "$OUT/bench.log" python -m benchmarks --device cuda --json "$OUT/bench_cuda.json" --plot "$OUT/bench_cuda.png"
note "overall: $([ $status -eq 0 ] && echo PASS || echo FAIL)"
exit $status
