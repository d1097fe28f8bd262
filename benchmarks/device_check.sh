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
#   1. env        nvidia-smi, nvcc, torch/CUDA/cuDNN versions, compute-sanitizer version
#   2. build      TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 pip install --no-build-isolation --no-deps .
#                 (at most RNN_EXT_BUILD_LIMIT seconds, default 240)
#   3. test_cuda  pytest -m cuda: tests/test_cuda.py and the CUDA cases of the other test files
#                 (-v, so that a hang shows which test it was)
#   4. bench      benchmarks/bench_cuda.py: the issue's four shapes, fp32 TF32 off/on and bf16,
#                 persistent kernel / cuBLAS loop / cuDNN                  -> bench_cuda.json
#   5. sanitize   (after a probe that compute-sanitizer runs at all on this machine)
#                 benchmarks/cuda_sanitize.py under compute-sanitizer: memcheck (every kernel),
#                 racecheck and synccheck (the project's kernels)
#   6. suite      benchmarks/run_gpu_benchmarks.sh (bench_rnn/loss/train.py and plots) in the
#                 time left: RNN_EXT_BENCH_SUITE=auto (default: short when >= 200 s are left,
#                 else quick), quick, short, full or off
#
# What comes back in $OUT (the device tool returns at most 8 files): summary.txt (also printed
# last), bench_cuda.json, test_cuda.log and device_check.tar.gz, which holds every log, JSON and
# plot (device_check/...). The tarball is rewritten after each stage, so a run cut short still
# returns the stages it finished. Unpack it under benchmarks/results/<date>_<device>/ to commit.
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

pack() {  # everything so far -> $OUT (cheap; after every stage)
  cp -f "$W/summary.txt" "$W/test_cuda.log" "$W/bench_cuda.json" "$OUT/" 2>/dev/null
  tar -czf "$OUT/device_check.tar.gz.part" -C "$(dirname "$W")" device_check 2>/dev/null \
    && mv -f "$OUT/device_check.tar.gz.part" "$OUT/device_check.tar.gz"
}

summary() {
  {
    echo "== device_check summary ($(elapsed)s, deadline ${DEADLINE}s) =="
    cat "$W/stages.txt"
    echo "-- env:"; grep -E "^(commit|torch|gpu|compute-sanitizer|Cuda compilation)" "$W/env.log" | head -n 6
    echo "-- build:"; grep -E "rnn_ext build|cuda kernels:|error" "$W/build.log" | head -n 8
    echo "-- test_cuda:"; tail -n 2 "$W/test_cuda.log"
    grep -E "^(FAILED|ERROR)|TIMED OUT|Timeout" "$W/test_cuda.log" | head -n 20
    echo "-- sanitize:"
    grep -hE "ERROR SUMMARY|cuda_sanitize:|^(FAIL|ERR) |TIMED OUT|[Ee]rror|not supported" \
      "$W"/sanitize_*.log 2>/dev/null | head -n 20
    echo "-- suite:"; grep -E "FAILED|wrote|TIMED OUT" "$W/suite.log" 2>/dev/null | tail -n 10
    echo "-- bench (table last):"; sed -n '/^$/,$p' "$W/bench.log" | tail -n 50
  } > "$W/summary.txt" 2>&1
}

# stage NAME SECONDS CMD...: run CMD under `timeout`, output to $W/NAME.log, record its status.
stage() {
  local name=$1 limit=$2; shift 2
  STAGES+=("$name")
  if (( limit < 10 )); then
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
} > "$W/env.log" 2>&1
echo "env: at $(elapsed)s" > "$W/stages.txt"

# 2. Build and install (reserve: the test stage at least).
cd "$REPO"
stage build "$(budget "$BUILD_LIMIT" 150)" env TORCH_CUDA_ARCH_LIST=9.0 \
  MAX_JOBS="${MAX_JOBS:-16}" \
  "$PY" -m pip install --no-build-isolation --no-deps -v .
cd /tmp
(cd /tmp && timeout 60 "$PY" -c "import rnn_ext, sys; print(rnn_ext.__file__, 'cuda kernels:', rnn_ext.has_cuda_kernels()); sys.exit(0 if rnn_ext.has_cuda_kernels() else 1)") >> "$W/build.log" 2>&1
RC[import]=$?
echo "import: rc=${RC[import]}" >> "$W/stages.txt"

# 3. Every CUDA test (the `cuda` marker), from /tmp so that the installed package is imported.
#    pytest-timeout (on the device's image) stops the test run when one test is stuck past
#    120 s (a cold torch.compile takes tens of seconds), e.g. a grid barrier that never opens:
#    the thread method dumps the stacks (the log names the test) and ends pytest, since a signal
#    cannot interrupt a blocked CUDA call; the tests after it do not run, but the later stages
#    keep their time. Without the plugin the -o options are only warnings.
stage test_cuda "$(budget 170 150)" "$PY" -m pytest "$REPO/tests" -m cuda -v -ra \
  --durations=10 -p no:cacheprovider --rootdir "$REPO" -o timeout=120 -o timeout_method=thread

# 4. The issue's table: persistent kernel / cuBLAS loop / cuDNN at the four shapes.
lim=$(budget 130 60)
stage bench "$lim" "$PY" "$REPO/benchmarks/bench_cuda.py" --json "$W/bench_cuda.json" \
  --budget "$(( lim > 50 ? lim - 30 : 20 ))"

# 5. compute-sanitizer: memcheck on every kernel, racecheck and synccheck on ours. memcheck
#    runs without PyTorch's caching allocator (PyTorch's advice), so that each tensor is its own
#    allocation and an access past its end is seen.
#    A probe first: compute-sanitizer refused the device under one of the lent machines'
#    runtimes (gVisor: "Device not supported"). When it says so, the three stages are skipped,
#    reported but not counted as failures; any other failure of the probe is a failed stage.
probe_limit=$(budget 60 40)
if command -v compute-sanitizer > /dev/null && (( probe_limit >= 10 )); then
  timeout -k 5 "$probe_limit" compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -c \
    "import torch; assert torch.ones(4, device='cuda').sum().item() == 4" \
    > "$W/sanitize_probe.log" 2>&1
  probe_rc=$?
else
  probe_rc=0  # no compute-sanitizer (the plain stage below) or no time (the stages skip)
fi
if (( probe_rc != 0 )) && grep -qi "not supported" "$W/sanitize_probe.log"; then
  echo "sanitize: skipped, compute-sanitizer does not support this device" \
    "(sanitize_probe.log) at $(elapsed)s" | tee -a "$W/stages.txt"
elif (( probe_rc != 0 )); then
  STAGES+=(sanitize_probe)
  RC[sanitize_probe]=$probe_rc
  echo "sanitize_probe: rc=$probe_rc (limit ${probe_limit}s) at $(elapsed)s" \
    | tee -a "$W/stages.txt"
  summary
  pack
elif command -v compute-sanitizer > /dev/null; then
  stage sanitize_memcheck "$(budget 70 40)" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" "$REPO/benchmarks/cuda_sanitize.py"
  stage sanitize_racecheck "$(budget 60 25)" compute-sanitizer --tool racecheck \
    --kernel-name kns=rnn_ext --error-exitcode 1 "$PY" "$REPO/benchmarks/cuda_sanitize.py" \
    --dtypes float32
  stage sanitize_synccheck "$(budget 50 10)" compute-sanitizer --tool synccheck \
    --kernel-name kns=rnn_ext --error-exitcode 1 "$PY" "$REPO/benchmarks/cuda_sanitize.py" \
    --dtypes float32
else
  stage sanitize_plain "$(budget 40 10)" "$PY" "$REPO/benchmarks/cuda_sanitize.py"
fi

# 6. The benchmark suite in whatever time is left: run_gpu_benchmarks.sh fits each script
#    into RNN_EXT_SUITE_SECONDS (the stage's own limit is a safety net 15 s later).
SUITE="${RNN_EXT_BENCH_SUITE:-auto}"
lim=$(budget 900 0)
if [ "$SUITE" = auto ]; then
  if (( lim >= 200 )); then SUITE=short; else SUITE=quick; fi
fi
if [ "$SUITE" != off ]; then
  stage suite "$lim" env RNN_EXT_SUITE_SECONDS=$(( lim > 25 ? lim - 15 : 10 )) \
    bash "$REPO/benchmarks/run_gpu_benchmarks.sh" "$SUITE" "$W/suite"
fi

summary
pack
cat "$W/summary.txt"
for k in "${STAGES[@]}" import; do
  [ "$k" = suite ] && continue  # partial benchmark results are still results
  [ "${RC[$k]}" = 0 ] || exit 1
done
exit 0
