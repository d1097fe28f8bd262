"""The command line of the python/lesson6_*.py scripts (not a section of the notebook).

``--help`` prints the calling script's docstring and exits; ``--threads N`` sets torch's CPU
threads, as ``python -m rnn_ext train --threads`` does.
"""
import argparse

import torch


def parse_args(doc: str) -> argparse.Namespace:
    """Parses ``sys.argv`` for a lesson script whose docstring is ``doc``; applies ``--threads``.

    Raises:
        SystemExit: ``--help`` (status 0), or an unknown option or a negative ``--threads``
            (status 2, argparse's usage message).
    """
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (default 0: torch's own default, one per core; "
                        "1 is much faster when other jobs share the cores)")
    args = p.parse_args()
    if args.threads < 0:
        p.error(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
