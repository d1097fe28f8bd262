"""Charts of the benchmark results: ``benchmarks/results/*.json`` -> ``benchmarks/results/*.png``.

One PNG per results file (``bench_rnn_cpu.json`` -> ``bench_rnn_cpu.png``, and for CUDA files
one per dtype / TF32 setting, ``bench_rnn_cuda_float32_tf32off.png`` ...):

- bench_rnn: speed-up over the baseline (nn.RNN on CPU, cuDNN on GPU) of forward and of
  forward+backward, by shape, one bar per implementation; the operator issue's targets as
  markers; below, the peak memory of a training step relative to the baseline.
- bench_loss: speed-up of forward+backward over the baseline by shape and implementation.
- bench_train: characters per second of each model's training, rnn_ext against nn.RNN.

Usage: ``python benchmarks/plot_results.py [files...] [--outdir DIR]`` (default: every results
file). Needs matplotlib (the Agg backend: no display).
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def _subtitle(doc: Dict[str, Any]) -> str:
    m = doc["machine"]
    where = m.get("gpu") or f"{m.get('cpu')}, {doc['settings'].get('threads')} threads"
    load = m.get("load_average")
    load_s = f", load avg {load[0]:.1f}" if load else ""
    return f"{where}; torch {m.get('torch')}; {m.get('date_utc')}{load_s}"


def _bars(ax, labels: List[str], series: "OrderedDict[str, List[float]]", ylabel: str,
          styles: Optional[Dict[str, Dict[str, Any]]] = None, ratio: bool = False) -> None:
    """Grouped bars: one group per label, one bar per series; ``styles`` maps a series name to
    ``ax.bar`` keyword arguments (colour, alpha). ``ratio``: a log2 axis with bars drawn from
    1 (up for a speed-up, down for a slow-down)."""
    n = max(len(series), 1)
    width = 0.8 / n
    for k, (name, vals) in enumerate(series.items()):
        xs = [i + (k - (n - 1) / 2) * width for i in range(len(labels))]
        ok = [v if v is not None else (1.0 if ratio else 0.0) for v in vals]
        if ratio:
            ax.bar(xs, [v - 1 for v in ok], width, bottom=1, label=name,
                   **(styles or {}).get(name, {}))
        else:
            ax.bar(xs, ok, width, label=name, **(styles or {}).get(name, {}))
        for x, v in zip(xs, vals):
            if v is not None:
                ax.annotate(f"{v:.2f}", (x, v), ha="center", va="bottom" if v >= 1 or not ratio
                            else "top", fontsize=6)
    if ratio:
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}"))
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.legend(fontsize=7)


def plot_rnn(doc: Dict[str, Any], out: Path) -> List[Path]:
    rows = [r for r in doc["results"] if "forward" in r]
    paths = []
    settings = OrderedDict()
    for r in rows:
        settings.setdefault((r["dtype"], r["tf32"]), []).append(r)
    for (dtype, tf32), rs in settings.items():
        labels = list(OrderedDict.fromkeys(r["label"] for r in rs))
        impls = [i for i in OrderedDict.fromkeys(r["impl"] for r in rs) if i != rs[0]["baseline"]]
        by = {(r["label"], r["impl"]): r for r in rs}
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(7, 0.7 * len(labels) + 3), 7.5),
                                       gridspec_kw={"height_ratios": [2, 1]}, sharex=True)
        series = OrderedDict()
        colour = {i: f"C{k}" for k, i in enumerate(impls)}
        styles: Dict[str, Dict[str, Any]] = {}
        for i in impls:
            series[f"{i} fwd"] = [by.get((l, i), {}).get("speedup_forward") for l in labels]
            series[f"{i} fwd+bwd"] = [by.get((l, i), {}).get("speedup_fwd_bwd") for l in labels]
            styles[f"{i} fwd"] = {"color": colour[i], "alpha": 0.45}
            styles[f"{i} fwd+bwd"] = {"color": colour[i]}
            styles[i] = {"color": colour[i]}
        _bars(ax1, labels, series, f"speed-up over {rs[0]['baseline']} (x, log scale)", styles,
              ratio=True)
        for k, l in enumerate(labels):
            t = by.get((l, "rnn_ext"), {}).get("target")
            if t:
                ax1.plot([k - 0.4, k + 0.4], [t["speedup_fwd_bwd_min"]] * 2, color="red", lw=1.5,
                         ls="--", label="target (fwd+bwd)")
        handles, names = ax1.get_legend_handles_labels()
        uniq = OrderedDict(zip(names, handles))
        ax1.legend(uniq.values(), uniq.keys(), fontsize=7)
        tf = "" if tf32 is None else (", TF32 on" if tf32 else ", TF32 off")
        ax1.set_title(f"rnn_ext.RNN vs {rs[0]['baseline']} ({doc['device']}, {dtype}{tf})\n"
                      f"{_subtitle(doc)}", fontsize=9)
        mem = OrderedDict((i, [by.get((l, i), {}).get("memory_ratio") for l in labels])
                          for i in impls)
        _bars(ax2, labels, mem, "training-step peak\nmemory / baseline", styles)
        fig.tight_layout()
        suffix = "" if doc["device"] == "cpu" and len(settings) == 1 else (
            f"_{dtype}" + ("" if tf32 is None else ("_tf32on" if tf32 else "_tf32off")))
        p = out / f"bench_rnn_{doc['device']}{suffix}.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths


def plot_loss(doc: Dict[str, Any], out: Path) -> List[Path]:
    rows = [r for r in doc["results"] if "forward" in r]
    if not rows:
        return []
    labels = list(OrderedDict.fromkeys(f"{r['label']} {r['dtype']}" for r in rows))
    impls = list(OrderedDict.fromkeys(r["impl"] for r in rows))
    by = {(f"{r['label']} {r['dtype']}", r["impl"]): r for r in rows}
    series = OrderedDict((i, [by.get((l, i), {}).get("speedup_fwd_bwd") for l in labels])
                         for i in impls)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    _bars(ax, labels, series, "fwd+bwd speed-up over baseline (x, log scale)", ratio=True)
    ax.set_title("Sequence NLL / cross-entropy (baselines: the lesson's nll_loss_seq, "
                 f"F.cross_entropy)\n{_subtitle(doc)}", fontsize=9)
    fig.tight_layout()
    p = out / f"bench_loss_{doc['device']}.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return [p]


def plot_train(doc: Dict[str, Any], out: Path) -> List[Path]:
    rows = doc["results"]
    if not rows:
        return []
    labels = list(OrderedDict.fromkeys(r["model"] for r in rows))
    impls = list(OrderedDict.fromkeys(r["impl"] for r in rows))
    by = {(r["model"], r["impl"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    n = len(impls)
    for k, i in enumerate(impls):
        vals = [by.get((l, i), {}).get("chars_per_s", 0) / 1e3 for l in labels]
        xs = [j + (k - (n - 1) / 2) * 0.8 / n for j in range(len(labels))]
        bars = ax.bar(xs, vals, 0.8 / n, label=i)
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.0f}k", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_ylabel("training characters / s (thousands)")
    ax.set_title(f"Lesson 6 training throughput, bs {rows[0]['bs']}\n{_subtitle(doc)}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out / f"bench_train_{doc['device']}.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return [p]


PLOTTERS = {"bench_rnn": plot_rnn, "bench_loss": plot_loss, "bench_train": plot_train}


def main(argv=None) -> List[Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path, help="results files (default: all)")
    p.add_argument("--outdir", type=Path, default=None,
                   help="where to write PNGs (default: beside each results file)")
    args = p.parse_args(argv)
    files = args.files or sorted(common.RESULTS_DIR.glob("*.json"))
    written: List[Path] = []
    for f in files:
        try:
            doc = common.read_results(f)
        except ValueError as e:
            print(f"skip {e}", file=sys.stderr)
            continue
        fn = PLOTTERS.get(doc["script"])
        if fn is None:
            print(f"skip {f}: no plot for script {doc['script']!r}", file=sys.stderr)
            continue
        out = args.outdir or Path(f).parent
        out.mkdir(parents=True, exist_ok=True)
        written += fn(doc, out)
    for w in written:
        print(f"wrote {w}")
    return written


if __name__ == "__main__":
    main()
