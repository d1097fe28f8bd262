"""Benchmark of the fused sequence losses against the lesson's and PyTorch's calls.

Times forward + backward (the gradient with respect to the loss's input, by
torch.autograd.grad, so nothing accumulates between runs) of

  NLL   rnn_ext.seq_nll_loss(log_probs, target)
        vs the lesson's nll_loss_seq: F.nll_loss(inp.view(-1, nh),
                                                  targ.transpose(0, 1).contiguous().view(-1))
  CE    rnn_ext.seq_cross_entropy(logits, target)
        vs F.cross_entropy on the flattened pair
        vs F.log_softmax followed by the lesson's nll_loss_seq

at the lesson's shape (T=8, B=512, C=85) and a large one (T=256, B=64, C=10000), float32, with
torch.utils.benchmark.Timer (median and IQR of blocked runs), and writes a JSON with the
machine, torch version, thread count, date, every median / IQR and the ratios
(baseline median / fused median: above 1 means the fused path is faster).

Usage:
    python benchmarks/bench_loss.py [--quick] [--device cpu|cuda] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

import rnn_ext

SHAPES = [(8, 512, 85), (256, 64, 10000)]


def nll_loss_seq(inp, targ):
    """The lesson's loss (fast.ai dl1 lesson6-rnn.ipynb)."""
    sl, bs, nh = inp.size()
    targ = targ.transpose(0, 1).contiguous().view(-1)
    return F.nll_loss(inp.view(-1, nh), targ)


def cases():
    """(family, name, function of (input, target) -> loss); the first of each family is the
    fused one."""
    return [
        ("nll", "rnn_ext.seq_nll_loss", lambda x, y: rnn_ext.seq_nll_loss(x, y)),
        ("nll", "lesson nll_loss_seq (F.nll_loss, transposed copy)", nll_loss_seq),
        ("ce", "rnn_ext.seq_cross_entropy", lambda x, y: rnn_ext.seq_cross_entropy(x, y)),
        ("ce", "F.cross_entropy (flattened pair)",
         lambda x, y: F.cross_entropy(x.view(-1, x.shape[-1]),
                                      y.transpose(0, 1).contiguous().view(-1))),
        ("ce", "F.log_softmax + lesson nll_loss_seq",
         lambda x, y: nll_loss_seq(F.log_softmax(x, -1), y)),
    ]


def machine_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="shorter timing (0.2 s per case instead of 2 s)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", default=None,
                        help="comma-separated CPU thread counts to time, e.g. 1,2 (default: "
                             "torch.get_num_threads())")
    parser.add_argument("--out", default=None,
                        help="JSON path (default benchmarks/results/bench_loss_<device>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    out_path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                        f"bench_loss_{args.device}.json")
    min_run_time = 0.2 if args.quick else 2.0
    thread_counts = ([int(n) for n in args.threads.split(",")] if args.threads
                     else [torch.get_num_threads()])
    results = []
    for threads, (T, B, C) in [(n, shape) for n in thread_counts for shape in SHAPES]:
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(T, B, C, generator=gen).to(device)
        log_probs = logits.log_softmax(-1)
        target = torch.randint(0, C, (B, T), generator=gen).to(device)
        fused_median = {}
        for family, name, fn in cases():
            x = (log_probs if family == "nll" else logits).detach().requires_grad_()
            # check that the case computes the same loss and gradient as the fused one
            loss = fn(x, target)
            (grad,) = torch.autograd.grad(loss, x)
            if family not in fused_median:
                ref_loss, ref_grad = loss.detach(), grad
            else:
                torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)
            del grad
            timer = Timer(
                stmt="torch.autograd.grad(fn(x, target), x)",
                globals=dict(torch=torch, fn=fn, x=x, target=target),
                num_threads=threads, label="sequence loss, forward + backward",
                sub_label=f"T={T} B={B} C={C}", description=name,
            )
            m = timer.blocked_autorange(min_run_time=min_run_time)
            row = dict(family=family, case=name, threads=threads, T=T, B=B, C=C,
                       median_s=m.median, iqr_s=m.iqr, min_s=min(m.times), runs=len(m.times),
                       number_per_run=m.number_per_run)
            if family not in fused_median:
                fused_median[family] = (m.median, min(m.times))
            else:
                row["ratio_baseline_over_fused"] = m.median / fused_median[family][0]
                row["ratio_of_min_baseline_over_fused"] = min(m.times) / fused_median[family][1]
            results.append(row)
            ratio = row.get("ratio_baseline_over_fused")
            speed = f"  baseline / fused = {ratio:.2f}" if ratio else ""
            print(f"threads={threads} T={T:4d} B={B:4d} C={C:6d}  {name:50s} "
                  f"median {m.median * 1e3:9.3f} ms  IQR {m.iqr * 1e3:8.3f} ms{speed}", flush=True)
            del x, loss
    report = dict(
        benchmark="bench_loss",
        device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        machine=machine_name(), platform=platform.platform(), python=sys.version.split()[0],
        torch=torch.__version__, threads=thread_counts,
        cpu_count=os.cpu_count(),
        load_average=os.getloadavg() if hasattr(os, "getloadavg") else None,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        dtype="float32", quick=args.quick, min_run_time_s=min_run_time,
        note=("ratio_baseline_over_fused = baseline median / fused median (> 1: fused faster); "
              "ratio_of_min_* the same with the fastest block. load_average is the machine's at "
              "the end of the run: a shared machine makes medians noisy, multi-threaded most."),
        results=results,
    )
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
