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

Each row also has the whole operation's floor, op_floor_s = max(2 T barriers, all the flops of
forward+backward (6 T B I H + 6 T B H^2: input projection, recurrence, and in the backward the
recurrence, grad_input, grad_weight_ih and grad_weight_hh) / peak, the least bytes
(3 T B I + 3 T B H elements: x read twice, grad_input written, the output written and read,
grad_output read) / bandwidth), and median_over_op_floor: the per-step floor above counts only
the serial recurrence, so per_step_over_floor cannot reach 1 where I is not small against H.

Order and hangs: the cuDNN and cuBLAS rows of every shape and precision run first, the
persistent kernel's rows last (they are the ones a deadlocked grid barrier could stop); the
cuDNN and cuBLAS rows may use half the --budget. Every timed call (warm-up and repetitions) and
the grid-barrier measurement run under a watchdog (a worker thread, joined with --call-timeout;
the ceilings' torch.mm / copy and the profiled cuDNN call do not): a call that does not finish
(a kernel that never returns leaves the process unable to use the device) is recorded as the
row's error, the JSON and the table are written, and the process exits with status 3 at once,
instead of waiting for the caller's timeout. For the cuDNN baseline each precision's first row
records torch.backends.cudnn.is_acceptable(input) and the names of the CUDA kernels one
profiled call launched (evidence that cuDNN's RNN kernels ran, e.g. for bfloat16); every row
records the TF32 flags as they were read back while it ran.

Usage: python benchmarks/bench_cuda.py [--json PATH] [--reps N] [--budget SECONDS] [--quick]
       python benchmarks/bench_cuda.py --table-from PATH    (the table of a JSON written before)
Writes the results as JSON (a list of rows) and prints a table. Needs a CUDA device.
Exit status: 0, 2 (no CUDA device or no CUDA kernels), 3 (a call hung; results written).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import threading
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


def _floor(barriers_s, flops, elements, precision, peak_flops, bandwidth):
    """max(barriers_s, flops / peak, bytes / bandwidth); peak (flop/s) and bandwidth (bytes/s)
    default to the datasheet figures; 2 bytes per element for bf16, else 4."""
    elt = 2 if precision == "bf16" else 4
    peak = PEAK_FLOPS[precision] if peak_flops is None else peak_flops
    bw = BANDWIDTH if bandwidth is None else bandwidth
    return max(barriers_s, flops / peak, elements * elt / bw)


def per_step_floor(B, H, precision, barrier_s=BARRIER_S, peak_flops=None, bandwidth=None):
    """Seconds: max(barrier, 2 B H^2 / peak, 3 B H elements / bandwidth) for one step."""
    return _floor(barrier_s, 2.0 * B * H * H, 3.0 * B * H, precision, peak_flops, bandwidth)


def op_floor(T, B, I, H, precision, barrier_s=BARRIER_S, peak_flops=None, bandwidth=None):
    """Seconds: the whole forward+backward's floor, max(2 T barriers, (6 T B I H + 6 T B H^2)
    flops / peak, (3 T B I + 3 T B H) elements / bandwidth); see the module docstring."""
    return _floor(2 * T * barrier_s, 6.0 * T * B * I * H + 6.0 * T * B * H * H,
                  3.0 * T * B * I + 3.0 * T * B * H, precision, peak_flops, bandwidth)


class Hang(RuntimeError):
    """A call that did not finish within its watchdog's time."""


def guarded(fn, timeout_s, what):
    """fn() and a device synchronisation, in a worker thread joined with ``timeout_s``: its
    value, or its exception re-raised; Hang if it has not finished by then (the thread is left
    behind: a kernel that never returns cannot be interrupted)."""
    box = {}

    def work():
        try:
            box["value"] = fn()
            torch.cuda.synchronize()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    th = threading.Thread(target=work, daemon=True, name=f"bench_cuda {what}")
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        raise Hang(f"{what}: did not finish within {timeout_s:.0f} s (a hung kernel?)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def cudnn_evidence(run_cudnn, x):
    """Whether cuDNN runs nn.RNN for ``x``: torch.backends.cudnn.is_acceptable and the CUDA
    kernel names (with their launch counts) of one profiled forward+backward."""
    ev = dict(cudnn_enabled=torch.backends.cudnn.enabled)
    try:
        ev["cudnn_is_acceptable"] = bool(torch.backends.cudnn.is_acceptable(x))
    except Exception as e:
        ev["cudnn_is_acceptable"] = f"{type(e).__name__}: {e}"[:200]
    try:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run_cudnn()
            torch.cuda.synchronize()
        counts = {}
        for e in prof.events():
            if e.device_type == DeviceType.CUDA:
                counts[e.name] = counts.get(e.name, 0) + 1
        ev["kernels"] = sorted(counts.items(), key=lambda kv: -kv[1])[:15]
    except Exception as e:
        ev["kernels_error"] = f"{type(e).__name__}: {e}"[:200]
    return ev


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


def time_it(fn, reps, warmup, guard=None):
    """(median, min) seconds of fn over ``reps`` calls after ``warmup``, CUDA events around each
    call. guard = (timeout_s, what): each call (and its events) runs under :func:`guarded`, so
    a hang anywhere in the loop is caught within timeout_s."""
    def call(f):
        return f() if guard is None else guarded(f, guard[0], guard[1])

    for _ in range(warmup):
        call(fn)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        def once():
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3
        times.append(call(once))
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


def plans_and_barrier(B, H, dtype, measure=True):
    """The forward and backward plans for (B, H) and the mean of their measured per-barrier
    times: (plan_forward, plan_backward, barrier_s or None, error or None); without
    ``measure``, barrier_s is None ("not measured yet")."""
    from rnn_ext.ops import cuda_persistent_plan

    try:
        plans = [cuda_persistent_plan(B, H, dtype, backward=bw) for bw in (False, True)]
    except Exception as e:  # report and continue
        return None, None, None, f"{type(e).__name__}: {e}"[:300]
    if None in plans:
        return plans[0], plans[1], None, "no persistent plan fits"
    if not measure:
        return plans[0], plans[1], None, "not measured yet"
    try:
        barrier = statistics.mean(
            guarded(lambda p=p: measure_grid_barrier(p["blocks"], p["smem"]), 60,
                    f"grid barrier ({p['blocks']} blocks)") for p in plans)
    except Hang:
        raise
    except Exception as e:
        return plans[0], plans[1], None, f"{type(e).__name__}: {e}"[:300]
    return plans[0], plans[1], barrier, None


class Case:
    """One shape and precision: nn.RNN on cuDNN and rnn_ext.elman_rnn with the same weights,
    inputs and output gradients (seeded), and their forward+backward calls."""

    def __init__(self, shape, precision):
        import rnn_ext

        T, B, I, H = self.shape = tuple(shape)
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.tf32 = precision == "fp32-tf32"
        self.set_flags()
        dev = "cuda"
        g = torch.Generator(device=dev).manual_seed(0)
        torch.manual_seed(0)
        self.rnn = rnn = nn.RNN(I, H).to(dev, self.dtype)
        x = torch.randn(T, B, I, device=dev, dtype=self.dtype, generator=g).requires_grad_()
        h0 = torch.randn(B, H, device=dev, dtype=self.dtype, generator=g).mul_(0.5)
        h0.requires_grad_()
        gy = torch.randn(T, B, H, device=dev, dtype=self.dtype, generator=g)
        ghn = torch.randn(B, H, device=dev, dtype=self.dtype, generator=g)
        params = [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0]
        h0_3d = h0.detach().unsqueeze(0).requires_grad_()
        self.x = x

        def run_cudnn():
            out, hn = rnn(x, h0_3d)
            torch.autograd.grad([out, hn], [x, h0_3d, *params], [gy, ghn.unsqueeze(0)])
            return out

        def run_ext():
            out, hn = rnn_ext.elman_rnn(x, h0, *params)
            torch.autograd.grad([out, hn], [x, h0, *params], [gy, ghn])
            return out

        self.run_cudnn, self.run_ext = run_cudnn, run_ext
        try:
            def reference():
                with torch.no_grad():  # (grad mode is per thread: set in the worker's)
                    return rnn(x, h0_3d)[0].float()

            self.ref = guarded(reference, 60, "cuDNN reference")
        except Hang:
            raise
        except RuntimeError:  # cuDNN without this dtype: its row reports the error
            self.ref = None

    def set_flags(self):
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32

    def row(self, impl, reps, warmup, call_timeout_s):
        """Time one implementation: a dict with median_s, min_s, rel_diff_vs_cudnn, or error.
        Raises Hang (the row is then the caller's to record)."""
        self.set_flags()
        if impl != "cudnn":
            os.environ["RNN_EXT_CUDA_PERSISTENT"] = "require" if impl == "persist" else "off"
        fn = self.run_cudnn if impl == "cudnn" else self.run_ext
        flags = dict(tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                     tf32_cudnn=torch.backends.cudnn.allow_tf32)
        try:
            out = guarded(fn, call_timeout_s, f"{impl} {self.shape} {self.precision}")
            ref = self.ref
            err = ((out.float() - ref).norm() / ref.norm()).item() if ref is not None else None
            med, best = time_it(fn, reps, warmup, guard=(
                call_timeout_s, f"{impl} {self.shape} {self.precision} timing"))
            return dict(impl=impl, median_s=med, min_s=best, rel_diff_vs_cudnn=err, **flags)
        except Hang:
            raise
        except Exception as e:  # report and continue: the other rows still mean something
            return dict(impl=impl, error=f"{type(e).__name__}: {e}"[:300], **flags)
        finally:
            os.environ["RNN_EXT_CUDA_PERSISTENT"] = "auto"

    def annotate(self, r, ceilings, cudnn_t, measure_barrier=True):
        """The floors, plans and speed-up of a row (in place). Without measure_barrier the
        grid barrier is assumed (no cooperative launch) unless an earlier call measured it."""
        T, B, I, H = self.shape
        # Once per case, and once more when the barrier is first to be measured (record()
        # annotates every row of the case at each new row).
        if getattr(self, "_plans_measured", None) not in (True, measure_barrier):
            self._plans = plans_and_barrier(B, H, self.dtype, measure_barrier)
            self._plans_measured = measure_barrier
        plan_fwd, plan_bwd, barrier, barrier_error = self._plans
        barrier_s = BARRIER_S if barrier is None else barrier
        ceilings = ceilings or {}
        peak = ceilings.get("peak_flops", {}).get(self.precision)
        bw = ceilings.get("bandwidth")
        floor = per_step_floor(B, H, self.precision, barrier_s, peak, bw)
        r.update(T=T, B=B, I=I, H=H, precision=self.precision, tf32=self.tf32,
                 floor_per_step_s=floor,
                 op_floor_s=op_floor(T, B, I, H, self.precision, barrier_s, peak, bw),
                 barrier_s=barrier_s,
                 barrier_source="assumed" if barrier is None else "measured",
                 barrier_error=barrier_error, plan_forward=plan_fwd, plan_backward=plan_bwd,
                 target_speedup=TARGETS.get(tuple(self.shape)))
        if "median_s" in r:
            r["per_step_s"] = r["median_s"] / (2 * T)
            r["per_step_over_floor"] = r["per_step_s"] / floor
            r["median_over_op_floor"] = r["median_s"] / r["op_floor_s"]
            r["speedup_vs_cudnn"] = cudnn_t / r["median_s"] if cudnn_t else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "bench_cuda.json"))
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget", type=float, default=150.0,
                   help="seconds; shapes left when it is spent are skipped")
    p.add_argument("--quick", action="store_true", help="the first two shapes only: "
                   "(8, 512, 42, 256) and (100, 64, 512, 512)")
    p.add_argument("--call-timeout", type=float, default=60.0,
                   help="seconds a single forward+backward may take before it counts as hung")
    p.add_argument("--table-from", metavar="PATH",
                   help="print the table of a JSON this script wrote, and exit")
    args = p.parse_args(argv)
    if args.table_from:
        with open(args.table_from) as f:
            print_table(json.load(f))
        return 0
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

    def write():  # to a temporary file, then renamed: a copy taken meanwhile is never torn
        results["elapsed_s"] = time.time() - t0
        with open(args.json + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(args.json + ".tmp", args.json)

    cases, rows = {}, {}  # (shape, precision) -> Case; -> {impl: row}
    order = [(tuple(shape), precision) for precision in PRECISIONS for shape in shapes]

    def record(key, row, measure_barrier):
        rows.setdefault(key, {})[row["impl"]] = row
        cudnn_t = rows[key].get("cudnn", {}).get("median_s")
        for r in rows[key].values():
            cases[key].annotate(r, ceilings, cudnn_t, measure_barrier)
        results["rows"] = [r for k in order if k in rows
                           for impl in ("cudnn", "persist", "cublas") if impl in rows[k]
                           for r in [rows[k][impl]]]
        write()
        print(json.dumps(row), flush=True)

    # Phase 1: cuDNN and the cuBLAS loop everywhere; phase 2: the persistent kernel (and the
    # grid-barrier measurement, a cooperative launch too). See the module docstring.
    try:
        for phase, impls in ((1, ("cudnn", "cublas")), (2, ("persist",))):
            for key in order:
                shape, precision = key
                # Phase 1 may use half the budget: the persistent rows are the point.
                if time.time() - t0 > (args.budget / 2 if phase == 1 else args.budget):
                    results["skipped"].append(dict(shape=shape, precision=precision,
                                                   impls=list(impls)))
                    continue
                if key not in cases:
                    cases[key] = Case(shape, precision)
                case = cases[key]
                T, H = shape[0], shape[3]
                reps = max(3, args.reps if T * H <= 256 * 1000 else args.reps // 2)
                for impl in impls:
                    try:
                        row = case.row(impl, reps, args.warmup, args.call_timeout)
                    except Hang as e:
                        record(key, dict(impl=impl, error=f"hang: {e}"), False)
                        raise
                    if impl == "cudnn" and precision not in results.setdefault("cudnn_check",
                                                                               {}):
                        results["cudnn_check"][precision] = dict(
                            shape=shape, **cudnn_evidence(case.run_cudnn, case.x))
                    record(key, row, phase == 2)
    except Hang as e:
        results["hang"] = str(e)
        write()
        print_table(results)
        print(f"bench_cuda: {e}; stopping (the device cannot be used after a hung kernel)",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(3)
    write()
    print_table(results)
    return 0


def print_table(results):
    print(f"\n{results['device']}  torch {results['torch']}  CUDA {results['cuda']}  "
          f"cuDNN {results['cudnn']}")
    print(f"{'shape (T,B,I,H)':<22}{'prec':<10}{'impl':<8}{'ms':>9}{'x cuDNN':>9}"
          f"{'target':>7}{'us/step':>9}{'floor us':>9}{'x opfloor':>10}{'rel diff':>10}"
          f"{'barrier us':>11}{'blocks f/b':>11}")
    for r in results["rows"]:
        shape = f"{r['T']},{r['B']},{r['I']},{r['H']}"
        if "error" in r:
            print(f"{shape:<22}{r['precision']:<10}{r['impl']:<8} ERROR {r['error'][:60]}")
            continue
        sp = r.get("speedup_vs_cudnn")
        print(f"{shape:<22}{r['precision']:<10}{r['impl']:<8}{r['median_s'] * 1e3:>9.3f}"
              f"{(sp if sp else math.nan):>9.2f}{(r['target_speedup'] or math.nan):>7.1f}"
              f"{r['per_step_s'] * 1e6:>9.2f}{r['floor_per_step_s'] * 1e6:>9.2f}"
              f"{r.get('median_over_op_floor', math.nan):>10.2f}"
              f"{math.nan if r['rel_diff_vs_cudnn'] is None else r['rel_diff_vs_cudnn']:>10.1e}"
              f"{r['barrier_s'] * 1e6:>10.2f}{'' if r['barrier_source'] == 'measured' else '*':1}"
              f"{_blocks(r):>11}")
    for s in results["skipped"]:
        print(f"skipped (time budget): {s}")
    if results.get("hang"):
        print(f"STOPPED: {results['hang']}")
    for precision, ev in (results.get("cudnn_check") or {}).items():
        names = ", ".join(f"{n[:40]} x{c}" for n, c in (ev.get("kernels") or [])[:4])
        print(f"cuDNN check {precision}: is_acceptable={ev.get('cudnn_is_acceptable')}; "
              f"kernels: {names or ev.get('kernels_error', '-')}")
    measured = results.get("ceilings", {}).get("measured") or {}
    peaks = ", ".join(f"{k} {v / 1e12:.0f}" for k, v in measured.get("peak_flops", {}).items())
    bw = measured.get("bandwidth")
    print(f"floor ceilings (measured): mm TFLOP/s {peaks or '-'}; copy "
          f"{'-' if bw is None else f'{bw / 1e12:.2f}'} TB/s (datasheet where '-')")
    print("barrier us: measured at the plans' grids (* = assumed, no measurement); blocks f/b: "
          "the forward / backward plan's grid; x opfloor: time over the whole operation's floor")


def _blocks(r):
    f, b = r.get("plan_forward"), r.get("plan_backward")
    return f"{f['blocks'] if f else '-'}/{b['blocks'] if b else '-'}"


if __name__ == "__main__":
    sys.exit(main())
