"""rnn_ext: fused Elman RNN and sequence NLL kernels for PyTorch (CPU and CUDA).

The operators live in ``torch.ops.rnn_ext``; :mod:`rnn_ext.ops` is their Python face.
"""

import os as _os

import torch as _torch  # noqa: F401  (first: it loads libtorch / libc10, which _C links against)

try:
    from . import _C  # noqa: F401  (the compiled operators; torch.ops.rnn_ext.*)
except ImportError as _e:
    raise ImportError(
        f"rnn_ext: its compiled extension rnn_ext._C could not be loaded from "
        f"{_os.path.dirname(_os.path.abspath(__file__))} ({_e}). Build it in place with "
        f"`pip install --no-build-isolation -e .` in the source tree, against the torch it runs "
        f"with; if rnn_ext is installed elsewhere, start Python outside the source tree so that "
        f"the installed copy is the one imported."
    ) from _e

from .loss import SeqCrossEntropyLoss, SeqNLLLoss, seq_cross_entropy, seq_nll_loss
from .ops import elman_cell, elman_rnn, has_cuda_kernels
from .rnn import RNN, RNNCell, convert_rnn

__version__ = "0.1.0"

__all__ = [
    "elman_rnn", "elman_cell", "has_cuda_kernels", "__version__",
    "RNN", "RNNCell", "convert_rnn",
    "seq_nll_loss", "seq_cross_entropy", "SeqNLLLoss", "SeqCrossEntropyLoss",
]
