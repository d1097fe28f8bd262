"""Render the README's performance section from the committed results files.

Rewrites what lies between ``<!-- perf:start -->`` and ``<!-- perf:end -->`` in ``README.md``
with tables built only from ``benchmarks/results/*.json`` (and links to the PNGs that
``plot_results.py`` made from them), so the README states no number that no file holds.

Usage::

    python benchmarks/render_readme.py            # rewrite README.md in place
    python benchmarks/render_readme.py --check    # exit 1 if README.md is not up to date
    python benchmarks/render_readme.py --stdout   # print the section

Raises SystemExit when the README lacks the markers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

START, END = "<!-- perf:start -->", "<!-- perf:end -->"
README = common.REPO_ROOT / "README.md"
IMPL_NAMES = {"torch": "nn.RNN (PyTorch CPU)", "cudnn": "nn.RNN (cuDNN)",
              "torch_native": "nn.RNN (native CUDA, cuDNN off)", "rnn_ext": "rnn_ext",
              "rnn_ext_cublas": "rnn_ext (cuBLAS step loop)",
              "flashrnn": "FlashRNN elman"}


def _t(stats: Optional[Dict[str, Any]]) -> str:
    if not stats:
        return "-"
    return f"{common.fmt_time(stats['median_s'])} ± {common.fmt_time(stats['iqr_s'] / 2)}"


def _x(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _machine(doc: Dict[str, Any]) -> str:
    m = doc["machine"]
    s = doc["settings"]
    parts = [f"{m.get('gpu')} (CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')})" if m.get("gpu")
             else f"{m.get('cpu')}, {m.get('logical_cpus')} logical CPUs"]
    parts.append(f"threads={s.get('threads')}")
    parts.append(f"torch {m.get('torch')}")
    parts.append(f"rnn_ext {m.get('rnn_ext')} @ {m.get('git_commit')}"
                 + (" (dirty)" if m.get("git_dirty") else ""))
    parts.append(m.get("date_utc", "?"))
    if m.get("allocator_env"):
        parts.append("allocator: " + ", ".join(f"`{k}={v}`" for k, v in m["allocator_env"].items()))
    la, lb = m.get("load_average"), doc.get("load_average_at_end")
    if la:
        parts.append(f"load average {la[0]:.2f} at start"
                     + (f", {lb[0]:.2f} at end (the benchmark's own threads included)"
                        if lb else ""))
    return "; ".join(parts)


def _busy_warning(doc: Dict[str, Any]) -> List[str]:
    """A warning paragraph when other work loaded the machine during the run, else nothing.

    Busy: the larger 1-minute load average (start or end) less the benchmark's own threads
    above half the logical CPUs. The own threads count in the end value, and in the start
    value when another benchmark ran just before (as in run_cpu_benchmarks.sh).
    """
    m = doc["machine"]
    cpus = m.get("logical_cpus") or 1
    own = (doc["settings"].get("threads") or 1) if doc["device"] == "cpu" else 1
    start, end = m.get("load_average"), doc.get("load_average_at_end")
    loads = [x[0] for x in (start, end) if x]
    if not loads or max(loads) - own <= cpus / 2:
        return []
    return [f"**Caution:** the machine was busy during this run (load average "
            f"{start[0] if start else '?'} at start, {end[0] if end else '?'} at end with this "
            f"benchmark's {own} threads, on {cpus} logical CPUs); timings "
            "are distorted, in either direction. Re-run on a quiet machine before quoting "
            "these numbers.", ""]


def _rel(p: Path) -> str:
    """``p`` relative to the repository root (as README links need), else as given."""
    try:
        return p.resolve().relative_to(common.REPO_ROOT).as_posix()
    except ValueError:
        return p.as_posix()


def section_rnn(doc: Dict[str, Any], path: Path) -> List[str]:
    dev = doc["device"]
    out = [f"### `rnn_ext.RNN` against `nn.RNN` ({dev})", "",
           f"From [`{_rel(path)}`]({_rel(path)}): {_machine(doc)}. "
           f"Median ± half the inter-quartile range over {doc['settings'].get('rounds')} "
           "alternating rounds; speed-up = baseline median / rnn_ext median; peak memory of a "
           "training step (forward + backward).", ""]
    out += _busy_warning(doc)
    rows = doc["results"]
    cuda = dev == "cuda"
    targeted = [r for r in rows if r.get("target") and "fwd_bwd" in r]
    if targeted:
        out += ["Targets (the operator issue's, CPU, one layer): forward+backward speed-up over "
                "`nn.RNN` and a training step's peak memory no higher than `nn.RNN`'s.", "",
                "| shape (T, B, I, H) | target speed-up | measured speed-up | speed met | "
                "peak memory ratio (target ≤ 1.000) | memory met |", "|---|---|---|---|---|---|"]
        for r in targeted:
            t = r["target"]
            sp, mr = r.get("speedup_fwd_bwd"), r.get("memory_ratio")
            sp_ok = sp is not None and sp >= t["speedup_fwd_bwd_min"]
            mem_ok = mr is not None and mr <= t["memory_ratio_max"]
            out.append(f"| {r['label']} | ≥ {t['speedup_fwd_bwd_min']}x | {_x(sp)} | "
                       + ("yes" if sp_ok else "**no**") + f" | {mr or 0:.3f} | "
                       + ("yes" if mem_ok else "**no**") + " |")
        out.append("")
    head = ["shape (T, B, I, H)", "dtype" + (" / TF32" if cuda else ""), "implementation",
            "forward", "forward+backward", "speed-up fwd", "speed-up fwd+bwd",
            "peak memory (ratio)"]
    if cuda:
        head += ["time per step (floor)"]
    else:
        head += ["target fwd+bwd / memory"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        setting = r["dtype"] + ("" if r.get("tf32") is None else
                                (" / on" if r["tf32"] else " / off"))
        name = IMPL_NAMES.get(r["impl"], r["impl"])
        if "forward" not in r:
            why = r.get("skipped") or r.get("error", "")
            out.append(f"| {r['label']} | {setting} | {name} | {why} |" + " |" * (len(head) - 4))
            continue
        mem = f"{common.fmt_bytes(r['peak_memory_bytes'])} ({r.get('memory_ratio') or 0:.2f})"
        cells = [r["label"], setting, name, _t(r["forward"]), _t(r["fwd_bwd"]),
                 _x(r.get("speedup_forward")), _x(r.get("speedup_fwd_bwd")), mem]
        if cuda:
            fl = r.get("floor")
            cells.append(f"{common.fmt_time(r.get('forward_per_step_s'))} "
                         f"({common.fmt_time(fl['step_s'])})" if fl else "-")
        else:
            t = r.get("target")
            cells.append("-" if not t else
                         f"≥ {t['speedup_fwd_bwd_min']}x / ≤ 1.00: "
                         + ("**met**" if r.get("meets_target") else "**not met**"))
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    for png in sorted(path.parent.glob(f"bench_rnn_{dev}*.png")):
        out += [f"![{png.stem}]({_rel(png)})", ""]
    out += [f"Peak memory method: {doc['methods'].get('peak_memory')}.", ""]
    if cuda and doc["methods"].get("floor"):
        out += ["Per-step floor: " + " ".join(doc["methods"]["floor"].split()), ""]
    if cuda:
        out += [f"FlashRNN: {doc['settings'].get('flashrnn')}.", ""]
    return out


def section_loss(doc: Dict[str, Any], path: Path) -> List[str]:
    out = [f"### Sequence losses ({doc['device']})", "",
           f"From [`{_rel(path)}`]({_rel(path)}): {_machine(doc)}. Baselines: the notebook's "
           "`nll_loss_seq` (transpose, copy, flatten, `F.nll_loss`) for log-probabilities, "
           "`F.cross_entropy` for logits.", ""]
    out += _busy_warning(doc)
    out += ["| shape (T, B, C) | dtype | input | implementation | forward | forward+backward | "
           "speed-up fwd | speed-up fwd+bwd | peak memory (ratio) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        if "forward" not in r:
            out.append(f"| {r['label']} | {r['dtype']} | {r['input']} | {r['impl']} | "
                       f"{r.get('skipped') or r.get('error', '')} | | | | |")
            continue
        out.append(f"| {r['label']} | {r['dtype']} | {r['input']} | {r['impl']} | "
                   f"{_t(r['forward'])} | {_t(r['fwd_bwd'])} | {_x(r.get('speedup_forward'))} | "
                   f"{_x(r.get('speedup_fwd_bwd'))} | {common.fmt_bytes(r['peak_memory_bytes'])} "
                   f"({r.get('memory_ratio') or 0:.2f}) |")
    out.append("")
    for png in sorted(path.parent.glob(f"bench_loss_{doc['device']}*.png")):
        out += [f"![{png.stem}]({_rel(png)})", ""]
    return out


def section_train(doc: Dict[str, Any], path: Path) -> List[str]:
    out = [f"### Lesson 6 training throughput ({doc['device']})", "",
           f"From [`{_rel(path)}`]({_rel(path)}): {_machine(doc)}. One step = zero_grad, "
           "forward, loss, backward, Adam step; "
           + ", ".join(f"{k} {doc['settings'].get(k)}" for k in ("bs", "n_fac", "n_hidden"))
           + ".", ""]
    out += _busy_warning(doc)
    if not doc["results"]:
        return out + [f"No results: {doc['settings'].get('skipped')}.", ""]
    out += ["| model | implementation | loss | step | characters/s | s/epoch (estimated"
            " / measured) | speed-up | peak memory (ratio) |",
            "|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        if "step" not in r:
            out.append(f"| {r['model']} | {IMPL_NAMES.get(r['impl'], r['impl'])} | {r['loss']} | "
                       f"{r.get('error', '')} | | | | |")
            continue
        meas = r.get("epoch_s_measured")
        meas_s = " / " + ", ".join(f"{v:.1f}" for v in meas) if meas else ""
        out.append(f"| {r['model']} | {IMPL_NAMES.get(r['impl'], r['impl'])} | {r['loss']} | "
                   f"{_t(r['step'])} | {r['chars_per_s']:,.0f} | "
                   f"{r['epoch_s_estimated']:.1f}{meas_s} | {_x(r['speedup_step'])} | "
                   f"{common.fmt_bytes(r['peak_memory_bytes'])} ({r['memory_ratio'] or 0:.2f}) |")
    out.append("")
    for png in sorted(path.parent.glob(f"bench_train_{doc['device']}*.png")):
        out += [f"![{png.stem}]({_rel(png)})", ""]
    return out


SECTIONS = {"bench_rnn": section_rnn, "bench_loss": section_loss, "bench_train": section_train}
ORDER = ["bench_rnn", "bench_loss", "bench_train"]


def render(results_dir: Path = common.RESULTS_DIR) -> str:
    """The Markdown between the markers (without them), from every results file."""
    docs = []
    for f in sorted(results_dir.glob("*.json")):
        try:
            doc = common.read_results(f)
        except ValueError as e:  # another tool's file (e.g. bench_cuda.json): not ours to show
            print(f"skip {e}", file=sys.stderr)
            continue
        if doc["script"] in SECTIONS and not doc["settings"].get("quick"):
            docs.append((ORDER.index(doc["script"]), doc["device"] != "cpu", f, doc))
    lines = ["<!-- generated by benchmarks/render_readme.py from benchmarks/results/*.json; "
             "do not edit by hand -->", ""]
    if not docs:
        lines += ["No benchmark results are committed yet.", ""]
    for _, _, f, doc in sorted(docs, key=lambda d: d[:3]):
        lines += SECTIONS[doc["script"]](doc, f)
    lines += ["Reproduce: `python benchmarks/bench_rnn.py`, `python benchmarks/bench_loss.py`, "
              "`python benchmarks/bench_train.py` (`--device cuda` on a GPU; `--help` for shapes, "
              "dtypes, threads, `--quick`), then `python benchmarks/plot_results.py` and "
              "`python benchmarks/render_readme.py`.", ""]
    return "\n".join(lines)


def splice(text: str, section: str) -> str:
    """``text`` with the part between the markers replaced by ``section``.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    i, j = text.find(START), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"README lacks the markers {START} ... {END} (in this order)")
    return text[: i + len(START)] + "\n" + section + text[j:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", type=Path, default=README)
    p.add_argument("--results", type=Path, default=common.RESULTS_DIR)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="exit 1 if the README is out of date")
    g.add_argument("--stdout", action="store_true", help="print the section only")
    args = p.parse_args(argv)
    section = render(args.results)
    if args.stdout:
        print(section)
        return 0
    text = args.readme.read_text()
    try:
        new = splice(text, section)
    except ValueError as e:
        sys.exit(f"{args.readme}: {e}")
    if args.check:
        if new != text:
            print(f"{args.readme} is out of date: run python benchmarks/render_readme.py",
                  file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(new)
    print(f"wrote {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
