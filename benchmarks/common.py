"""Shared helpers of the rnn_ext benchmarks: machine description, timing, peak memory, JSON.

Every benchmark script (``bench_rnn.py``, ``bench_loss.py``, ``bench_train.py``) writes one JSON
file ``benchmarks/results/<script>_<device>.json`` of the form::

    {"schema": "rnn_ext.bench/1", "script": ..., "device": "cpu" | "cuda",
     "machine": machine_info(...), "settings": {...}, "methods": {...}, "results": [...]}

so that ``plot_results.py`` and ``render_readme.py`` read them all the same way.

Timing (:func:`time_interleaved`):

- CPU: :class:`torch.utils.benchmark.Timer` with ``num_threads=N`` (the same N for every
  implementation; N = ``torch.get_num_threads()`` unless ``--threads`` says otherwise):
  ``blocked_autorange`` in the first round (it chooses the block size, so that one block is
  long against the timer's resolution), ``timeit(block size)`` in the later rounds; each
  measurement is the mean time per call of one block.
- CUDA: CUDA events recorded on the current stream around each call
  (``torch.cuda.Event(enable_timing=True)``), after warm-up; ``torch.cuda.synchronize()`` before
  reading them. This times the device work of one call plus any launch gaps inside it.

In both cases the implementations of one case are measured in alternating rounds (A, B, A, B,
...) so that a change of machine load during the run affects all of them alike; the statistics
are over all measurements of all rounds: median, inter-quartile range (IQR), min, count.

Peak memory of a training step (:func:`peak_memory_bytes`), in bytes above what was allocated
when the step started (inputs, weights and the given output gradients are allocated before):

- CUDA: ``torch.cuda.reset_peak_memory_stats()``, then ``torch.cuda.max_memory_allocated() -
  torch.cuda.memory_allocated()`` taken before the step (the caching allocator's exact count of
  bytes in live tensors, rounded to its 512-byte blocks).
- CPU: PyTorch has no peak counter for host memory, so the step runs once under
  :func:`torch.profiler.profile` with ``profile_memory=True``; the profiler records every
  allocation and free of PyTorch's CPU allocator (``c10::CPUAllocator``, which ATen and the
  rnn_ext kernels use for all tensors) with its size and time stamp. Sorting those events by
  time and taking the maximum of the running sum gives the peak of live tensor bytes during the
  step. Memory that a library allocates outside PyTorch's allocator (e.g. scratch buffers of
  BLAS or oneDNN) is not seen, on either side.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import timeit
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

SCHEMA = "rnn_ext.bench/1"
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent

# Benchmark the checkout these scripts belong to when it is built in place (its rnn_ext holds
# the compiled _C); otherwise the installed rnn_ext (pip install .) is imported as usual.
if any((REPO_ROOT / "rnn_ext").glob("_C*")) and str(REPO_ROOT) not in sys.path[:1]:
    sys.path.insert(0, str(REPO_ROOT))

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# ---------------------------------------------------------------------------------------------
# Machine description


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


SOURCE_GLOBS = ("setup.py", "pyproject.toml", "csrc/**/*", "rnn_ext/**/*.py",
                "benchmarks/*.py", "benchmarks/*.sh", "tests/**/*.py")


def source_digest(root: Path = REPO_ROOT) -> str:
    """sha256 (first 16 hex digits) of the code that a run built and ran: the files matching
    SOURCE_GLOBS under ``root``, by relative path and content, in sorted order. The device
    receives a copy of the working tree without .git: this names what it ran, edits included,
    and ``python benchmarks/common.py --digest`` on a checkout of the commit must print the
    same value."""
    import hashlib

    files = sorted({p for g in SOURCE_GLOBS for p in root.glob(g)
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".so"})
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def machine_info(device: str) -> Dict[str, Any]:
    """A description of the machine and software a measurement ran on.

    Args:
        device: "cpu" or "cuda".

    Returns:
        A JSON-able dict: UTC date, host OS, CPU model, logical CPUs, load average (1, 5, 15
        minutes, at the time of the call), torch/Python/rnn_ext versions and git commit, torch
        intra-op threads, and for CUDA: GPU name, capability, memory, CUDA and cuDNN versions,
        and the TF32 flags as they are when called.
    """
    info: Dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        # A copy of the tree without .git (the GPU machine's) names its commit in the
        # environment: RNN_EXT_GIT_COMMIT (device_check.sh's caller sets it).
        "git_commit": _git("rev-parse", "--short", "HEAD") or os.environ.get("RNN_EXT_GIT_COMMIT"),
        # Uncommitted changes to the code (results files and the README they feed excluded);
        # None without .git (unknown: source_digest tells what ran).
        "git_dirty": (None if _git("rev-parse", "--git-dir") is None else
                      bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!benchmarks/results", ":!README.md"))),
        "source_digest": source_digest(),
    }
    # Allocator settings change CPU timings (page faults of memory malloc returned to the OS):
    # recorded for every run (benchmarks/run_cpu_benchmarks.sh sets the glibc ones).
    info["allocator_env"] = {k: v for k, v in sorted(os.environ.items())
                             if k.startswith("MALLOC_") or k == "LD_PRELOAD"}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        info["load_average"] = None
    try:
        import rnn_ext

        info["rnn_ext"] = rnn_ext.__version__
        info["rnn_ext_path"] = str(Path(rnn_ext.__file__).parent)
        info["rnn_ext_cuda_kernels"] = bool(rnn_ext.has_cuda_kernels())
    except Exception as e:  # noqa: BLE001 - recorded, not hidden
        info["rnn_ext"] = f"import failed: {e}"
    if device == "cuda":
        idx = torch.cuda.current_device()
        prop = torch.cuda.get_device_properties(idx)
        info.update(
            gpu=torch.cuda.get_device_name(idx),
            gpu_capability=f"{prop.major}.{prop.minor}",
            gpu_memory_gib=round(prop.total_memory / 2**30, 1),
            gpu_multiprocessors=prop.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
    return info


# ---------------------------------------------------------------------------------------------
# Command line


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, except where the help text already gives the default or
    the default is None / False (which it would print as "(default: None)")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark script shares: --device, --dtypes, --quick, --threads,
    --min-run-time, --rounds, --out, --no-progress."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=_DefaultsFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where to run (cuda: the current CUDA device)")
    p.add_argument("--dtypes", default=None,
                   help="comma-separated dtypes (float32, float64, bfloat16, float16); default "
                        "per script and device")
    p.add_argument("--quick", action="store_true",
                   help="a few small shapes and short timings (seconds): a smoke test")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for every implementation (default: "
                        "torch.get_num_threads())")
    p.add_argument("--min-run-time", type=float, default=None,
                   help="seconds of timing per implementation and round "
                        "(default: 0.2, quick: 0.05)")
    p.add_argument("--rounds", type=int, default=None,
                   help="alternating measurement rounds per case (default: 5, quick: 1)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file to write (default: benchmarks/results/<script>_<device>.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def resolve_common(args: argparse.Namespace, default_dtypes: str = "float32") -> None:
    """Fill the defaults of :func:`base_parser`'s options in place and check them.

    Raises:
        SystemExit: CUDA requested without a CUDA device, or an unknown dtype.
    """
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch.cuda.is_available() is False on this machine")
    names = (args.dtypes or default_dtypes).split(",")
    bad = [n for n in names if n not in DTYPES]
    if bad:
        sys.exit(f"--dtypes: unknown {bad}; expected some of {sorted(DTYPES)}")
    args.dtypes = names
    if args.threads is None:
        args.threads = torch.get_num_threads()
    if args.min_run_time is None:
        args.min_run_time = 0.05 if args.quick else 0.2
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5


def progress(iterable: Iterable, total: Optional[int] = None, desc: str = "",
             disable: bool = False):
    """A tqdm progress bar on stderr (disabled with ``disable``)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=disable, file=sys.stderr,
                dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# Timing


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


def _times_cpu(fn: Callable[[], Any], num_threads: int, min_run_time: float,
               number: Optional[int] = None) -> Tuple[List[float], int]:
    """Seconds per call of blocks of ``number`` calls for at least ``min_run_time`` seconds.

    Without ``number``, ``Timer.blocked_autorange`` chooses it (its calibration doubles as a
    warm-up); later rounds pass the number back to skip the calibration. Returns (times, number).
    """
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=num_threads)
    if number is None:
        m = timer.blocked_autorange(min_run_time=min_run_time)
        return [float(t) for t in m.times], int(m.number_per_run)
    times: List[float] = []
    t0 = timeit.default_timer()
    while not times or timeit.default_timer() - t0 < min_run_time:
        times += [float(t) for t in timer.timeit(number).times]
    return times, number


def _times_cuda(fn: Callable[[], Any], min_run_time: float) -> List[float]:
    # Calibrate the number of calls from one synchronised call, then time each call with events.
    torch.cuda.synchronize()
    t0 = timeit.default_timer()
    fn()
    torch.cuda.synchronize()
    one = max(timeit.default_timer() - t0, 1e-6)
    n = int(min(max(min_run_time / one, 5), 10_000))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]


def stats(times: Sequence[float]) -> Dict[str, Any]:
    """Median, IQR (q75 - q25), min and count of a list of seconds."""
    t = torch.tensor(list(times), dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return {"median_s": q[1], "iqr_s": q[2] - q[0], "min_s": float(t.min()), "n": len(times)}


def time_interleaved(cases: Dict[str, Callable[[], Any]], device: str, num_threads: int,
                     min_run_time: float, rounds: int,
                     contexts: Optional[Dict[str, Callable[[], Any]]] = None,
                     warmup: int = 2) -> Dict[str, Dict[str, Any]]:
    """Time several implementations of one workload in alternating rounds.

    Args:
        cases: name -> zero-argument callable doing one unit of work (e.g. forward + backward).
        device: "cpu" (torch.utils.benchmark.Timer, ``num_threads``) or "cuda" (CUDA events).
        num_threads: intra-op threads for every case (CPU and CUDA host side).
        min_run_time: seconds of timing per case per round.
        rounds: number of rounds; each round times every case once, in order.
        contexts: name -> context-manager factory entered around that case's calls (e.g.
            ``lambda: torch.backends.cudnn.flags(enabled=False)``).
        warmup: untimed calls per case before the first round.

    Returns:
        name -> :func:`stats` of all its measurements, in seconds per call.
    """
    contexts = contexts or {}
    times: Dict[str, List[float]] = {k: [] for k in cases}
    numbers: Dict[str, Optional[int]] = {k: None for k in cases}
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        for name, fn in cases.items():
            with contexts.get(name, contextlib.nullcontext)():
                for _ in range(warmup):
                    fn()
                synchronize(device)
        for _ in range(rounds):
            for name, fn in cases.items():
                with contexts.get(name, contextlib.nullcontext)():
                    if device == "cuda":
                        times[name] += _times_cuda(fn, min_run_time)
                    else:
                        t, numbers[name] = _times_cpu(fn, num_threads, min_run_time,
                                                      numbers[name])
                        times[name] += t
    finally:
        torch.set_num_threads(prev_threads)
    return {k: stats(v) for k, v in times.items()}


# ---------------------------------------------------------------------------------------------
# Peak memory

TIMING_METHOD = {
    "cpu": "torch.utils.benchmark.Timer(num_threads=threads): blocked_autorange in the first "
           "round, timeit(its block size) in later rounds; one measurement = mean time per call "
           "of one block; implementations alternate round by round",
    "cuda": "CUDA events recorded around each call after warm-up, synchronised once per round; "
            "implementations alternate round by round",
}

PEAK_MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus "
            "memory_allocated() at the start of the step: peak bytes of live tensors the step "
            "added (caching allocator's count)",
    "cpu": "one step under torch.profiler.profile(profile_memory=True); every allocation and "
           "free of PyTorch's CPU allocator sorted by time; peak of the running sum = peak bytes "
           "of live tensors the step added. Memory allocated outside PyTorch's allocator "
           "(BLAS/oneDNN scratch) is not counted, on either side; rnn_ext's one tensor mapped "
           "outside it (the word-level NLL gradient) reports itself to the profiler and counts",
}


def peak_memory_bytes(step: Callable[[], Any], device: str) -> int:
    """Peak bytes of tensors allocated by ``step()`` above those alive when it started.

    ``step`` is run once (call it once beforehand if it has one-time allocations). The method
    per device is :data:`PEAK_MEMORY_METHOD`. The result of ``step`` is dropped inside the
    measured region, so memory it returns counts at its peak but not after.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    events.sort()
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return int(peak)


# ---------------------------------------------------------------------------------------------
# Results


def results_path(script: str, device: str, out: Optional[Path] = None) -> Path:
    """``out`` if given, else ``benchmarks/results/<script>_<device>.json``."""
    return Path(out) if out is not None else RESULTS_DIR / f"{script}_{device}.json"


def write_results(path: Path, script: str, device: str, settings: Dict[str, Any],
                  results: List[Dict[str, Any]], methods: Optional[Dict[str, Any]] = None,
                  machine: Optional[Dict[str, Any]] = None) -> Path:
    """Write one results file (see the module docstring for its layout) and return its path.

    ``machine`` defaults to :func:`machine_info` taken now (after the run, so its load average
    covers the run's last minutes); pass the one taken at the start to keep both.
    """
    end = machine_info(device)
    doc = {
        "schema": SCHEMA,
        "script": script,
        "device": device,
        "machine": machine or end,
        "load_average_at_end": end.get("load_average"),
        "settings": settings,
        "methods": methods or {},
        "results": results,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def read_results(path: Path) -> Dict[str, Any]:
    """Read a results file and check its schema.

    Raises:
        ValueError: the file is not a results file of this schema.
    """
    doc = json.loads(Path(path).read_text())
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {doc.get('schema')!r}, expected {SCHEMA!r}")
    return doc


def fmt_time(s: Optional[float]) -> str:
    """Seconds as a short human string (us / ms / s)."""
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_ratio(x: Optional[float]) -> str:
    """A speed-up with two decimals; "-" where there is none (the baseline row failed)."""
    return "-" if x is None else f"{x:.2f}"


def fmt_bytes(n: Optional[float]) -> str:
    """Bytes as MiB with one decimal (KiB below 1 MiB)."""
    if n is None:
        return "-"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


if __name__ == "__main__":
    if sys.argv[1:] == ["--digest"]:
        print(source_digest())
    else:
        sys.exit("usage: python benchmarks/common.py --digest")
