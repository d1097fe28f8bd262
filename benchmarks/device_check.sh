#!/usr/bin/env bash
# One prepared check of the CUDA kernels on a GPU machine (made for the H200 lent to some
# sessions: 16 cores, torch 2.11, no package registry). Run from the repository root:
#
#     OUT=/some/dir bash benchmarks/device_check.sh
#
# Stages, each under `timeout` so that the whole stays under 8 minutes:
#   1. environment: nvidia-smi, nvcc, torch/CUDA/cuDNN versions          -> $OUT/env.txt
#   2. build and install: TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
#      pip install --no-build-isolation --no-deps .                    -> $OUT/build.log
#   3. CUDA tests: pytest tests/test_cuda.py                             -> $OUT/test_cuda.log
#   4. the other tests, quickly (-x, short timeout)                      -> $OUT/test_rest.log
#   5. GPU benchmark: benchmarks/bench_cuda.py                           -> $OUT/bench.log,
#                                                                          $OUT/bench_cuda.json
#   6. benchmark suite: benchmarks/run_gpu_benchmarks.sh short (bench_rnn/loss/train.py, plots;
#      RNN_EXT_BENCH_SUITE=off|quick|short|full; about 2 more minutes) -> $OUT/suite.log, suite/
# and prints a short summary last (also $OUT/summary.txt). The tests run from outside the
# source tree so that they import the installed package (the tree has no compiled _C).
# Exit status: 0 when every stage passed, else 1.
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-/tmp/rnn_ext_device_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
declare -A RC

# 1. Environment.
{
  echo "date: $(date -u)"
  nvidia-smi 2>&1
  nvcc --version 2>&1 || "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version()); print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))" 2>&1
  nproc
} > "$OUT/env.txt" 2>&1

# 2. Build and install.
cd "$REPO"
TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 timeout 220 "$PY" -m pip install --no-build-isolation \
  --no-deps -v . > "$OUT/build.log" 2>&1
RC[build]=$?
echo "build: rc=${RC[build]} at $(elapsed)s" | tee -a "$OUT/env.txt"
(cd /tmp && "$PY" -c "import rnn_ext, sys; print(rnn_ext.__file__, 'cuda kernels:', rnn_ext.has_cuda_kernels()); sys.exit(0 if rnn_ext.has_cuda_kernels() else 1)") >> "$OUT/build.log" 2>&1
RC[import]=$?

# 3. CUDA tests (from /tmp: the installed package, not the source tree).
cd /tmp
timeout 150 "$PY" -m pytest "$REPO/tests/test_cuda.py" -q -ra --durations=8 -p no:cacheprovider \
  --rootdir "$REPO" > "$OUT/test_cuda.log" 2>&1
RC[test_cuda]=$?

# 4. The other tests, quickly.
others=$(ls "$REPO"/tests/test_*.py 2>/dev/null | grep -v '/test_cuda.py$' || true)
if [ -n "$others" ]; then
  # shellcheck disable=SC2086
  timeout 70 "$PY" -m pytest $others -q -x -p no:cacheprovider --rootdir "$REPO" \
    > "$OUT/test_rest.log" 2>&1
  RC[test_rest]=$?
else
  echo "no other tests" > "$OUT/test_rest.log"
  RC[test_rest]=0
fi

# 5. Benchmark: whatever time is left, within the 8 minutes.
left=$(( 440 - $(elapsed) ))
[ "$left" -lt 30 ] && left=30
timeout $(( left + 20 )) "$PY" "$REPO/benchmarks/bench_cuda.py" --json "$OUT/bench_cuda.json" \
  --budget "$(( left > 60 ? left - 40 : 20 ))" > "$OUT/bench.log" 2>&1
RC[bench]=$?

# 6. The benchmark suite (bench_rnn/bench_loss/bench_train.py and their plots) on the installed
#    package: RNN_EXT_BENCH_SUITE=short (default, about 2 minutes), quick, full or off.
#    JSON and PNG files -> $OUT/suite/ (copy them to benchmarks/results/ to commit them).
SUITE="${RNN_EXT_BENCH_SUITE:-short}"
if [ "$SUITE" != off ]; then
  (cd /tmp && timeout 300 bash "$REPO/benchmarks/run_gpu_benchmarks.sh" "$SUITE" "$OUT/suite") \
    > "$OUT/suite.log" 2>&1
  RC[suite]=$?
else
  RC[suite]=0
fi

# Summary, printed last.
{
  echo "== device_check summary ($(elapsed)s) =="
  for k in build import test_cuda test_rest bench suite; do echo "$k: rc=${RC[$k]}"; done
  echo "-- test_cuda:"; tail -n 3 "$OUT/test_cuda.log"
  grep -E "^(FAILED|ERROR)" "$OUT/test_cuda.log" | head -n 15
  echo "-- test_rest:"; tail -n 2 "$OUT/test_rest.log"
  echo "-- bench (table last):"; tail -n 40 "$OUT/bench.log"
  echo "-- suite ($SUITE):"; grep -E "FAILED|rnn_ext +|wrote" "$OUT/suite.log" | tail -n 30
} > "$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
for k in build import test_cuda test_rest bench suite; do [ "${RC[$k]}" -eq 0 ] || exit 1; done
exit 0
