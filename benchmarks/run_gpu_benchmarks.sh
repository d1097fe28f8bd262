#!/usr/bin/env bash
# Run the rnn_ext benchmarks on the GPU and plot them.
#
# Usage: benchmarks/run_gpu_benchmarks.sh [quick|short|full] [DEST]
#   quick  smoke test (tiny shapes), about 30 s
#   short  the lesson, fastrnns and (1000, 8, 128, 128) shapes, float32 TF32 off/on and bfloat16,
#          the losses and the lesson's training: a few minutes (what device_check.sh runs)
#   full   every shape group of bench_rnn.py: budget 10+ minutes
#   DEST   where the JSON and PNG files go (default: $OUT if set, else benchmarks/results)
#
# Expects rnn_ext built in place with its CUDA kernels (device_check.sh builds it first); without
# them the rnn_ext rows of the results hold the error instead of timings.
# Each script runs under `timeout`, and a failure does not stop the others; the exit status is
# that of the last failure (0 if none).
set -u
cd "$(dirname "$0")/.."
MODE=${1:-short}
DEST=${2:-${OUT:-benchmarks/results}}
PY=${PYTHON:-python3}
mkdir -p "$DEST"
status=0

# RNN_EXT_SUITE_SECONDS (optional): the whole suite's time; each script's limit shrinks to what
# is left of it, and a script with under 10 s left is skipped.
SUITE_END=$(( $(date +%s) + ${RNN_EXT_SUITE_SECONDS:-100000} ))

run() {  # run SECONDS CMD...: one benchmark under a time limit, failures recorded
    local limit=$1; shift
    local left=$(( SUITE_END - $(date +%s) ))
    (( left < limit )) && limit=$left
    if (( limit < 10 )); then echo "SKIPPED (suite time spent): $*"; return; fi
    echo "+ [${limit}s] $*"
    # --foreground: stay in the caller's process group, so that device_check.sh's own timeout
    # ends this script's benchmark too (plain timeout would move it to a group of its own).
    timeout --foreground "$limit" "$@" || { rc=$?; echo "FAILED (exit $rc): $*"; status=$rc; }
}

# From /tmp: the installed package (the source tree has no compiled _C after `pip install .`).
(cd /tmp && "$PY" - <<'EOF'
import torch, rnn_ext
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
print("rnn_ext", rnn_ext.__file__, "cuda kernels:", rnn_ext.has_cuda_kernels())
EOF
)

COMMON=(--device cuda --no-progress)
case "$MODE" in
  quick)
    run 120 "$PY" benchmarks/bench_rnn.py "${COMMON[@]}" --quick --out "$DEST/bench_rnn_cuda.json"
    run 60 "$PY" benchmarks/bench_loss.py "${COMMON[@]}" --quick --out "$DEST/bench_loss_cuda.json"
    run 60 "$PY" benchmarks/bench_train.py "${COMMON[@]}" --quick --out "$DEST/bench_train_cuda.json"
    ;;
  short)
    run 240 "$PY" benchmarks/bench_rnn.py "${COMMON[@]}" --groups lesson,fastrnns \
        --shape 1000,8,128,128 --shape 1000,1,512,512 --min-run-time 0.1 --rounds 2 \
        --out "$DEST/bench_rnn_cuda.json"
    run 90 "$PY" benchmarks/bench_loss.py "${COMMON[@]}" --dtypes float32,bfloat16 \
        --min-run-time 0.1 --rounds 2 --out "$DEST/bench_loss_cuda.json"
    run 90 "$PY" benchmarks/bench_train.py "${COMMON[@]}" --min-run-time 0.2 --rounds 2 \
        --out "$DEST/bench_train_cuda.json"
    ;;
  full)
    run 900 "$PY" benchmarks/bench_rnn.py "${COMMON[@]}" --min-run-time 0.2 --rounds 3 \
        --out "$DEST/bench_rnn_cuda.json"
    run 180 "$PY" benchmarks/bench_loss.py "${COMMON[@]}" --dtypes float32,bfloat16 \
        --out "$DEST/bench_loss_cuda.json"
    run 300 "$PY" benchmarks/bench_train.py "${COMMON[@]}" --epochs 1 \
        --out "$DEST/bench_train_cuda.json"
    ;;
  *) echo "usage: $0 [quick|short|full] [DEST]"; exit 2 ;;
esac

shopt -s nullglob
files=("$DEST"/bench_*_cuda.json)
if ((${#files[@]})); then
    run 120 "$PY" benchmarks/plot_results.py "${files[@]}" --outdir "$DEST"
fi
exit $status
