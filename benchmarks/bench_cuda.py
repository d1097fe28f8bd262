"""GPU benchmark: rnn_ext.ops.elman_rnn forward+backward against cuDNN's nn.RNN (one layer).

For each shape (T, B, I, H) and precision (float32 with TF32 off, float32 with TF32 on,
bfloat16) it times, with CUDA events around each repetition (median of the repetitions after
warm-up), one forward and one backward (gradients of input, h_0 and all weights) of

  * cudnn      torch.nn.RNN(I, H) on cuDNN, same weights;
  * persist    rnn_ext.elman_rnn with RNN_EXT_CUDA_PERSISTENT=require: the persistent kernel
               (the row holds the error when no launch plan fits; "auto" then runs cuBLAS);
  * cublas     rnn_ext.elman_rnn with RNN_EXT_CUDA_PERSISTENT=off (the cuBLAS step loop).

It also reports each run's relative difference from cuDNN's output (a sanity check, not a
test) and the per-step floor of the recurrence,

    floor = max(grid barrier, 2 * B * H^2 flops / peak, bytes / bandwidth)   per step,

where the bytes of one step are the state read and written and the input projection read
(3 * B * H elements; W_hh stays on chip), and the ceilings are measured once per run on the
device (METHOD.md's advice): peak = the rate of an 8192^3 torch.mm in the precision (float32
with TF32 off, with TF32 on, bfloat16), bandwidth = bytes read plus written by a 1 GiB
device-to-device copy; the datasheet figures (float32 FMA 67 TFLOP/s, TF32 495, bf16 990,
4.8 TB/s: H100/H200 SXM) are kept beside them and used only if a measurement fails. The grid
barrier is measured on the device too: one
cooperative launch of as many blocks as the persistent kernel's plan, with its shared memory
(rnn_ext::_grid_barrier_loop: the same block size and barrier, each barrier checked) timed with
2000 barriers and with none, by CUDA events; the
floor is the mean of the forward plan's and the backward plan's. Where no plan fits, or the
measurement fails, 1 us is assumed (each row's 'barrier_source' says which). The time per
step reported is the forward+backward time over 2 T steps (the backward has the same
recurrence). Datasheet rates are leads, not measurements. Each row also records the plans
(rnn_ext.ops.cuda_persistent_plan) of the forward and the backward.

Usage: python benchmarks/bench_cuda.py [--json PATH] [--reps N] [--budget SECONDS] [--quick]
Writes the results as JSON (a list of rows) and prints a table. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info  # noqa: E402

SHAPES = [(8, 512, 42, 256), (100, 64, 512, 512), (1000, 8, 256, 256), (1000, 64, 1024, 1024)]
TARGETS = {(8, 512, 42, 256): 1.5, (100, 64, 512, 512): 1.0, (1000, 8, 256, 256): 2.0,
           (1000, 64, 1024, 1024): 1.0}
PRECISIONS = ["fp32", "fp32-tf32", "bf16"]
PEAK_FLOPS = {"fp32": 67e12, "fp32-tf32": 495e12, "bf16": 990e12}
BANDWIDTH = 4.8e12
BARRIER_S = 1e-6  # assumed where it cannot be measured
BARRIER_ITERS = 2000


def per_step_floor(B, H, precision, barrier_s=BARRIER_S, peak_flops=None, bandwidth=None):
    """Seconds: max(barrier, 2 B H^2 / peak, 3 B H elements / bandwidth) for one step; peak
    (flop/s) and bandwidth (bytes/s) default to the datasheet figures."""
    elt = 2 if precision == "bf16" else 4
    flops = 2.0 * B * H * H
    bytes_ = 3.0 * B * H * elt
    peak = PEAK_FLOPS[precision] if peak_flops is None else peak_flops
    bw = BANDWIDTH if bandwidth is None else bandwidth
    return max(barrier_s, flops / peak, bytes_ / bw)


def measure_ceilings(n_copy=1 << 28, n_mm=8192):
    """The device's ceilings, measured: {"bandwidth": bytes/s (read + write) of a copy of
    n_copy float32 elements, "peak_flops": {precision: flop/s of an n_mm^3 torch.mm}}, CUDA
    events, medians; random data (never zeros). The matmul TF32 setting is restored."""
    out = {"bandwidth": None, "peak_flops": {}, "errors": []}
    try:
        src = torch.randn(n_copy, device="cuda")
        dst = torch.empty_like(src)
        t = time_it(lambda: dst.copy_(src), 10, 3)[0]
        out["bandwidth"] = 2.0 * src.numel() * src.element_size() / t
    except Exception as e:  # report and continue: the datasheet figure stands in
        out["errors"].append(f"copy: {type(e).__name__}: {e}"[:200])
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for precision in PRECISIONS:
            torch.backends.cuda.matmul.allow_tf32 = precision == "fp32-tf32"
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            try:
                a = torch.randn(n_mm, n_mm, device="cuda", dtype=dtype)
                b = torch.randn(n_mm, n_mm, device="cuda", dtype=dtype)
                t = time_it(lambda: torch.mm(a, b), 5, 2)[0]
                out["peak_flops"][precision] = 2.0 * n_mm ** 3 / t
            except Exception as e:
                out["errors"].append(f"mm {precision}: {type(e).__name__}: {e}"[:200])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
    return out


def time_it(fn, reps, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return statistics.median(times), min(times)


_BARRIER_CACHE = {}


def measure_grid_barrier(blocks, smem=0, reps=5, warmup=2):
    """Seconds per grid-wide barrier in one cooperative launch of `blocks` blocks of 256
    threads with `smem` bytes of shared memory each (placed on the SMs as the plan's kernel):
    (median time with BARRIER_ITERS barriers - median time with none) / BARRIER_ITERS, CUDA
    events. Raises if the kernel's counter is off or an epoch check failed (a barrier that did
    not hold). Cached per (blocks, smem)."""
    key = (blocks, smem)
    if key in _BARRIER_CACHE:
        return _BARRIER_CACHE[key]
    op = torch.ops.rnn_ext._grid_barrier_loop
    counter = torch.zeros(2, dtype=torch.int64, device="cuda")
    t_none = time_it(lambda: op(counter, blocks, 0, smem), reps, warmup)[0]
    t_iters = time_it(lambda: op(counter, blocks, BARRIER_ITERS, smem), reps, warmup)[0]
    passed, failed = counter.tolist()
    if passed != (reps + warmup) * BARRIER_ITERS or failed != 0:
        raise RuntimeError(f"grid barrier loop: {passed} barriers counted, expected "
                           f"{(reps + warmup) * BARRIER_ITERS}; {failed} epoch checks failed")
    _BARRIER_CACHE[key] = max(t_iters - t_none, 0.0) / BARRIER_ITERS
    return _BARRIER_CACHE[key]


def plans_and_barrier(B, H, dtype):
    """The forward and backward plans for (B, H) and the mean of their measured per-barrier
    times: (plan_forward, plan_backward, barrier_s or None, error or None)."""
    from rnn_ext.ops import cuda_persistent_plan

    try:
        plans = [cuda_persistent_plan(B, H, dtype, backward=bw) for bw in (False, True)]
    except Exception as e:  # report and continue
        return None, None, None, f"{type(e).__name__}: {e}"[:300]
    if None in plans:
        return plans[0], plans[1], None, "no persistent plan fits"
    try:
        barrier = statistics.mean(measure_grid_barrier(p["blocks"], p["smem"]) for p in plans)
    except Exception as e:
        return plans[0], plans[1], None, f"{type(e).__name__}: {e}"[:300]
    return plans[0], plans[1], barrier, None


def bench_shape(shape, precision, reps, warmup, ceilings=None):
    import rnn_ext

    T, B, I, H = shape
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    tf32 = precision == "fp32-tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    rnn = nn.RNN(I, H).to(dev, dtype)
    x = torch.randn(T, B, I, device=dev, dtype=dtype, generator=g).requires_grad_()
    h0 = torch.randn(B, H, device=dev, dtype=dtype, generator=g).mul_(0.5).requires_grad_()
    gy = torch.randn(T, B, H, device=dev, dtype=dtype, generator=g)
    ghn = torch.randn(B, H, device=dev, dtype=dtype, generator=g)
    params = [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0]
    h0_3d = h0.detach().unsqueeze(0).requires_grad_()

    def run_cudnn():
        out, hn = rnn(x, h0_3d)
        torch.autograd.grad([out, hn], [x, h0_3d, *params], [gy, ghn.unsqueeze(0)])
        return out

    def run_ext():
        out, hn = rnn_ext.elman_rnn(x, h0, *params)
        torch.autograd.grad([out, hn], [x, h0, *params], [gy, ghn])
        return out

    try:
        with torch.no_grad():
            ref = rnn(x, h0_3d)[0].float()
    except RuntimeError:  # cuDNN without this dtype: its row reports the error
        ref = None
    rows = []
    for impl, mode in (("cudnn", None), ("persist", "require"), ("cublas", "off")):
        if mode is not None:
            os.environ["RNN_EXT_CUDA_PERSISTENT"] = mode
        fn = run_cudnn if impl == "cudnn" else run_ext
        try:
            out = fn()
            err = ((out.float() - ref).norm() / ref.norm()).item() if ref is not None else None
            med, best = time_it(fn, reps, warmup)
            rows.append(dict(impl=impl, median_s=med, min_s=best, rel_diff_vs_cudnn=err))
        except Exception as e:  # report and continue: the other rows still mean something
            rows.append(dict(impl=impl, error=f"{type(e).__name__}: {e}"[:300]))
    os.environ["RNN_EXT_CUDA_PERSISTENT"] = "auto"
    plan_fwd, plan_bwd, barrier, barrier_error = plans_and_barrier(B, H, dtype)
    barrier_s = BARRIER_S if barrier is None else barrier
    ceilings = ceilings or {}
    floor = per_step_floor(B, H, precision, barrier_s,
                           ceilings.get("peak_flops", {}).get(precision),
                           ceilings.get("bandwidth"))
    cudnn_t = rows[0].get("median_s")
    for r in rows:
        r.update(T=T, B=B, I=I, H=H, precision=precision, tf32=tf32, floor_per_step_s=floor,
                 barrier_s=barrier_s,
                 barrier_source="assumed" if barrier is None else "measured",
                 barrier_error=barrier_error, plan_forward=plan_fwd, plan_backward=plan_bwd,
                 target_speedup=TARGETS.get(tuple(shape)))
        if "median_s" in r:
            r["per_step_s"] = r["median_s"] / (2 * T)
            r["per_step_over_floor"] = r["per_step_s"] / floor
            r["speedup_vs_cudnn"] = cudnn_t / r["median_s"] if cudnn_t else None
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "bench_cuda.json"))
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget", type=float, default=150.0,
                   help="seconds; shapes left when it is spent are skipped")
    p.add_argument("--quick", action="store_true", help="the two smaller shapes only")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA device", file=sys.stderr)
        return 2
    import rnn_ext

    if not rnn_ext.has_cuda_kernels():
        print("bench_cuda: rnn_ext was built without CUDA kernels", file=sys.stderr)
        return 2
    t0 = time.time()
    shapes = SHAPES[:2] if args.quick else SHAPES
    results = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   machine=machine_info("cuda"),  # date, versions, commit, GPU, SMs, ...
                   timing="CUDA events around each forward+backward, median of the repetitions "
                          "after warm-up; TF32 as each row's 'tf32' says (cuDNN and cuBLAS alike)",
                   rows=[], skipped=[])
    ceilings = measure_ceilings()
    results["ceilings"] = dict(measured=ceilings,
                               datasheet=dict(peak_flops=PEAK_FLOPS, bandwidth=BANDWIDTH))
    print(f"ceilings: {json.dumps(results['ceilings'])}", flush=True)
    for precision in PRECISIONS:
        for shape in shapes:
            if time.time() - t0 > args.budget:
                results["skipped"].append(dict(shape=shape, precision=precision))
                continue
            T = shape[0]
            reps = max(3, args.reps if T * shape[3] <= 256 * 1000 else args.reps // 2)
            rows = bench_shape(shape, precision, reps, args.warmup, ceilings)
            results["rows"].extend(rows)
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
            for r in rows:
                print(json.dumps(r), flush=True)
    results["elapsed_s"] = time.time() - t0
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print_table(results)
    return 0


def print_table(results):
    print(f"\n{results['device']}  torch {results['torch']}  CUDA {results['cuda']}  "
          f"cuDNN {results['cudnn']}")
    print(f"{'shape (T,B,I,H)':<22}{'prec':<10}{'impl':<8}{'ms':>9}{'x cuDNN':>9}"
          f"{'target':>7}{'us/step':>9}{'floor us':>9}{'rel diff':>10}{'barrier us':>11}"
          f"{'blocks f/b':>11}")
    for r in results["rows"]:
        shape = f"{r['T']},{r['B']},{r['I']},{r['H']}"
        if "error" in r:
            print(f"{shape:<22}{r['precision']:<10}{r['impl']:<8} ERROR {r['error'][:60]}")
            continue
        sp = r.get("speedup_vs_cudnn")
        print(f"{shape:<22}{r['precision']:<10}{r['impl']:<8}{r['median_s'] * 1e3:>9.3f}"
              f"{(sp if sp else math.nan):>9.2f}{(r['target_speedup'] or math.nan):>7.1f}"
              f"{r['per_step_s'] * 1e6:>9.2f}{r['floor_per_step_s'] * 1e6:>9.2f}"
              f"{math.nan if r['rel_diff_vs_cudnn'] is None else r['rel_diff_vs_cudnn']:>10.1e}"
              f"{r['barrier_s'] * 1e6:>10.2f}{'' if r['barrier_source'] == 'measured' else '*':1}"
              f"{_blocks(r):>11}")
    for s in results["skipped"]:
        print(f"skipped (time budget): {s}")
    measured = results.get("ceilings", {}).get("measured") or {}
    peaks = ", ".join(f"{k} {v / 1e12:.0f}" for k, v in measured.get("peak_flops", {}).items())
    bw = measured.get("bandwidth")
    print(f"floor ceilings (measured): mm TFLOP/s {peaks or '-'}; copy "
          f"{'-' if bw is None else f'{bw / 1e12:.2f}'} TB/s (datasheet where '-')")
    print("barrier us: measured at the plans' grids (* = assumed, no measurement); blocks f/b: "
          "the forward / backward plan's grid")


def _blocks(r):
    f, b = r.get("plan_forward"), r.get("plan_backward")
    return f"{f['blocks'] if f else '-'}/{b['blocks'] if b else '-'}"


if __name__ == "__main__":
    sys.exit(main())
