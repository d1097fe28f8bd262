"""rnn_ext: fused Elman RNN and sequence NLL kernels for PyTorch (CPU and CUDA).

The operators live in ``torch.ops.rnn_ext``; :mod:`rnn_ext.ops` is their Python face.
"""

from .loss import SeqCrossEntropyLoss, SeqNLLLoss, seq_cross_entropy, seq_nll_loss
from .ops import elman_cell, elman_rnn, has_cuda_kernels
from .rnn import RNN, RNNCell, convert_rnn

__version__ = "0.1.0"

__all__ = [
    "elman_rnn", "elman_cell", "has_cuda_kernels", "__version__",
    "seq_nll_loss", "seq_cross_entropy", "SeqNLLLoss", "SeqCrossEntropyLoss",
]
__all__ += ["RNN", "RNNCell", "convert_rnn"]
