"""Benchmark rnn_ext.RNN against torch.nn.RNN (and FlashRNN's Elman model where installed).

For each shape (T, B, I, H, layers, bidirectional) and dtype, on one device, in one run, with the
same weights (``rnn_ext.RNN.from_torch`` shares the ``nn.RNN``'s parameters) and the same
number of threads:

- ``forward``: inference, under ``torch.no_grad()``, ``h_0`` omitted (zeros).
- ``fwd_bwd``: forward, then ``torch.autograd.grad`` of (output, h_n) against fixed random
  output gradients, for the input and every parameter (no gradient accumulation in ``.grad``).
- ``peak_memory_bytes``: peak bytes of tensors one such training step (fwd_bwd) allocates
  (method in ``common.PEAK_MEMORY_METHOD``, recorded in the JSON).
- ``speedup_*``: the baseline's median time over this implementation's (higher is faster).
- ``max_abs_diff_*``: how far this implementation's output and gradients are from the
  baseline's on the same inputs (a sanity check that the timed code computes the same thing).

Implementations:

- CPU: ``torch`` (nn.RNN, PyTorch's CPU kernels; the baseline) and ``rnn_ext``.
- CUDA: ``cudnn`` (nn.RNN as PyTorch selects it, cuDNN; the baseline), ``torch_native``
  (nn.RNN under ``torch.backends.cudnn.flags(enabled=False)``), ``rnn_ext`` (its default:
  the persistent kernel where a launch plan fits), ``rnn_ext_cublas`` (``rnn_ext`` with
  ``set_cuda_persistent("off")``: the cuBLAS step loop), and ``flashrnn``
  (FlashRNN's ``function="elman"``, one layer, one direction; its input projection is an
  ``F.linear`` on the same weights) when ``import flashrnn`` works. float32 runs twice: TF32
  off and on (``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``).
  Each case also gets the per-step floor of the recurrence on the GPU (see :func:`gpu_floor`).

Run ``python benchmarks/bench_rnn.py --help`` for the options; ``--quick`` is a smoke test.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import rnn_ext  # noqa: E402

SCRIPT = "bench_rnn"


@dataclass(frozen=True)
class Shape:
    """One benchmark case: sequence length T, batch B, input size I, hidden size H, layers,
    bidirectional, and the group it belongs to (for tables and plots)."""

    group: str
    T: int
    B: int
    I: int  # noqa: E741 - PyTorch's names
    H: int
    layers: int = 1
    bidirectional: bool = False

    @property
    def key(self) -> Tuple[int, int, int, int, int, bool]:
        return (self.T, self.B, self.I, self.H, self.layers, self.bidirectional)

    @property
    def label(self) -> str:
        s = f"T{self.T} B{self.B} I{self.I} H{self.H}"
        if self.layers > 1:
            s += f" L{self.layers}"
        if self.bidirectional:
            s += " bi"
        return s


def shape_groups(device: str) -> Dict[str, List[Shape]]:
    """The named shape groups. CPU versions of the long and large ones are shorter (fewer steps
    or a smaller batch) so that a full CPU run fits in minutes on two cores; the JSON records
    the shapes actually run."""
    gpu = device == "cuda"
    groups = {
        # fast.ai lesson 6's CharRnn: bs 512, 8 characters, n_fac 42, n_hidden 256.
        "lesson": [Shape("lesson", 8, 512, 42, 256)],
        # pytorch/benchmark's fastrnns default: seqLength 100, miniBatch 64, inputSize 512,
        # hiddenSize 512.
        "fastrnns": [Shape("fastrnns", 100, 64, 512, 512)],
        # Small batch, long sequences: latency-bound recurrence.
        "long_seq": [Shape("long_seq", 1000, b, h, h) for b in (1, 8)
                     for h in ((128, 256, 512, 1024) if gpu else (128, 256, 512))],
        # Large hidden sizes.
        "large_h": [Shape("large_h", 100 if gpu else 20, 64 if gpu else 32, h, h)
                    for h in (1024, 2048)],
        # Depth and direction.
        "layers": [Shape("layers", 100 if gpu else 50, 64, 256, 256, n, bi)
                   for n in (1, 2, 3) for bi in (False, True)],
    }
    return groups


QUICK_SHAPES = [Shape("quick", 6, 4, 8, 16), Shape("quick", 5, 3, 8, 16, 2, True)]

# The operator issue's CPU targets: speed-up of forward+backward over nn.RNN (one layer), and a
# training step's peak memory no higher than nn.RNN's.
CPU_TARGETS = {
    (8, 512, 42, 256, 1, False): 1.3,
    (100, 64, 512, 512, 1, False): 1.2,
    (1000, 8, 128, 128, 1, False): 3.0,
}


def parse_shape(spec: str) -> Shape:
    """``"T,B,I,H[,layers[,bi]]"`` -> Shape (group "custom").

    Raises:
        SystemExit: a malformed spec.
    """
    parts = spec.split(",")
    try:
        nums = [int(p) for p in parts[:5]]
        bi = len(parts) > 5 and parts[5].strip().lower() in ("1", "true", "bi", "yes")
        if len(nums) < 4:
            raise ValueError
    except ValueError:
        sys.exit(f"--shape {spec!r}: expected T,B,I,H[,layers[,bi]] with integers")
    return Shape("custom", *nums[:4], nums[4] if len(nums) > 4 else 1, bi)


# ---------------------------------------------------------------------------------------------
# GPU floor

# Ceilings for the per-step floor. H200 SXM (the H100's arithmetic): fp32 67 TFLOP/s and TF32
# 495 TFLOP/s dense (NVIDIA datasheet); bf16 790 TFLOP/s and 4.3 TB/s copy bandwidth as measured
# on this workplace's H200 (/work/.library/device/KINDS.md, 2026-10-28: 8192^3 bf16 matmul
# 769-798 TFLOP/s; device-to-device copy about 4.3 TB/s). A grid-wide barrier costs about 1 us.
GPU_CEILINGS = {
    "H200": {"fp32": 67e12, "tf32": 495e12, "bf16": 790e12, "fp16": 790e12, "fp64": 34e12,
             "bytes_per_s": 4.3e12},
    "H100": {"fp32": 67e12, "tf32": 495e12, "bf16": 790e12, "fp16": 790e12, "fp64": 34e12,
             "bytes_per_s": 3.35e12 * 0.9},
}
BARRIER_S = 1e-6


def gpu_floor(gpu_name: str, shape: Shape, dtype: torch.dtype, tf32: Optional[bool]
              ) -> Optional[Dict[str, Any]]:
    """Lower bounds on the time of the recurrence on this GPU, or None for an unknown GPU.

    Per time step, per layer and direction: ``max(barrier 1 us, 2*B*H^2 / flop rate,
    2*B*H*elem_size / bandwidth)`` (the h W_hh^T product; reading the precomputed input
    projection and writing h_t). The whole-sequence GEMMs (input projection x W_ih^T forward;
    gx, gW_ih, gW_hh backward, gW_hh over (T*B, H)) are bounded by flops/rate and
    bytes/bandwidth. forward floor = sum over layers and directions of
    ``T * step + projection``; fwd_bwd floor = ``2 * T * step + 4 GEMMs`` (the backward
    recurrence has the same per-step product ga W_hh).
    """
    ceil = next((v for k, v in GPU_CEILINGS.items() if k in gpu_name), None)
    if ceil is None:
        return None
    kind = {torch.float32: "tf32" if tf32 else "fp32", torch.bfloat16: "bf16",
            torch.float16: "fp16", torch.float64: "fp64"}[dtype]
    rate, bw = ceil[kind], ceil["bytes_per_s"]
    es = torch.empty((), dtype=dtype).element_size()
    T, B, H = shape.T, shape.B, shape.H
    D = 2 if shape.bidirectional else 1
    step = max(BARRIER_S, 2 * B * H * H / rate, 2 * B * H * es / bw)
    fwd = bwd = 0.0
    for layer in range(shape.layers):
        i = shape.I if layer == 0 else D * H
        gemm = max(2 * T * B * i * H / rate, (T * B * (i + H) + i * H) * es / bw)
        gemm_hh = max(2 * T * B * H * H / rate, (2 * T * B * H + H * H) * es / bw)
        fwd += D * (T * step + gemm)
        bwd += D * (T * step + 2 * gemm + gemm_hh)
    return {"ceiling": kind, "flops_per_s": rate, "bytes_per_s": bw, "step_s": step,
            "forward_s": fwd, "fwd_bwd_s": fwd + bwd}


# ---------------------------------------------------------------------------------------------
# Implementations


def flashrnn_status() -> Tuple[Optional[Callable], str]:
    """(the flashrnn function, "installed <version>") or (None, "not installed: <why>")."""
    try:
        import flashrnn as _fr  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return None, f"not installed ({type(e).__name__}: {e})"
    fn = getattr(_fr, "flashrnn", None)
    if not callable(fn):
        try:
            from flashrnn.flashrnn import flashrnn as fn  # type: ignore
        except Exception as e:  # noqa: BLE001
            return None, f"installed but no flashrnn() function ({e})"
    return fn, f"installed {getattr(_fr, '__version__', '?')}"


class FlashElman(nn.Module):
    """FlashRNN's Elman recurrence on an ``nn.RNN``'s weights (one layer, one direction).

    ``Wx = x W_ih^T`` (one GEMM), then ``flashrnn(Wx (B,T,1,1,H), R = W_hh (1,1,H,H),
    b = b_ih + b_hh (1,1,H), function="elman")``. Returns ``(output (T,B,H), h_n (1,B,H))``.
    """

    def __init__(self, rnn: nn.RNN, fn: Callable, dtype: torch.dtype):
        super().__init__()
        self.rnn, self.fn = rnn, fn
        self.dtype_name = {torch.float32: "float32", torch.bfloat16: "bfloat16",
                           torch.float16: "float16"}[dtype]

    def forward(self, x):
        r = self.rnn
        H = r.hidden_size
        wx = torch.nn.functional.linear(x, r.weight_ih_l0).transpose(0, 1)  # (B, T, H)
        wx = wx.reshape(wx.shape[0], wx.shape[1], 1, 1, H)
        R = r.weight_hh_l0.reshape(1, 1, H, H)
        b = (r.bias_ih_l0 + r.bias_hh_l0).reshape(1, 1, H)
        h, last = self.fn(wx, R, b, function="elman", backend="cuda_fused",
                          dtype=self.dtype_name)
        # h: (S, B, T, NH, D) -> (T, B, H); last: (S, B, 1, NH, D) -> (1, B, H)
        out = h[0].reshape(h.shape[1], h.shape[2], H).transpose(0, 1)
        return out, last[0].reshape(1, -1, H)


@contextlib.contextmanager
def _persistent_mode(mode: str):
    """Run with ``rnn_ext.ops.set_cuda_persistent(mode)``, restoring the previous mode after."""
    prev = rnn_ext.ops.get_cuda_persistent()
    rnn_ext.ops.set_cuda_persistent(mode)
    try:
        yield
    finally:
        rnn_ext.ops.set_cuda_persistent(prev)


def make_impls(device: str, base: nn.RNN, dtype: torch.dtype, shape: Shape,
               flash: Optional[Callable]) -> Tuple[Dict[str, nn.Module],
                                                   Dict[str, Callable[[], Any]], str,
                                                   Dict[str, str]]:
    """The implementations to compare: (modules, context factories, baseline name, skipped)."""
    ours = rnn_ext.RNN.from_torch(base)
    skipped: Dict[str, str] = {}
    if device == "cpu":
        return {"torch": base, "rnn_ext": ours}, {}, "torch", skipped
    mods: Dict[str, nn.Module] = {"cudnn": base, "torch_native": base, "rnn_ext": ours}
    ctx: Dict[str, Callable[[], Any]] = {
        "torch_native": lambda: torch.backends.cudnn.flags(enabled=False)}
    if hasattr(rnn_ext.ops, "set_cuda_persistent"):
        # rnn_ext's default ("auto") uses the persistent kernel where it fits; this variant
        # forces the cuBLAS step loop, to show what the persistent kernel brings.
        mods["rnn_ext_cublas"] = ours
        ctx["rnn_ext_cublas"] = lambda: _persistent_mode("off")
    if flash is None:
        skipped["flashrnn"] = "not installed"
    elif shape.layers != 1 or shape.bidirectional:
        skipped["flashrnn"] = "one layer, one direction only"
    elif dtype not in (torch.float32, torch.bfloat16, torch.float16):
        skipped["flashrnn"] = f"no {dtype}"
    else:
        mods["flashrnn"] = FlashElman(base, flash, dtype)
    return mods, ctx, "cudnn", skipped


# ---------------------------------------------------------------------------------------------
# One case


def run_case(shape: Shape, dtype: torch.dtype, tf32: Optional[bool], args, flash,
             gpu_name: Optional[str]) -> List[Dict[str, Any]]:
    """Measure every implementation on one shape/dtype; one result row per implementation."""
    dev = torch.device(args.device)
    torch.manual_seed(0)
    base = nn.RNN(shape.I, shape.H, num_layers=shape.layers, bidirectional=shape.bidirectional,
                  device=dev, dtype=dtype)
    params = list(base.parameters())
    x = torch.randn(shape.T, shape.B, shape.I, device=dev, dtype=dtype, requires_grad=True)
    D = 2 if shape.bidirectional else 1
    gy = torch.randn(shape.T, shape.B, D * shape.H, device=dev, dtype=dtype)
    gh = torch.randn(shape.layers * D, shape.B, shape.H, device=dev, dtype=dtype)
    mods, ctx, baseline, skipped = make_impls(args.device, base, dtype, shape, flash)

    def fwd(m):
        def f():
            with torch.no_grad():
                return m(x)
        return f

    def fwd_bwd(m):
        def f():
            out, hn = m(x)
            return torch.autograd.grad((out, hn), [x, *params], (gy, gh), allow_unused=True)
        return f

    common_row = {"group": shape.group, "label": shape.label, **{
        k: v for k, v in asdict(shape).items() if k != "group"},
        "nonlinearity": "tanh", "dtype": str(dtype).replace("torch.", ""), "tf32": tf32,
        "baseline": baseline}
    rows: Dict[str, Dict[str, Any]] = {}
    ok: Dict[str, Any] = {}
    ref = None
    for name, m in mods.items():
        row = rows[name] = {**common_row, "impl": name}
        try:
            with ctx.get(name, contextlib.nullcontext)():
                out = fwd_bwd(m)()
                (o, hn) = m(x)
                got = [o.detach(), hn.detach()] + [g for g in out if g is not None]
                common.synchronize(args.device)
            if ref is None:
                ref = got
            row["max_abs_diff_output"] = max(
                float((a.float() - b.float()).abs().max()) for a, b in zip(got[:2], ref[:2]))
            row["max_abs_diff_grad"] = max(
                (float((a.float() - b.float()).abs().max()) for a, b in zip(got[2:], ref[2:])),
                default=None)
            ok[name] = m
        except Exception as e:  # noqa: BLE001 - recorded in the JSON, the run goes on
            row["error"] = f"{type(e).__name__}: {e}"[:500]
    fwd_t = common.time_interleaved({k: fwd(m) for k, m in ok.items()}, args.device,
                                    args.threads, args.min_run_time, args.rounds, ctx)
    fb_t = common.time_interleaved({k: fwd_bwd(m) for k, m in ok.items()}, args.device,
                                   args.threads, args.min_run_time, args.rounds, ctx)
    for name, m in ok.items():
        with ctx.get(name, contextlib.nullcontext)():
            rows[name]["peak_memory_bytes"] = common.peak_memory_bytes(fwd_bwd(m), args.device)
        rows[name]["forward"] = fwd_t[name]
        rows[name]["fwd_bwd"] = fb_t[name]
    b = rows[baseline]
    target = CPU_TARGETS.get(shape.key) if args.device == "cpu" else None
    floor = gpu_floor(gpu_name, shape, dtype, tf32) if gpu_name else None
    for name, row in rows.items():
        if "forward" in row and "forward" in b:
            row["speedup_forward"] = b["forward"]["median_s"] / row["forward"]["median_s"]
            row["speedup_fwd_bwd"] = b["fwd_bwd"]["median_s"] / row["fwd_bwd"]["median_s"]
            row["memory_ratio"] = (row["peak_memory_bytes"] / b["peak_memory_bytes"]
                                   if b["peak_memory_bytes"] else None)
        nat = rows.get("torch_native", {})
        if name.startswith("rnn_ext") and "forward" in nat and "forward" in row:
            for k in ("forward", "fwd_bwd"):
                row[f"speedup_{k}_vs_native"] = nat[k]["median_s"] / row[k]["median_s"]
        if target is not None and name == "rnn_ext":
            row["target"] = {"speedup_fwd_bwd_min": target, "memory_ratio_max": 1.0}
            if "speedup_fwd_bwd" in row:
                row["meets_target"] = bool(row["speedup_fwd_bwd"] >= target
                                           and row["memory_ratio"] is not None
                                           and row["memory_ratio"] <= 1.0)
        if floor is not None and "forward" in row:
            steps = shape.T * shape.layers * D
            row["floor"] = floor
            row["forward_per_step_s"] = row["forward"]["median_s"] / steps
            row["forward_over_floor"] = row["forward"]["median_s"] / floor["forward_s"]
            row["fwd_bwd_over_floor"] = row["fwd_bwd"]["median_s"] / floor["fwd_bwd_s"]
    for name, why in skipped.items():
        rows[name] = {**common_row, "impl": name, "skipped": why}
    return list(rows.values())


def selected_shapes(args) -> List[Shape]:
    if args.quick and not args.shape and not args.groups:
        return list(QUICK_SHAPES)
    groups = shape_groups(args.device)
    names = args.groups.split(",") if args.groups else list(groups)
    bad = [n for n in names if n not in groups]
    if bad:
        sys.exit(f"--groups: unknown {bad}; expected some of {sorted(groups)}")
    shapes = [] if (args.shape and not args.groups) else [s for n in names for s in groups[n]]
    shapes += [parse_shape(s) for s in args.shape or []]
    return shapes


def main(argv: Optional[List[str]] = None) -> Path:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--groups", default=None,
                   help="comma-separated shape groups: lesson, fastrnns, long_seq, large_h, "
                        "layers (default: all; --quick: two tiny shapes)")
    p.add_argument("--shape", action="append",
                   help="an extra shape T,B,I,H[,layers[,bi]] (repeatable); alone, only these")
    p.add_argument("--tf32", choices=["off", "on", "both"], default="both",
                   help="CUDA float32 only: TF32 off, on, or both")
    args = p.parse_args(argv)
    common.resolve_common(args, "float32,bfloat16" if args.device == "cuda" else "float32")
    shapes = selected_shapes(args)
    flash, flash_status = flashrnn_status() if args.device == "cuda" else (None, "CUDA only")
    gpu_name = torch.cuda.get_device_name() if args.device == "cuda" else None
    if args.device == "cuda" and not rnn_ext.has_cuda_kernels():
        print("warning: this rnn_ext build has no CUDA kernels; rnn_ext rows will hold errors",
              file=sys.stderr)
    machine = common.machine_info(args.device)
    runs = []
    for dtype_name in args.dtypes:
        dtype = common.DTYPES[dtype_name]
        tf32s: List[Optional[bool]] = [None]
        if args.device == "cuda" and dtype == torch.float32:
            tf32s = {"off": [False], "on": [True], "both": [False, True]}[args.tf32]
        runs += [(s, dtype, t) for t in tf32s for s in shapes]
    results: List[Dict[str, Any]] = []
    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        for shape, dtype, tf32 in common.progress(runs, desc=SCRIPT, disable=args.no_progress):
            if tf32 is not None:
                torch.backends.cuda.matmul.allow_tf32 = tf32
                torch.backends.cudnn.allow_tf32 = tf32
            results += run_case(shape, dtype, tf32, args, flash, gpu_name)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
    settings = {"quick": args.quick, "threads": args.threads, "min_run_time_s": args.min_run_time,
                "rounds": args.rounds, "dtypes": args.dtypes, "tf32": args.tf32,
                "flashrnn": flash_status, "shapes": [asdict(s) for s in shapes]}
    methods = {
        "timing": common.TIMING_METHOD[args.device],
        "rounds": "implementations measured in alternating rounds; stats over all measurements",
        "forward": "module(x) under torch.no_grad(), h_0 omitted (zeros)",
        "fwd_bwd": "out, h_n = module(x); torch.autograd.grad((out, h_n), [x, *parameters], "
                   "(gy, gh)) with fixed random gy, gh",
        "peak_memory": common.PEAK_MEMORY_METHOD[args.device],
        "speedup": "baseline median time / this implementation's median time",
        "targets": "CPU targets of the operator issue: fwd_bwd speed-up over nn.RNN, and "
                   "peak memory of a training step no higher than nn.RNN's",
        "floor": gpu_floor.__doc__.strip() if args.device == "cuda" else None,
    }
    path = common.write_results(common.results_path(SCRIPT, args.device, args.out), SCRIPT,
                                args.device, settings, results, methods, machine)
    print_table(results)
    print(f"wrote {path}")
    return path


def print_table(results: List[Dict[str, Any]]) -> None:
    """A short text table of the results on stdout."""
    print(f"{'shape':28} {'dtype':9} {'tf32':5} {'impl':15} {'fwd':>10} {'fwd+bwd':>10} "
          f"{'x fwd':>6} {'x f+b':>6} {'peak mem':>10} {'target':>7}")
    for r in results:
        if "forward" not in r:
            print(f"{r['label']:28} {r['dtype']:9} {str(r['tf32']):5} {r['impl']:15} "
                  f"{r.get('skipped') or r.get('error', '')}")
            continue
        tgt = r.get("target", {}).get("speedup_fwd_bwd_min")
        tgt_s = "" if tgt is None else (("ok " if r.get("meets_target") else "NO ") + f"{tgt}")
        print(f"{r['label']:28} {r['dtype']:9} {str(r['tf32']):5} {r['impl']:15} "
              f"{common.fmt_time(r['forward']['median_s']):>10} "
              f"{common.fmt_time(r['fwd_bwd']['median_s']):>10} "
              f"{common.fmt_ratio(r.get('speedup_forward')):>6} "
              f"{common.fmt_ratio(r.get('speedup_fwd_bwd')):>6} "
              f"{common.fmt_bytes(r['peak_memory_bytes']):>10} {tgt_s:>7}")


if __name__ == "__main__":
    main()
