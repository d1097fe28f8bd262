"""``python -m rnn_ext`` (also the ``rnn_ext`` console script): the lesson's commands.

- ``train``: train one of the notebook's models (default: CharSeqRnn with identity W_hh on the
  bundled Nietzsche corpus with the notebook's schedule), print ours beside the notebook's
  losses for each epoch and save a checkpoint after every epoch.
- ``generate``: write text with a checkpoint.
- ``lesson``: the notebook's six runs in order, each beside the notebook's numbers, and a table.

Under ``torchrun --nproc_per_node=N`` ``train`` and ``lesson`` train with
DistributedDataParallel (gloo on CPU, NCCL on CUDA) on the same global batch.
Errors in the arguments, the text or a checkpoint print ``rnn_ext <command>: error: ...`` and
exit with status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]

DEFAULT_CHECKPOINT = "rnn_ext_lesson.pt"


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {s}")
    return v


def _check_output_path(option: str, path: str, folder_must_exist: bool) -> None:
    """Before any training: ValueError naming ``option`` when ``path`` is a directory, or (with
    ``folder_must_exist``) is in a folder that does not exist. (Checkpoints make their
    folders: save_checkpoint.)"""
    if os.path.isdir(path):
        raise ValueError(f"{option}: {path!r} is a directory; give a file path")
    folder = os.path.dirname(os.path.abspath(path))
    if folder_must_exist and not os.path.isdir(folder):
        raise ValueError(f"{option}: the folder {folder!r} of {path!r} does not exist")


# Appended to the default in the help of an option that --resume takes from the checkpoint.
_FROM_CHECKPOINT = "; --resume: the checkpoint's"


def _common(p: argparse.ArgumentParser, resume: bool = False) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1 (default auto)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"random seed (default 42{_FROM_CHECKPOINT if resume else ''})")
    p.add_argument("--threads", type=_nonneg_int, default=0,
                   help="CPU threads for torch (default 0: torch's own default, one per core; "
                        "1 is steadier when the cores are shared with other jobs)")


def _training(p: argparse.ArgumentParser, resume: bool = False) -> None:
    from_checkpoint = _FROM_CHECKPOINT if resume else ""
    p.add_argument("--text", metavar="FILE", help="train on this UTF-8 text file instead of "
                   "the bundled nietzsche.txt")
    p.add_argument("--epochs", type=_nonneg_int, nargs="+", metavar="N",
                   help="epochs of each phase of the schedule (one value: every phase; "
                        "default: the model's notebook schedule)")
    p.add_argument("--lr", type=_positive_float, nargs="+", metavar="LR",
                   help="learning rate of each phase (one value: every phase; default: the "
                        "model's notebook schedule)")
    p.add_argument("--bs", type=_positive_int, default=None,
                   help="global batch size (default 512, the lesson's)")
    p.add_argument("--n-hidden", type=_positive_int, default=None,
                   help=f"hidden size (default 256{from_checkpoint})")
    p.add_argument("--n-fac", type=_positive_int, default=None,
                   help=f"embedding size (default 42{from_checkpoint})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m rnn_ext``."""
    from .lesson.recipes import LESSON_ROWS, RECIPES

    parser = argparse.ArgumentParser(
        prog="rnn_ext",
        description="fast.ai Lesson 6's character models on rnn_ext's fused RNN kernels.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a character model and save a checkpoint",
                       description="Train one of the notebook's models (default: CharSeqRnn "
                       "with identity W_hh, the notebook's schedule 1e-2 x4, 1e-3 x4).")
    t.add_argument("--model", choices=LESSON_ROWS, default=None,
                   help=f"which of the notebook's runs (default seq-identity{_FROM_CHECKPOINT}): "
                   + ", ".join(f"{k} = {RECIPES[k].title}" for k in LESSON_ROWS))
    _training(t, resume=True)
    _common(t, resume=True)
    t.add_argument("--out", default=None,
                   help="checkpoint to write after every epoch (default: the --resume "
                   f"checkpoint, else {DEFAULT_CHECKPOINT})")
    t.add_argument("--resume", metavar="PATH", help="continue training from this checkpoint")

    g = sub.add_parser("generate", help="write text with a trained checkpoint",
                       description="Write text with a checkpoint saved by train: the prompt "
                       "is read, then each character is sampled from the model's softmax and "
                       "fed back, carrying the hidden state (--greedy --window: the notebook's "
                       "get_next_n).")
    g.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                   help=f"checkpoint written by train (default {DEFAULT_CHECKPOINT})")
    g.add_argument("--prompt", default="for thos", help="text to start from (default 'for thos')")
    g.add_argument("-n", type=_nonneg_int, default=400, help="characters to write (400)")
    g.add_argument("--temperature", type=_positive_float, default=0.8,
                   help="sampling temperature (default 0.8; lower is more conservative)")
    g.add_argument("--top-k", type=_positive_int, default=None,
                   help="sample among the k most likely characters only (default: all)")
    g.add_argument("--greedy", action="store_true",
                   help="always take the most likely character (with --window: the "
                   "notebook's get_next_n)")
    g.add_argument("--window", action="store_true",
                   help="re-read the last 8 (Char3Model: 3) characters from a zero state for "
                   "every character, as the notebook, instead of carrying the hidden state")
    _common(g)

    les = sub.add_parser("lesson", help="the notebook's six runs, each beside the notebook's "
                         "numbers",
                         description="Train the notebook's six models in turn (or --rows) "
                         "and print each one's losses beside the notebook's.")
    les.add_argument("--rows", nargs="+", choices=LESSON_ROWS, default=None,
                     help="only these rows (default: all six, in the notebook's order)")
    les.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    _training(les)
    _common(les)
    return parser


def _error(command: str, msg: str) -> int:
    print(f"rnn_ext {command}: error: {msg}", file=sys.stderr)
    return 2


def _setup_threads(args) -> None:
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _train(args) -> int:
    from .lesson.generate import get_next_n
    from .lesson.recipes import RECIPES, train_recipe

    if args.out is None:
        args.out = args.resume or DEFAULT_CHECKPOINT
    _check_output_path("--out", args.out, folder_must_exist=False)
    res = train_recipe(
        RECIPES[args.model] if args.model else None, text_path=args.text, bs=args.bs,
        lrs=args.lr, epochs=args.epochs, device=args.device, seed=args.seed, n_fac=args.n_fac,
        n_hidden=args.n_hidden, out=args.out, resume=args.resume,
        progress=not args.no_progress)
    if _is_rank0():
        if res.epochs_run:
            print(f"trained in {res.seconds:.1f}s; checkpoint: {args.out}")
        else:
            print(f"no epoch to train (the schedule has {sum(n for _, n in res.schedule)} "
                  f"epochs, {len(res.history)} of them done); no checkpoint written")
        prompt = "for thos"
        if all(c in res.vocab.stoi for c in prompt) and res.history:
            print(f"get_next_n('for thos', 40) = {get_next_n(res.model, prompt, 40)!r}")
    return 0


def _generate(args) -> int:
    import torch

    from .lesson.generate import generate
    from .lesson.recipes import resolve_device
    from .lesson.train import model_from_checkpoint

    device = resolve_device(args.device)
    model, vocab, ckpt = model_from_checkpoint(args.checkpoint, device)
    missing = sorted({c for c in args.prompt if c not in vocab.stoi})
    if not args.prompt:
        raise ValueError("--prompt must have at least one character")
    if missing:
        raise ValueError(
            f"--prompt: character(s) {', '.join(repr(c) for c in missing)} not in the "
            f"checkpoint's vocabulary of {len(vocab)} characters")
    gen = torch.Generator().manual_seed(42 if args.seed is None else args.seed)
    window = 3 if ckpt["config"].get("model") == "Char3Model" else 8
    text = generate(model, args.prompt, args.n, vocab, temperature=args.temperature,
                    top_k=args.top_k, greedy=args.greedy, stateful=not args.window,
                    window=window, generator=gen)
    print(text)
    return 0


def _lesson(args) -> int:
    from .lesson.recipes import LESSON_ROWS, RECIPES, train_recipe

    rows = args.rows or LESSON_ROWS
    if args.markdown:
        _check_output_path("--markdown", args.markdown, folder_must_exist=True)
    results = []
    t0 = time.perf_counter()
    for key in rows:
        if _is_rank0():
            print()
        res = train_recipe(RECIPES[key], text_path=args.text, bs=args.bs, lrs=args.lr,
                           epochs=args.epochs, device=args.device, seed=args.seed,
                           n_fac=args.n_fac, n_hidden=args.n_hidden,
                           progress=not args.no_progress)
        results.append(res)
        if _is_rank0():
            print(f"({res.seconds:.0f}s)")
    total = time.perf_counter() - t0
    if _is_rank0():
        default = args.text is None and args.lr is None and args.epochs is None and (
            args.bs in (None, 512))
        table = lesson_table(results, notebook=default)
        print()
        print(table)
        print(f"\ntotal {total / 60:.1f} min")
        if args.markdown:
            with open(args.markdown, "w", encoding="utf-8") as f:
                f.write(table + "\n")
    return 0


def lesson_table(results, notebook: bool = True) -> str:
    """A markdown table of :class:`~rnn_ext.lesson.recipes.TrainResult` rows beside the
    notebook's last epoch (trn_loss, val_loss), with the compared number's difference."""
    lines = ["| model | schedule | time | trn_loss | val_loss | notebook trn_loss | "
             "notebook val_loss | compared | ours - notebook |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in results:
        rec = r.recipe
        sched = ", ".join(f"{lr:g} x{n}" for lr, n in r.schedule)
        last = r.history[-1] if r.history else None
        trn = f"{last.trn_loss:.3f}" if last else ""
        val = f"{last.val_loss:.3f}" if last else ""
        nb_trn, nb_val = rec.notebook[-1]
        if notebook and last:
            ours = last.trn_loss if rec.compare == "trn_loss" else last.val_loss
            theirs = nb_trn if rec.compare == "trn_loss" else nb_val
            diff = f"{ours - theirs:+.3f}"
            nb = (f"{nb_trn:.3f}", f"{nb_val:.3f}" if nb_val is not None else "(one sample)")
        else:
            diff, nb = "", ("", "")
        lines.append(f"| {rec.title} | {sched} | {r.seconds:.0f}s | {trn} | {val} | {nb[0]} | "
                     f"{nb[1]} | {rec.compare if notebook else ''} | {diff} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``python -m rnn_ext`` with ``argv`` (default ``sys.argv[1:]``); returns the exit
    status (0, or 2 after an error message naming the problem)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .lesson.train import CheckpointError

    _setup_threads(args)
    run = {"train": _train, "generate": _generate, "lesson": _lesson}[args.command]
    try:
        status = run(args)
        sys.stdout.flush()  # inside the try: a closed pipe raises here, not at exit
        return status
    except BrokenPipeError:
        # The reader went away (`... generate | head`): stop quietly, as Unix tools do, with
        # 128 + SIGPIPE; stdout goes to devnull so that the exit flush does not raise again
        # (Python docs, "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        msg = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
        return _error(args.command, msg)
    except KeyboardInterrupt:
        return 130
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
