"""Training throughput of the lesson's CharRnn and CharSeqRnn: rnn_ext against nn.RNN.

fast.ai 2018 Lesson 6 (notebook ``lesson6-rnn``) trains, on nietzsche.txt with bs = 512,
n_fac = 42, n_hidden = 256 and Adam:

- ``CharRnn``: every 8-character window predicts the 9th character (600,884 windows);
- ``CharSeqRnn``: non-overlapping 8-character windows predict each next character (75,111).

For each model two variants start from the same weights (a deep copy):

- ``rnn_ext``: the model as :mod:`rnn_ext.lesson.models` builds it (``rnn_ext.RNN``), the
  CharSeqRnn loss ``rnn_ext.seq_nll_loss`` (where this build has it);
- ``torch`` (baseline): the same model with ``model.rnn`` swapped for the ``nn.RNN``
  (``rnn_ext.RNN.to_torch``), the CharSeqRnn loss the notebook's ``nll_loss_seq``.

A training step is fastai 0.7's: ``zero_grad``, forward, loss, backward, ``Adam.step``, on the
next batch of a seeded random 80% of the windows (a training split of the notebook's size;
which 20% are held out does not matter for timing). Measured:

- ``step``: seconds per training step (median and spread, ``common.time_interleaved``);
- ``chars_per_s``: input characters per second, ``bs * 8 / step median``;
- ``epoch_s_estimated``: batches per epoch times the median step;
- ``epoch_s_measured`` (``--epochs N``): wall clock of N real epochs per variant, alternating;
- ``peak_memory_bytes``: peak tensor bytes of one training step (``common.PEAK_MEMORY_METHOD``).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import rnn_ext  # noqa: E402

SCRIPT = "bench_train"
MODELS = ("CharRnn", "CharSeqRnn")


def nll_loss_seq(inp, targ):
    """The notebook's ``nll_loss_seq``: ``inp (T, B, C)`` log-probabilities, ``targ (B, T)``."""
    sl, bs, nh = inp.size()
    targ = targ.transpose(0, 1).contiguous().view(-1)
    return F.nll_loss(inp.view(-1, nh), targ)


def lesson_modules():
    """(data module, models module) of rnn_ext.lesson, or raise ImportError."""
    from rnn_ext.lesson import data, models

    return data, models


def dataset(name: str, text: str, cs: int, device: torch.device):
    """(xs, ys, vocab_size) of the lesson's dataset for model ``name``."""
    data, _ = lesson_modules()
    vocab = data.Vocab.from_text(text)
    ids = vocab.encode(text)
    xs, ys = (data.overlapping_windows if name == "CharRnn" else data.seq_windows)(ids, cs)
    return xs.to(device), ys.to(device), len(vocab)


def run_model(name: str, text: str, args) -> List[Dict[str, Any]]:
    dev = torch.device(args.device)
    _, models = lesson_modules()
    cs = 8
    xs, ys, vocab_size = dataset(name, text, cs, dev)
    g = torch.Generator().manual_seed(0)
    trn = torch.randperm(len(xs), generator=g)[: int(0.8 * len(xs))].to(dev)
    n_batches = math.ceil(len(trn) / args.bs)
    torch.manual_seed(0)
    ours = getattr(models, name)(vocab_size, args.n_fac, args.n_hidden).to(dev)
    theirs = copy.deepcopy(ours)
    theirs.rnn = theirs.rnn.to_torch()
    seq_loss = getattr(rnn_ext, "seq_nll_loss", None)
    if name == "CharRnn":
        losses = {"torch": ("F.nll_loss", F.nll_loss), "rnn_ext": ("F.nll_loss", F.nll_loss)}
    else:
        losses = {"torch": ("nll_loss_seq (notebook)", nll_loss_seq),
                  "rnn_ext": ("rnn_ext.seq_nll_loss", seq_loss) if seq_loss is not None
                  else ("nll_loss_seq (notebook; rnn_ext.seq_nll_loss not in this build)",
                        nll_loss_seq)}
    variants = {"torch": theirs, "rnn_ext": ours}

    def make_step(model, loss_fn) -> Callable[[], Any]:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        order = {"i": 0}

        def step():
            i = order["i"]
            order["i"] = (i + 1) % n_batches
            idx = trn[i * args.bs:(i + 1) * args.bs]
            opt.zero_grad()
            loss = loss_fn(model(xs[idx]), ys[idx])
            loss.backward()
            opt.step()
            return loss

        step.zero_grad = opt.zero_grad  # type: ignore[attr-defined]
        return step

    steps = {k: make_step(m, losses[k][1]) for k, m in variants.items()}
    # Same weights and batch: the first losses must agree (a check that both train one model).
    first: Dict[str, float] = {}
    errors: Dict[str, str] = {}
    for k, s in list(steps.items()):
        try:
            first[k] = float(s().detach())
        except Exception as e:  # noqa: BLE001 - recorded in the JSON, the run goes on
            errors[k] = f"{type(e).__name__}: {e}"[:500]
            del steps[k]
    timed = common.time_interleaved(steps, args.device, args.threads, args.min_run_time,
                                    args.rounds)
    rows = []
    info = {"bs": args.bs, "cs": cs, "n_fac": args.n_fac, "n_hidden": args.n_hidden,
            "vocab_size": vocab_size, "train_windows": len(trn), "batches_per_epoch": n_batches}
    for k in variants:
        if k in errors:
            rows.append({"model": name, "impl": k, "baseline": "torch", "loss": losses[k][0],
                         **info, "error": errors[k]})
            continue
        r = {"model": name, "impl": k, "baseline": "torch", "loss": losses[k][0], **info,
             "first_loss": first[k], "step": timed[k]}
        r["chars_per_s"] = args.bs * cs / timed[k]["median_s"]
        r["epoch_s_estimated"] = n_batches * timed[k]["median_s"]
        # Free the last step's gradients first, so that the step's own zero_grad frees nothing
        # allocated before the measurement (the CPU method cannot see such frees).
        steps[k].zero_grad()
        r["peak_memory_bytes"] = common.peak_memory_bytes(steps[k], args.device)
        rows.append(r)
    if args.epochs:
        wall: Dict[str, List[float]] = {k: [] for k in steps}
        prev = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            for _ in range(args.epochs):
                for k, s in steps.items():
                    common.synchronize(args.device)
                    t0 = time.perf_counter()
                    for _ in range(n_batches):
                        s()
                    common.synchronize(args.device)
                    wall[k].append(time.perf_counter() - t0)
        finally:
            torch.set_num_threads(prev)
        for r in (r for r in rows if r["impl"] in wall):
            r["epoch_s_measured"] = wall[r["impl"]]
            r["chars_per_s_measured_epoch"] = len(trn) * cs / (sum(wall[r["impl"]])
                                                               / len(wall[r["impl"]]))
    base = next((r for r in rows if r["impl"] == "torch" and "step" in r), None)
    for r in rows:
        if "step" not in r or base is None:
            continue
        r["speedup_step"] = base["step"]["median_s"] / r["step"]["median_s"]
        r["memory_ratio"] = (r["peak_memory_bytes"] / base["peak_memory_bytes"]
                             if base["peak_memory_bytes"] else None)
        r["first_loss_diff"] = abs(r["first_loss"] - base["first_loss"])
    return rows


def main(argv: Optional[List[str]] = None) -> Path:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated: CharRnn, CharSeqRnn")
    p.add_argument("--bs", type=int, default=512, help="batch size (the lesson's 512)")
    p.add_argument("--n-fac", type=int, default=42, help="embedding size (the lesson's 42)")
    p.add_argument("--n-hidden", type=int, default=256, help="hidden size (the lesson's 256)")
    p.add_argument("--epochs", type=int, default=0,
                   help="also time this many real epochs per variant (0: estimate only)")
    p.add_argument("--text-chars", type=int, default=None,
                   help="use only the first N characters of the corpus (--quick: 20000)")
    args = p.parse_args(argv)
    common.resolve_common(args, "float32")
    names = args.models.split(",")
    if any(n not in MODELS for n in names):
        sys.exit(f"--models: expected some of {MODELS}, got {names}")
    if args.dtypes != ["float32"]:
        sys.exit("--dtypes: bench_train runs the lesson in float32 only")
    if args.quick and args.text_chars is None:
        args.text_chars = 20000
    results: List[Dict[str, Any]] = []
    skipped = None
    try:
        data, _ = lesson_modules()
        text = data.load_nietzsche()[: args.text_chars]
    except ImportError as e:
        skipped = f"rnn_ext.lesson not in this build ({e})"
        text = ""
    machine = common.machine_info(args.device)
    if skipped is None:
        for n in common.progress(names, desc=SCRIPT, disable=args.no_progress):
            results += run_model(n, text, args)
    settings = {"quick": args.quick, "threads": args.threads, "min_run_time_s": args.min_run_time,
                "rounds": args.rounds, "models": names, "bs": args.bs, "n_fac": args.n_fac,
                "n_hidden": args.n_hidden, "epochs": args.epochs, "text_chars": len(text),
                "skipped": skipped}
    methods = {
        "step": "zero_grad, forward, loss, backward, Adam.step on the next batch",
        "timing": common.TIMING_METHOD[args.device],
        "chars_per_s": "bs * 8 input characters / median step time",
        "epoch_s_estimated": "batches per epoch * median step time",
        "epoch_s_measured": "wall clock of whole epochs (--epochs), variants alternating",
        "peak_memory": common.PEAK_MEMORY_METHOD[args.device],
    }
    path = common.write_results(common.results_path(SCRIPT, args.device, args.out), SCRIPT,
                                args.device, settings, results, methods, machine)
    if skipped:
        print(skipped)
    for r in results:
        if "step" not in r:
            print(f"{r['model']:10} {r['impl']:8} {r.get('error')}")
            continue
        print(f"{r['model']:10} {r['impl']:8} step {common.fmt_time(r['step']['median_s']):>10} "
              f"{r['chars_per_s']:,.0f} chars/s epoch ~{r['epoch_s_estimated']:.1f} s "
              f"x{r['speedup_step']:.2f} mem {common.fmt_bytes(r['peak_memory_bytes'])}")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
