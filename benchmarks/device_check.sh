#!/usr/bin/env bash
# One prepared check of the CUDA kernels on a GPU machine (made for the H200 lent to some
# sessions: 16 cores, torch 2.11, Python 3.12, no package registry). From the repository root:
#
#     OUT=/some/dir bash benchmarks/device_check.sh
#
# (A copy of the tree without .git: also RNN_EXT_GIT_COMMIT=<the commit>, which the results
# then name.)
#
# Stages, in order of what matters most, each under `timeout` and all within a deadline
# (RNN_EXT_DEVICE_DEADLINE seconds from the start, default 460: the issue asks for < 8 minutes):
#   1. env        nvidia-smi, nvcc, torch/CUDA/cuDNN versions, compute-sanitizer version,
#                 Python.h (the build needs it), the source digest (benchmarks/common.py
#                 --digest: names the code that ran, edits included)
#   2. build      RNN_EXT_REQUIRE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
#                 pip install --no-build-isolation --no-deps .  (at most RNN_EXT_BUILD_LIMIT
#                 seconds, default 240; a build without the CUDA kernels is an error, and then
#                 every GPU stage is skipped: testing a CPU-only build would pass vacuously)
#   3. test_cuda  pytest -m cuda: tests/test_cuda.py and the CUDA cases of the other test files
#                 (-v, so that a hang shows which test it was)
#   4. bench      benchmarks/bench_cuda.py: the issue's four shapes, fp32 TF32 off/on and bf16,
#                 cuDNN and the cuBLAS loop first, the persistent kernel last; a hung call ends
#                 it at once with status 3, the rows so far kept              -> bench_cuda.json
#   5. sanitize   benchmarks/cuda_sanitize.py under compute-sanitizer: memcheck (every kernel),
#                 then racecheck and synccheck (the project's kernels); each needs >= 60 s left
#                 or is skipped; when memcheck says the device is not supported (seen under
#                 gVisor), the three are reported as unsupported, not failed
#   6. suite      benchmarks/run_gpu_benchmarks.sh (bench_rnn/loss/train.py and plots) in the
#                 time left: RNN_EXT_BENCH_SUITE=auto (default: short when >= 200 s are left,
#                 else off: its scripts write their JSON at the end, so a cut run returns
#                 nothing), quick, short, full or off
#
# What comes back in $OUT (the device tool returns at most 8 files): summary.txt (also printed
# last), bench_cuda.json, test_cuda.log and device_check.tar.gz, which holds every log, JSON and
# plot (device_check/...). The tarball is rewritten after each stage and every 30 s meanwhile,
# so a run cut short still returns the stages it finished and the log of the one it was in. Unpack it under benchmarks/results/<date>_<device>/ to commit.
# Tests and benchmarks run from /tmp, importing the installed package (the tree has no _C).
# Exit status: 0 when every stage passed (the suite may be cut short by the deadline: it only
# reports), 1 when a stage failed or was skipped for want of time, 2 on a bad setting.
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-/tmp/rnn_ext_device_out}"
PY="${PYTHON:-python3}"
DEADLINE="${RNN_EXT_DEVICE_DEADLINE:-460}"
BUILD_LIMIT="${RNN_EXT_BUILD_LIMIT:-240}"
for v in DEADLINE BUILD_LIMIT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "device_check: $v='${!v}' (from RNN_EXT_DEVICE_DEADLINE / RNN_EXT_BUILD_LIMIT) is not a whole number of seconds" >&2; exit 2; }
done
W="$(mktemp -d /tmp/rnn_ext_device.XXXXXX)/device_check"  # logs; packed into $OUT
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
declare -A RC
STAGES=()

# budget CAP RESERVE: seconds for a stage, at most CAP, leaving RESERVE for the stages after it.
budget() {
  local b=$(( DEADLINE - $(elapsed) - $2 ))
  (( b > $1 )) && b=$1
  (( b < 0 )) && b=0
  echo "$b"
}

pack_now() {
  cp -f "$W/summary.txt" "$W/test_cuda.log" "$W/bench_cuda.json" "$OUT/" 2>/dev/null
  # A log that grows while tar reads it makes GNU tar exit 1 ("file changed as we read it"):
  # the archive is still good. Only an exit above 1 keeps the previous tarball.
  tar --warning=no-file-changed -czf "$OUT/device_check.tar.gz.part" -C "$(dirname "$W")" \
    --exclude=pack.lock device_check 2>/dev/null
  if (( $? <= 1 )); then
    mv -f "$OUT/device_check.tar.gz.part" "$OUT/device_check.tar.gz"
  else
    rm -f "$OUT/device_check.tar.gz.part"
  fi
}
LOCK="$(dirname "$W")/pack.lock"
pack() {  # everything so far -> $OUT (cheap; after every stage, and every 30 s meanwhile)
  if command -v flock > /dev/null; then
    ( flock 9; pack_now ) 9> "$LOCK"  # one pack at a time: they share the .part file
  else
    pack_now
  fi
}

summary() {
  {
    echo "== device_check summary ($(elapsed)s, deadline ${DEADLINE}s) =="
    cat "$W/stages.txt"
    echo "-- env:"; grep -E "^(commit|torch|gpu|compute-sanitizer|Cuda compilation|Python.h|source digest)" "$W/env.log" | head -n 8
    echo "-- build:"; grep -E "rnn_ext build|cuda kernels:|error" "$W/build.log" | head -n 8
    if [ -n "${RC[import]:-}" ] && { [ "${RC[import]}" != 0 ] || [ "${RC[build]}" != 0 ]; }; then
      tail -n 40 "$W/build.log"
    fi
    echo "-- test_cuda:"; tail -n 2 "$W/test_cuda.log"
    grep -E "^(FAILED|ERROR)|TIMED OUT|Timeout" "$W/test_cuda.log" | head -n 20
    echo "-- sanitize:"
    grep -hE "ERROR SUMMARY|cuda_sanitize:|^(FAIL|ERR) |TIMED OUT|[Ee]rror|not supported" \
      "$W"/sanitize_*.log 2>/dev/null | head -n 20
    echo "-- suite:"; grep -E "FAILED|wrote|TIMED OUT" "$W/suite.log" 2>/dev/null | tail -n 10
    echo "-- bench (table last):"; grep -E "^bench_cuda:|Traceback|Error" "$W/bench.log" \
      2>/dev/null | tail -n 5
    tail -n 60 "$W/bench_table.txt" 2>/dev/null
  } > "$W/summary.txt" 2>&1
}

# stage NAME SECONDS CMD...: run CMD under `timeout`, output to $W/NAME.log, record its status.
# A stage given less than MIN_SECONDS (default 10) is skipped (and counts as failed).
stage() {
  local name=$1 limit=$2; shift 2
  STAGES+=("$name")
  if (( limit < ${MIN_SECONDS:-10} )); then
    echo "skipped: no time left before the deadline" > "$W/$name.log"
    RC[$name]=skipped
  else
    timeout -k 5 "$limit" "$@" > "$W/$name.log" 2>&1
    RC[$name]=$?
    (( RC[$name] == 124 || RC[$name] == 137 )) && echo "TIMED OUT after ${limit}s" >> "$W/$name.log"
  fi
  echo "$name: rc=${RC[$name]} (limit ${limit}s) at $(elapsed)s" | tee -a "$W/stages.txt"
  summary
  pack
}

# 1. Environment (each probe under a timeout: a wedged driver must not eat the deadline).
{
  echo "date: $(date -u)"
  echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "${RNN_EXT_GIT_COMMIT:-unknown}")"
  timeout 30 nvidia-smi 2>&1
  nvcc --version 2>&1 || "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version 2>&1
  timeout 60 "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version()); print('gpu', torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))" 2>&1
  echo "compute-sanitizer: $(timeout 30 compute-sanitizer --version 2>&1 | tail -n 1)"
  echo "cores: $(nproc)"
  "$PY" -m pip --version
  "$PY" -c "import os, sysconfig; p = os.path.join(sysconfig.get_paths()['include'], 'Python.h'); print('Python.h:', p, 'present' if os.path.exists(p) else 'MISSING (the build will fail)')"
  echo "source digest: $("$PY" "$REPO/benchmarks/common.py" --digest 2>&1)"
} > "$W/env.log" 2>&1
echo "env: at $(elapsed)s" > "$W/stages.txt"
# Pack every 30 s too (where flock serialises the packs): a kill from outside (the caller's
# own timeout) keeps the running stage's log so far.
# Its output goes to /dev/null, so that a caller reading this script's output to the end does
# not wait for the packer's last `sleep` after the script exits.
PACKER=
if command -v flock > /dev/null; then
  ( exec > /dev/null 2>&1; while :; do sleep 30 & wait $!; pack; done ) &
  PACKER=$!
  trap 'kill "$PACKER" 2>/dev/null' EXIT
fi
# The last pack: the packer stopped first, and a pack of its in progress waited for (the lock).
final_pack() {
  if [ -n "$PACKER" ]; then
    kill "$PACKER" 2>/dev/null
    wait "$PACKER" 2>/dev/null
    flock "$LOCK" true
  fi
  summary
  pack
}

# 2. Build and install (reserve: the test stage at least).
cd "$REPO"
stage build "$(budget "$BUILD_LIMIT" 150)" env TORCH_CUDA_ARCH_LIST=9.0 RNN_EXT_REQUIRE_CUDA=1 \
  MAX_JOBS="${MAX_JOBS:-16}" PIP_DISABLE_PIP_VERSION_CHECK=1 \
  "$PY" -m pip install --no-build-isolation --no-deps --no-index -v .
cd /tmp
(cd /tmp && timeout 60 "$PY" -c "import rnn_ext, sys; print(rnn_ext.__file__, 'cuda kernels:', rnn_ext.has_cuda_kernels()); sys.exit(0 if rnn_ext.has_cuda_kernels() else 1)") >> "$W/build.log" 2>&1
RC[import]=$?
echo "import: rc=${RC[import]}" >> "$W/stages.txt"
if [ "${RC[build]}" != 0 ] || [ "${RC[import]}" != 0 ]; then
  # A failed build (an older install could still import) or no CUDA kernels: the GPU stages
  # would test other code, or skip or fail vacuously. (RC values may be "skipped": compared as
  # strings, never in (( )), where set -u would stop the script.)
  echo "GPU stages skipped: the build failed or rnn_ext with its CUDA kernels could not be" \
    "imported (build.log)" | tee -a "$W/stages.txt"
  final_pack
  cat "$W/summary.txt"
  exit 1
fi

# 3. Every CUDA test (the `cuda` marker), from /tmp so that the installed package is imported.
#    pytest-timeout (on the device's image) stops the test run when one test is stuck past
#    120 s (a cold torch.compile takes tens of seconds), e.g. a grid barrier that never opens:
#    the thread method dumps the stacks (the log names the test) and ends pytest, since a signal
#    cannot interrupt a blocked CUDA call; the tests after it do not run, but the later stages
#    keep their time. Without the plugin the -o options are only warnings.
stage test_cuda "$(budget 170 150)" "$PY" -m pytest "$REPO/tests" -m cuda -v -ra \
  --durations=10 -p no:cacheprovider --rootdir "$REPO" -o timeout=120 -o timeout_method=thread \
  --continue-on-collection-errors

# 4. The issue's table: persistent kernel / cuBLAS loop / cuDNN at the four shapes.
lim=$(budget 130 60)
stage bench "$lim" "$PY" "$REPO/benchmarks/bench_cuda.py" --json "$W/bench_cuda.json" \
  --budget "$(( lim > 50 ? lim - 30 : 20 ))" --call-timeout 30
[ "${RC[bench]}" = 3 ] && echo "bench: a call hung (bench_cuda.json 'hang'); rows before it" \
  "kept" | tee -a "$W/stages.txt"
# The table from the JSON (also when the bench was cut short or stopped at a hang).
[ -s "$W/bench_cuda.json" ] && timeout 60 "$PY" "$REPO/benchmarks/bench_cuda.py" \
  --table-from "$W/bench_cuda.json" > "$W/bench_table.txt" 2>&1
summary
pack

# 5. compute-sanitizer: memcheck on every kernel, racecheck and synccheck on ours. memcheck
#    runs without PyTorch's caching allocator (PyTorch's advice), so that each tensor is its own
#    allocation and an access past its end is seen. Each tool needs >= 60 s (loading torch
#    under a tool alone takes tens of seconds). compute-sanitizer refused the device under one
#    of the lent machines' runtimes (gVisor: "Device not supported"): when memcheck's log says
#    so, the three are reported as unsupported, not as failures.
if command -v compute-sanitizer > /dev/null; then
  MIN_SECONDS=60 stage sanitize_memcheck "$(budget 90 40)" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" "$REPO/benchmarks/cuda_sanitize.py"
  if [ "${RC[sanitize_memcheck]}" != 0 ] && [ "${RC[sanitize_memcheck]}" != skipped ] \
      && grep -qi "not supported" "$W/sanitize_memcheck.log"; then
    RC[sanitize_memcheck]=0
    echo "sanitize: compute-sanitizer does not support this device (sanitize_memcheck.log);" \
      "not counted as a failure" | tee -a "$W/stages.txt"
  else
    MIN_SECONDS=60 stage sanitize_racecheck "$(budget 70 20)" compute-sanitizer --tool racecheck \
      --kernel-name kns=rnn_ext --error-exitcode 1 "$PY" "$REPO/benchmarks/cuda_sanitize.py" \
      --dtypes float32
    MIN_SECONDS=60 stage sanitize_synccheck "$(budget 70 0)" compute-sanitizer --tool synccheck \
      --kernel-name kns=rnn_ext --error-exitcode 1 "$PY" "$REPO/benchmarks/cuda_sanitize.py" \
      --dtypes float32
  fi
else
  stage sanitize_plain "$(budget 40 10)" "$PY" "$REPO/benchmarks/cuda_sanitize.py"
fi

# 6. The benchmark suite in whatever time is left: run_gpu_benchmarks.sh fits each script
#    into RNN_EXT_SUITE_SECONDS (the stage's own limit is a safety net 15 s later).
SUITE="${RNN_EXT_BENCH_SUITE:-auto}"
lim=$(budget 900 0)
if [ "$SUITE" = auto ]; then
  if (( lim >= 200 )); then SUITE=short; else SUITE=off; fi
fi
if [ "$SUITE" != off ]; then
  stage suite "$lim" env RNN_EXT_SUITE_SECONDS=$(( lim > 25 ? lim - 15 : 10 )) \
    bash "$REPO/benchmarks/run_gpu_benchmarks.sh" "$SUITE" "$W/suite"
fi

final_pack
cat "$W/summary.txt"
for k in "${STAGES[@]}" import; do
  [ "$k" = suite ] && continue  # partial benchmark results are still results
  [ "${RC[$k]}" = 0 ] || exit 1
done
exit 0
