"""Step-by-step Elman recurrence in plain PyTorch operations.

The semantics every fused kernel must reproduce, written for clarity rather than speed. It is
differentiable to any order, which the fused operators use for double backward
(``create_graph=True``), and the tests use it where ``torch.nn.RNN`` has no direct counterpart.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def elman_rnn_reference(
    input: Tensor,
    h_0: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
    nonlinearity: str = "tanh",
    reverse: bool = False,
    lengths: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    r"""Reference for :func:`rnn_ext.ops.elman_rnn`: the same arguments, shapes and results.

    :math:`h_t = \phi(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh})` for each step, as in
    the PyTorch documentation of ``torch.nn.RNN``; with ``lengths`` (int64 ``(B,)``) the steps
    ``t >= lengths[b]`` output 0 and keep the state.

    Returns ``(output (T, B, H), h_n (B, H))``. Raises ValueError for an unknown nonlinearity.
    """
    if nonlinearity == "tanh":
        act = torch.tanh
    elif nonlinearity == "relu":
        act = torch.relu
    else:
        raise ValueError(f"unknown nonlinearity '{nonlinearity}': expected 'tanh' or 'relu'")
    T = input.shape[0]
    h = h_0
    outs = [None] * T
    for t in range(T - 1, -1, -1) if reverse else range(T):
        h_new = act(F.linear(input[t], weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh))
        if lengths is None:
            outs[t] = h = h_new
        else:
            running = (lengths.to(input.device) > t).unsqueeze(1)
            outs[t] = torch.where(running, h_new, torch.zeros_like(h_new))
            h = torch.where(running, h_new, h)
    return torch.stack(outs), h
