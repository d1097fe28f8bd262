"""Fused sequence losses: the NLL loss of a multi-output RNN, and cross-entropy from its logits.

fast.ai's lesson 6 (dl1, ``lesson6-rnn.ipynb``) computes the loss of its multi-output
character RNN with

.. code-block:: python

    def nll_loss_seq(inp, targ):
        sl, bs, nh = inp.size()
        targ = targ.transpose(0, 1).contiguous().view(-1)
        return F.nll_loss(inp.view(-1, nh), targ)

:func:`seq_nll_loss` is that loss in one operator: it reads ``log_probs`` ``(T, B, C)`` as the
RNN emits it and the target ``(B, T)`` as the data loader yields it, through their strides, with
no transposed copy, and its backward writes the gradient in one pass.
:func:`seq_cross_entropy` does the same from raw logits, fusing log-softmax and NLL: its forward
keeps two numbers per row (its max and the log of its sum of exponentials) and its backward
computes ``softmax - onehot`` from the logits and those two numbers.

This module also registers, for the operators ``torch.ops.rnn_ext.seq_nll_loss_*`` and
``torch.ops.rnn_ext.seq_cross_entropy_*`` (schemas in ``csrc/rnn_ext.cpp``, kernels in
``csrc/cpu/seq_nll_cpu.cpp`` and ``csrc/cuda/seq_nll_cuda.cu``), their fake (meta)
implementations, for ``torch.compile`` and :func:`torch.library.opcheck`. Their autograd is
registered in C++ (``csrc/autograd/seq_nll_autograd.cpp``): the backward calls the
``*_backward`` operators, with no Python in the loop (a Python ``register_autograd`` cost more
than these microsecond kernels).

Shapes: ``T`` time steps, ``B`` batch, ``C`` classes. A "row" is one ``(t, b)``.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from .ops import _check_fake_devices


__all__ = ["seq_nll_loss", "seq_cross_entropy", "SeqNLLLoss", "SeqCrossEntropyLoss"]

_REDUCTIONS = ("none", "mean", "sum")


def _check_ignore_index(ignore_index: int) -> None:
    """The operators take a 64-bit integer. As ``F.nll_loss``: a bool, a float, or a tensor that
    is not one integer element is a TypeError; an integer outside int64 (Python's, numpy's) a
    ValueError; here with messages that name the argument (the schema's own error read
    "Expected a value of type 'int' ... found type 'int'", and the schema read a floating or
    bool 0-d tensor as its integer part). Other integer-likes (numpy's, one-element integer
    tensors, a SymInt) go on to the schema."""
    if isinstance(ignore_index, torch.Tensor):
        if ignore_index.numel() != 1 or ignore_index.is_floating_point() or \
                ignore_index.is_complex() or ignore_index.dtype == torch.bool:
            raise TypeError(f"ignore_index must be an integer, got a tensor of dtype "
                            f"{ignore_index.dtype} and shape {tuple(ignore_index.shape)}")
        return
    if isinstance(ignore_index, (bool, float, np.bool_, np.floating)):
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
    if isinstance(ignore_index, (int, np.integer)) and \
            not -(2 ** 63) <= int(ignore_index) < 2 ** 63:
        raise ValueError(f"ignore_index must be in the int64 range, got {ignore_index!r}")


def _check_reduction(reduction: str, warn: bool = True) -> str:
    """``reduction`` as the operators take it. The deprecated ``'elementwise_mean'`` is
    ``'mean'``, with F.nll_loss's UserWarning when ``warn`` (``torch.nn._reduction.get_enum``)."""
    if reduction == "elementwise_mean":
        if warn:
            warnings.warn("reduction='elementwise_mean' is deprecated. Please use "
                          "reduction='mean' instead.", UserWarning, stacklevel=3)
        return "mean"
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"{reduction!r} is not a valid value for reduction: expected 'none', 'mean' or 'sum'"
        )
    return reduction


def seq_nll_loss(
    log_probs: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    target_batch_first: bool = True,
) -> Tensor:
    r"""Negative log-likelihood of a whole sequence of predictions, fused (forward and backward).

    Equals the lesson's ``nll_loss_seq``, that is ``F.nll_loss`` on the flattened pair

    .. code-block:: python

        F.nll_loss(log_probs.reshape(T * B, C), target.transpose(0, 1).reshape(-1),
                   weight, ignore_index=ignore_index, reduction=reduction)

    (``target`` without the transpose when ``target_batch_first=False``), with the same
    ``weight``, ``ignore_index`` and ``reduction`` semantics (PyTorch docs, ``F.nll_loss``):
    row ``(t, b)`` with class ``y = target[b, t]`` contributes
    :math:`\ell_{t,b} = -w_y \, \mathrm{log\_probs}[t, b, y]`, or 0 when ``y == ignore_index``;
    ``"mean"`` divides the sum by the sum of :math:`w_y` over the rows not ignored (NaN when every
    row is ignored, as PyTorch). No transposed copy of the target is made.

    Args:
        log_probs: ``(T, B, C)`` log-probabilities (e.g. the output of ``log_softmax(-1)``),
            float32 / float64 / bfloat16 / float16 (the latter two computed in float32); any
            strides.
        target: class indices, int64 (or uint8, as ``F.nll_loss`` accepts), ``(B, T)`` as a data
            loader yields it, or ``(T, B)`` with ``target_batch_first=False``; any strides. Each
            value is in ``[0, C)`` or equals ``ignore_index``.
        weight: ``None`` or ``(C,)`` class weights, same dtype and device as ``log_probs``. Not
            differentiable (it may not require grad), as in ``F.nll_loss``.
        ignore_index: a target value whose rows contribute nothing (any integer, also one in
            ``[0, C)``).
        reduction: ``"none"`` (the per-row losses, in the target's shape: ``(B, T)`` or
            ``(T, B)``), ``"mean"`` (weighted mean, a scalar) or ``"sum"`` (a scalar). The
            deprecated ``"elementwise_mean"`` is ``"mean"`` with a ``UserWarning``, as in
            ``F.nll_loss``.
        target_batch_first: whether ``target`` is ``(B, T)`` (``True``) or ``(T, B)``.

    Returns:
        The loss: a scalar for ``"mean"`` / ``"sum"``, the target's shape for ``"none"``;
        ``log_probs``'s dtype, except under ``torch.autocast`` (CPU or CUDA), where a float16 /
        bfloat16 ``log_probs`` (and ``weight``) is first cast to float32, as ``F.nll_loss``'s
        float32 autocast policy does: the loss is then float32 and the gradient comes back in
        ``log_probs``'s dtype.

    Raises:
        IndexError: a target value outside ``[0, C)`` that is not ``ignore_index`` (the message
            names the value and its position). On CUDA this check reads one value back to the
            host; while a CUDA graph is being captured it is a device-side assert instead, as
            in ``F.nll_loss`` on CUDA.
        ValueError: a target whose shape does not match ``(B, T)`` / ``(T, B)`` of
            ``log_probs`` (the message names both shapes); an unknown ``reduction``; an
            ``ignore_index`` outside the int64 range.
        TypeError: an ``ignore_index`` that is a bool, a float, or a tensor that is not one
            integer element (``F.nll_loss`` takes one-element integer tensors; so does this).
        RuntimeError: ``log_probs`` not of rank 3 or not floating, a target that is not int64 /
            uint8, a weight not of shape ``(C,)`` or of another dtype, mismatched devices, a
            weight that requires grad.

    Gradients flow to ``log_probs`` through the fused ``rnn_ext::seq_nll_loss_backward``
    operator; double backward (``create_graph=True``) differentiates a recomputation with
    ``F.nll_loss`` (exact, slower).
    """
    reduction = _check_reduction(reduction)
    _check_ignore_index(ignore_index)
    return torch.ops.rnn_ext.seq_nll_loss_forward(
        log_probs, target, weight, ignore_index, reduction, target_batch_first
    )[0]


def seq_cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    target_batch_first: bool = True,
) -> Tensor:
    r"""Cross-entropy of a whole sequence of raw scores: log-softmax and NLL fused in one pass.

    Equals ``F.cross_entropy`` on the flattened pair (PyTorch docs, ``F.cross_entropy``, class
    indices, no label smoothing), i.e. :func:`seq_nll_loss` of ``logits.log_softmax(-1)``:

    .. math:: \ell_{t,b} = w_y \left(\log \sum_c e^{x_{t,b,c}} - x_{t,b,y}\right)

    The forward computes, per row, the maximum :math:`m`, :math:`\log \sum_c e^{x_c - m}` and
    the loss in one pass and keeps only those two numbers per row, ``(T, B)`` each, for
    backward; the backward writes :math:`w_y s\,(\mathrm{onehot}_y - \mathrm{softmax}(x))`
    (``s`` from the reduction) from the logits and those two numbers. No ``(T, B, C)``
    log-softmax is ever stored.

    Args:
        logits: ``(T, B, C)`` unnormalised scores, float32 / float64 / bfloat16 / float16 (the
            latter two computed in float32); any strides (a copy is made only when the class
            dimension is not unit-stride).
        target, weight, ignore_index, reduction, target_batch_first: as :func:`seq_nll_loss`.

    Returns:
        The loss, as :func:`seq_nll_loss` (float32 under ``torch.autocast`` for 16-bit
        ``logits``, as ``F.cross_entropy``).

    Precision: the forward forms each row's loss as :math:`(m - x_y) + \log \sum_c e^{x_c - m}`
    (``m`` the row's maximum), each part rounded at its own magnitude as in ``F.cross_entropy``,
    so a confident row's small loss beside large logits is as accurate as ``F.cross_entropy``'s
    (``lse - x_y`` would carry ``lse``'s rounding, 3e-5 near 300). The backward forms each
    softmax as :math:`\exp((x_c - m) - \log \sum)`, in the order of ``F.log_softmax``, from
    the two saved numbers (float32 for float32 / float16 / bfloat16 logits), so its error does
    not grow with the logits' magnitude: logits ``[1e8, 1e8, 0]`` give the softmax
    ``[0.5, 0.5, 0]``, as ``F.cross_entropy``.

    Special values: a row holding a NaN, or whose maximum is infinite, gets a NaN loss and a
    NaN gradient, as ``F.cross_entropy``; so does such a row when its target is
    ``ignore_index`` (its loss is 0, its gradient NaN, as ``F.cross_entropy``'s).

    Raises:
        The same errors as :func:`seq_nll_loss` (``logits`` named in place of ``log_probs``).

    Gradients flow to ``logits`` through ``rnn_ext::seq_cross_entropy_backward``; double
    backward differentiates a recomputation with ``F.cross_entropy`` (exact, slower).
    """
    reduction = _check_reduction(reduction)
    _check_ignore_index(ignore_index)
    return torch.ops.rnn_ext.seq_cross_entropy_forward(
        logits, target, weight, ignore_index, reduction, target_batch_first
    )[0]


class _SeqLoss(nn.Module):
    """The arguments the two sequence-loss modules share (as ``torch.nn.NLLLoss``)."""

    def __init__(
        self,
        weight: Optional[Tensor] = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        target_batch_first: bool = True,
    ) -> None:
        super().__init__()
        _check_reduction(reduction, warn=False)  # warned at each call, as nn.NLLLoss
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.target_batch_first = target_batch_first

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"target_batch_first={self.target_batch_first}")


class SeqNLLLoss(_SeqLoss):
    """Module form of :func:`seq_nll_loss`: ``nn.NLLLoss`` for ``(T, B, C)`` log-probabilities
    and a ``(B, T)`` (or ``(T, B)``) target.

    Args (as ``torch.nn.NLLLoss``; the deprecated ``size_average`` / ``reduce`` are not taken):
        weight: ``None`` or ``(C,)`` class weights, kept as a buffer (moves with ``.to()``).
        ignore_index: target value that contributes nothing. Default -100.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``. Default ``"mean"``.
        target_batch_first: the target is ``(B, T)`` (default) or ``(T, B)``.

    Shapes, dtypes and errors: see :func:`seq_nll_loss` (an unknown ``reduction`` raises
    ``ValueError`` at construction).
    """

    def forward(self, log_probs: Tensor, target: Tensor) -> Tensor:
        return seq_nll_loss(
            log_probs, target, self.weight, self.ignore_index, self.reduction,
            self.target_batch_first,
        )


class SeqCrossEntropyLoss(_SeqLoss):
    """Module form of :func:`seq_cross_entropy`: ``nn.CrossEntropyLoss`` (class indices, no
    label smoothing) for ``(T, B, C)`` logits and a ``(B, T)`` (or ``(T, B)``) target.

    Args: as :class:`SeqNLLLoss`. Shapes, dtypes and errors: see :func:`seq_cross_entropy`.
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return seq_cross_entropy(
            logits, target, self.weight, self.ignore_index, self.reduction,
            self.target_batch_first,
        )


# ---------------------------------------------------------------------------------------------
# Registration of the operators: fake (meta) implementations (autograd: in C++, see above).


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of total_weight, row_max, log_sum: float32 for half / bfloat16, else the input's."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _fake_loss_and_total_weight(op, input_name, input, target, weight, reduction):
    _check_fake_devices(op, input_name, input, target=target, weight=weight)
    torch._check(input.dim() == 3,
                 lambda: f"expected an input of rank 3 (T, B, C), got {tuple(input.shape)}")
    torch._check(target.dim() == 2,
                 lambda: f"expected a target of rank 2, got {tuple(target.shape)}")
    loss = input.new_empty(target.shape if reduction == "none" else ())
    return loss, input.new_empty((), dtype=_stat_dtype(input.dtype))


@torch.library.register_fake("rnn_ext::seq_nll_loss_forward")
def _seq_nll_loss_forward_fake(log_probs, target, weight, ignore_index, reduction,
                               target_batch_first):
    return _fake_loss_and_total_weight("rnn_ext::seq_nll_loss_forward", "log_probs", log_probs,
                                       target, weight, reduction)


@torch.library.register_fake("rnn_ext::seq_nll_loss_backward")
def _seq_nll_loss_backward_fake(grad_loss, log_probs, target, weight, ignore_index, reduction,
                                target_batch_first, total_weight):
    _check_fake_devices("rnn_ext::seq_nll_loss_backward", "log_probs", log_probs,
                        grad_loss=grad_loss, target=target, weight=weight,
                        total_weight=total_weight)
    return log_probs.new_empty(log_probs.shape)


@torch.library.register_fake("rnn_ext::seq_cross_entropy_forward")
def _seq_cross_entropy_forward_fake(logits, target, weight, ignore_index, reduction,
                                    target_batch_first):
    loss, total_weight = _fake_loss_and_total_weight("rnn_ext::seq_cross_entropy_forward",
                                                     "logits", logits, target, weight, reduction)
    row_max = logits.new_empty(logits.shape[:2], dtype=_stat_dtype(logits.dtype))
    log_sum = logits.new_empty(logits.shape[:2], dtype=_stat_dtype(logits.dtype))
    return loss, row_max, log_sum, total_weight


@torch.library.register_fake("rnn_ext::seq_cross_entropy_backward")
def _seq_cross_entropy_backward_fake(grad_loss, logits, target, weight, ignore_index, reduction,
                                     target_batch_first, row_max, log_sum, total_weight):
    op = "rnn_ext::seq_cross_entropy_backward"
    _check_fake_devices(op, "logits", logits, grad_loss=grad_loss, target=target, weight=weight,
                        row_max=row_max, log_sum=log_sum, total_weight=total_weight)
    for name, stat in (("row_max", row_max), ("log_sum", log_sum)):  # as seq_nll_checks.cpp
        torch._check(tuple(stat.shape) == tuple(logits.shape[:2]),
                     lambda: f"{op}: expected {name} of shape (T, B) = "
                             f"{list(logits.shape[:2])}, but got {name} of shape "
                             f"{list(stat.shape)}")
    return logits.new_empty(logits.shape)
