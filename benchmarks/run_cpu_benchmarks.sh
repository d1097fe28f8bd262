#!/usr/bin/env bash
# Run the rnn_ext benchmarks on the CPU, plot them and render the README's performance section:
# what produced the committed benchmarks/results/*_cpu.* files.
#
# Usage: benchmarks/run_cpu_benchmarks.sh [EXTRA ARGS for every benchmark script]
#   e.g. benchmarks/run_cpu_benchmarks.sh --threads 4
# Run it on a quiet machine: the JSON files record the load average at start and end, and the
# README section warns when it was high. Expects rnn_ext built in place (python setup.py
# build_ext --inplace) or installed.
set -eu
cd "$(dirname "$0")/.."
# glibc malloc returns freed memory to the OS (trim, and a fresh mmap per large block), and every
# implementation then pays page faults at random: 50-300 us on a 70 us loss step, which decided
# the small comparisons by chance. Keeping freed memory (as PyTorch's CPU tuning guide's
# jemalloc/tcmalloc advice does) removes that noise for all implementations alike; each JSON
# records these settings (machine.allocator_env). Override by setting them before the call.
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_-33554432}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_-68719476736}
PY=${PYTHON:-python}
uptime || true
"$PY" benchmarks/bench_rnn.py --no-progress "$@"
"$PY" benchmarks/bench_loss.py --no-progress "$@"
"$PY" benchmarks/bench_train.py --no-progress --epochs 1 "$@"
"$PY" benchmarks/plot_results.py benchmarks/results/bench_{rnn,loss,train}_cpu.json
"$PY" benchmarks/render_readme.py
uptime || true
