"""Benchmark rnn_ext.seq_nll_loss / seq_cross_entropy against the lesson's and PyTorch's losses.

Per shape (T, B, C) and dtype, on one device, same inputs for every implementation:

From log-probabilities ``(T, B, C)`` with targets ``(B, T)`` (the lesson's CharSeqRnn layout):

- ``lesson_nll`` (baseline): the notebook's ``nll_loss_seq``: ``targ.transpose(0, 1)
  .contiguous().view(-1)``, ``F.nll_loss(inp.view(-1, C), targ)``.
- ``seq_nll_loss``: ``rnn_ext.seq_nll_loss(log_probs, target)``.

From raw logits ``(T, B, C)``:

- ``cross_entropy`` (baseline): ``F.cross_entropy(logits.view(-1, C), target.t().reshape(-1))``.
- ``lesson_log_softmax_nll``: ``F.log_softmax(logits, -1)`` then the notebook's ``nll_loss_seq``.
- ``seq_cross_entropy``: ``rnn_ext.seq_cross_entropy(logits, target)``.

``forward`` is the loss alone (no_grad); ``fwd_bwd`` the loss and its gradient with respect to
the log-probabilities / logits; peak memory is that of ``fwd_bwd`` (``common.PEAK_MEMORY_METHOD``).
Implementations missing from this build of rnn_ext are recorded as skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import rnn_ext  # noqa: E402

SCRIPT = "bench_loss"

# (group, T, B, C): the lesson's CharSeqRnn batch (8 characters, bs 512, vocab 85); a longer
# character sequence; a word-level vocabulary; the loss issue's large word-level batch,
# 256 x 64 x 10000 (655 MB of logits in float32).
SHAPES = [("lesson", 8, 512, 85), ("char_long", 100, 64, 85), ("word_vocab", 35, 32, 10000),
          ("word_large", 256, 64, 10000)]
QUICK_SHAPES = [("quick", 5, 4, 7)]


def nll_loss_seq(inp, targ):
    """The notebook's ``nll_loss_seq`` (fast.ai lesson 6): ``inp (T, B, C)``, ``targ (B, T)``."""
    sl, bs, nh = inp.size()
    targ = targ.transpose(0, 1).contiguous().view(-1)
    return F.nll_loss(inp.view(-1, nh), targ)


def implementations() -> Dict[str, Dict[str, Optional[Callable]]]:
    """kind ("log_probs" | "logits") -> name -> loss function of (x (T,B,C), target (B,T)),
    or None where this build of rnn_ext lacks it. The first of each kind is the baseline."""
    return {
        "log_probs": {
            "lesson_nll": nll_loss_seq,
            "seq_nll_loss": getattr(rnn_ext, "seq_nll_loss", None),
        },
        "logits": {
            "cross_entropy": lambda x, t: F.cross_entropy(x.reshape(-1, x.shape[-1]),
                                                          t.t().reshape(-1)),
            "lesson_log_softmax_nll": lambda x, t: nll_loss_seq(F.log_softmax(x, -1), t),
            "seq_cross_entropy": getattr(rnn_ext, "seq_cross_entropy", None),
        },
    }


def run_case(group: str, T: int, B: int, C: int, dtype: torch.dtype, args) -> List[Dict[str, Any]]:
    dev = torch.device(args.device)
    torch.manual_seed(0)
    logits = torch.randn(T, B, C, device=dev, dtype=dtype)
    log_probs = F.log_softmax(logits.float(), -1).to(dtype)
    target = torch.randint(0, C, (B, T), device=dev)
    rows: List[Dict[str, Any]] = []
    for kind, impls in implementations().items():
        x = (log_probs if kind == "log_probs" else logits).detach().requires_grad_(True)
        base_name = next(iter(impls))
        row0 = {"group": group, "label": f"T{T} B{B} C{C}", "T": T, "B": B, "C": C,
                "dtype": str(dtype).replace("torch.", ""), "input": kind, "baseline": base_name}
        ok: Dict[str, Callable] = {}
        kind_rows: Dict[str, Dict[str, Any]] = {}
        ref = None
        for name, fn in impls.items():
            row = kind_rows[name] = {**row0, "impl": name}
            if fn is None:
                row["skipped"] = "not in this build of rnn_ext"
                continue
            try:
                loss = fn(x, target)
                (g,) = torch.autograd.grad(loss, [x])
                got = (loss.detach().float(), g.float())
                if ref is None:
                    ref = got
                row["max_abs_diff_loss"] = float((got[0] - ref[0]).abs().max())
                row["max_abs_diff_grad"] = float((got[1] - ref[1]).abs().max())
                ok[name] = fn
            except Exception as e:  # noqa: BLE001 - recorded
                row["error"] = f"{type(e).__name__}: {e}"[:500]

        def fwd(fn):
            def f():
                with torch.no_grad():
                    return fn(x, target)
            return f

        def fwd_bwd(fn):
            return lambda: torch.autograd.grad(fn(x, target), [x])

        ft = common.time_interleaved({k: fwd(f) for k, f in ok.items()}, args.device,
                                     args.threads, args.min_run_time, args.rounds)
        fbt = common.time_interleaved({k: fwd_bwd(f) for k, f in ok.items()}, args.device,
                                      args.threads, args.min_run_time, args.rounds)
        for name, fn in ok.items():
            r = kind_rows[name]
            r["forward"], r["fwd_bwd"] = ft[name], fbt[name]
            r["peak_memory_bytes"] = common.peak_memory_bytes(fwd_bwd(fn), args.device)
        b = kind_rows[base_name]
        for name in ok:
            r = kind_rows[name]
            if "forward" in b:
                r["speedup_forward"] = b["forward"]["median_s"] / r["forward"]["median_s"]
                r["speedup_fwd_bwd"] = b["fwd_bwd"]["median_s"] / r["fwd_bwd"]["median_s"]
                r["memory_ratio"] = (r["peak_memory_bytes"] / b["peak_memory_bytes"]
                                     if b["peak_memory_bytes"] else None)
        rows += kind_rows.values()
    return rows


def main(argv: Optional[List[str]] = None) -> Path:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append",
                   help="a shape T,B,C (repeatable); replaces the default shapes")
    args = p.parse_args(argv)
    common.resolve_common(args, "float32")
    if args.shape:
        try:
            shapes = [("custom", *map(int, s.split(","))) for s in args.shape]
            assert all(len(s) == 4 for s in shapes)
        except (ValueError, AssertionError):
            sys.exit("--shape: expected T,B,C with integers")
    else:
        shapes = QUICK_SHAPES if args.quick else SHAPES
    machine = common.machine_info(args.device)
    runs = [(s, d) for d in args.dtypes for s in shapes]
    results: List[Dict[str, Any]] = []
    for (group, T, B, C), d in common.progress(runs, desc=SCRIPT, disable=args.no_progress):
        results += run_case(group, T, B, C, common.DTYPES[d], args)
    settings = {"quick": args.quick, "threads": args.threads, "min_run_time_s": args.min_run_time,
                "rounds": args.rounds, "dtypes": args.dtypes,
                "shapes": [dict(zip(("group", "T", "B", "C"), s)) for s in shapes]}
    methods = {
        "timing": common.TIMING_METHOD[args.device],
        "forward": "loss(x, target) under torch.no_grad()",
        "fwd_bwd": "torch.autograd.grad(loss(x, target), [x])",
        "peak_memory": common.PEAK_MEMORY_METHOD[args.device],
        "speedup": "baseline median / this median (baseline: lesson_nll for log-probs, "
                   "F.cross_entropy for logits)",
    }
    path = common.write_results(common.results_path(SCRIPT, args.device, args.out), SCRIPT,
                                args.device, settings, results, methods, machine)
    for r in results:
        if "forward" in r:
            print(f"{r['label']:18} {r['dtype']:9} {r['impl']:24} "
                  f"fwd {common.fmt_time(r['forward']['median_s']):>10} "
                  f"fwd+bwd {common.fmt_time(r['fwd_bwd']['median_s']):>10} "
                  f"x{common.fmt_ratio(r.get('speedup_fwd_bwd'))} "
                  f"mem {common.fmt_bytes(r['peak_memory_bytes'])}")
        else:
            print(f"{r['label']:18} {r['dtype']:9} {r['impl']:24} "
                  f"{r.get('skipped') or r.get('error')}")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
