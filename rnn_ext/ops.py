"""The Python face of ``torch.ops.rnn_ext.*``: functions, shape functions and autograd.

Each operator's schema is written once, in ``csrc/rnn_ext.cpp``; its kernels are in
``csrc/cpu`` and ``csrc/cuda``. This module registers, for every Elman operator, a fake
(meta) implementation with :func:`torch.library.register_fake` (so ``torch.compile`` and
:func:`torch.library.opcheck` can trace it). Their autograd is registered in C++
(``csrc/autograd/elman_autograd.cpp``): the backward calls the matching ``*_backward``
operator, and double backward differentiates a step-by-step recomputation in ATen operations
(the semantics of :func:`rnn_ext.reference.elman_rnn_reference`).

Shapes used throughout: ``T`` time steps, ``B`` batch, ``I`` input features, ``H`` hidden
features.
"""

from __future__ import annotations

import operator
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor


__all__ = ["elman_rnn", "elman_cell", "has_cuda_kernels", "set_cuda_persistent",
           "get_cuda_persistent", "cuda_persistent_plan"]

LengthsLike = Union[Tensor, Sequence[int], None]


def has_cuda_kernels() -> bool:
    """Whether this build of rnn_ext holds CUDA kernels (it does when it was compiled with nvcc)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("rnn_ext::elman_forward", "CUDA")


_SMALL_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32)


def _as_lengths(lengths: LengthsLike) -> Optional[Tensor]:
    """``lengths`` as the operators take it: an int64 tensor (smaller integer dtypes are
    widened, as ``pack_padded_sequence`` does; other dtypes are left for the operator's check),
    or a list of integers made one. A list holding a non-integer (``2.7``) is a TypeError,
    not a truncation."""
    if lengths is None:
        return None
    if isinstance(lengths, Tensor):
        return lengths.long() if lengths.dtype in _SMALL_INT_DTYPES else lengths
    values = list(lengths)
    try:
        return torch.tensor([operator.index(v) for v in values], dtype=torch.int64)
    except TypeError:
        raise TypeError(f"lengths must hold integers, got {values!r}") from None


# ---------------------------------------------------------------------------------------------
# Elman sequence op


def elman_rnn(
    input: Tensor,
    h_0: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
    nonlinearity: str = "tanh",
    reverse: bool = False,
    lengths: LengthsLike = None,
) -> Tuple[Tensor, Tensor]:
    r"""One Elman RNN layer in one direction over a whole sequence, fused (forward and backward).

    Computes, for :math:`t = 0 \dots T-1` (or :math:`T-1 \dots 0` when ``reverse``),

    .. math:: h_t = \phi(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh}),\quad
              \phi \in \{\tanh, \mathrm{relu}\}

    exactly as one layer and direction of :class:`torch.nn.RNN` (PyTorch documentation,
    ``torch.nn.RNN``); the math of the fused backward is in README.md, "The operators".

    Args:
        input: ``(T, B, I)``, float32 / float64 / bfloat16 / float16 (CUDA: the same), T >= 1.
        h_0: ``(B, H)``, the initial hidden state; same dtype and device as ``input``.
        weight_ih: ``(H, I)``. weight_hh: ``(H, H)``.
        bias_ih, bias_hh: ``(H,)`` or ``None`` (no bias).
        nonlinearity: ``"tanh"`` or ``"relu"``.
        reverse: process the sequence from the last step to the first (the second direction of
            a bidirectional layer).
        lengths: ``None`` or integer ``(B,)`` (an int64 tensor, or int32 / int16 / int8 / uint8
            widened to it, on the CPU or on ``input``'s device; or a list of ints) with
            ``1 <= lengths[b] <= T``: a padded batch. Steps ``t >= lengths[b]`` output 0 and
            leave the state unchanged, so ``h_n[b]`` is the state at the last valid
            step; with ``reverse`` each sequence starts at its own step ``lengths[b] - 1``.
            Lengths on a CUDA device are read back to check their values (a synchronisation),
            except while a CUDA graph is being captured, when a device-side assert checks them;
            lengths on the CPU cannot be used with CUDA tensors during capture.

    Returns:
        ``(output, h_n)``: output ``(T, B, H)``, every step's state; h_n ``(B, H)``.

    Raises:
        RuntimeError: wrong ranks or shapes (the message names the argument, its shape and the
            expected one), mismatched dtypes or devices, a dtype that is not floating; CPU
            ``lengths`` with CUDA tensors during CUDA-graph capture.
        ValueError: ``T == 0``, a length outside ``[1, T]``, an unknown ``nonlinearity``.
        TypeError: a ``lengths`` list holding something other than integers.

    Gradients flow to ``input``, ``h_0``, the weights and the biases through the fused
    ``rnn_ext::elman_backward`` operator. Double backward (``create_graph=True``) is computed
    by differentiating a step-by-step recomputation in PyTorch operations (exact, slower).

    On CUDA the recurrence runs either as one persistent kernel or as a cuBLAS step loop
    (:func:`set_cuda_persistent` chooses). Under ``torch.autocast`` (CPU or CUDA) the floating
    arguments of that device (not float64) are cast to the autocast dtype, as for
    :class:`torch.nn.RNN`; the output is then in that dtype.
    """
    return torch.ops.rnn_ext.elman_forward(
        input, h_0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity, reverse,
        _as_lengths(lengths),
    )


def _check_fake_devices(op: str, ref_name: str, ref: Tensor, lengths: Optional[Tensor] = None,
                        **tensors: Optional[Tensor]) -> None:
    """The device checks of the C++ operators (csrc/elman_checks.cpp, seq_nll_checks.cpp), same
    messages, in the fake kernels: every tensor on ``ref``'s device, ``lengths`` on it or on
    the CPU. The fake kernels are also the operators' Meta kernels, and the dispatcher picks
    them when any one argument is on the meta device: without these checks a meta weight with
    CPU inputs returned uninitialised CPU tensors (nn.RNN and F.nll_loss raise)."""
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise RuntimeError(f"{op}: expected {name} on device {ref.device} like {ref_name}, "
                               f"but got it on {t.device}")
    if lengths is not None and lengths.device.type != "cpu" and lengths.device != ref.device:
        raise RuntimeError(f"{op}: expected lengths on the CPU or on input's device "
                           f"{ref.device}, but got it on {lengths.device}")


@torch.library.register_fake("rnn_ext::elman_forward")
def _elman_forward_fake(input, h_0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity,
                        reverse, lengths):
    _check_fake_devices("rnn_ext::elman_forward", "input", input, lengths, h_0=h_0,
                        weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
                        bias_hh=bias_hh)
    torch._check(input.dim() == 3, lambda: f"expected input of rank 3, got {tuple(input.shape)}")
    T, B, _ = input.shape
    H = weight_hh.shape[0]
    return input.new_empty((T, B, H)), input.new_empty((B, H))


@torch.library.register_fake("rnn_ext::elman_backward")
def _elman_backward_fake(grad_output, grad_h_n, input, h_0, weight_ih, weight_hh, output,
                         nonlinearity, reverse, lengths, output_mask=(True, True)):
    _check_fake_devices("rnn_ext::elman_backward", "input", input, lengths,
                        grad_output=grad_output, grad_h_n=grad_h_n, h_0=h_0,
                        weight_ih=weight_ih, weight_hh=weight_hh, output=output)
    H = weight_hh.shape[0]
    return (
        torch.empty_like(input, memory_format=torch.contiguous_format),
        torch.empty_like(h_0, memory_format=torch.contiguous_format),
        weight_ih.new_empty(weight_ih.shape),
        weight_hh.new_empty(weight_hh.shape),
        weight_hh.new_empty((H,)),
    )


# ---------------------------------------------------------------------------------------------
# Elman cell op


def elman_cell(
    input: Tensor,
    hx: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    r"""One Elman RNN step with :class:`torch.nn.RNNCell` semantics, fused.

    .. math:: h' = \phi(x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh})

    Args:
        input: ``(B, I)``, floating dtype. hx: ``(B, H)``, same dtype and device.
        weight_ih: ``(H, I)``. weight_hh: ``(H, H)``. bias_ih, bias_hh: ``(H,)`` or ``None``.
        nonlinearity: ``"tanh"`` or ``"relu"``.

    Returns:
        ``h'``, ``(B, H)``; under ``torch.autocast`` (CPU or CUDA) in the autocast dtype, the
        floating arguments (not float64) cast to it first, as for :class:`torch.nn.RNNCell`.

    Raises:
        RuntimeError: wrong ranks, shapes, dtypes or devices (named in the message).
        ValueError: an unknown ``nonlinearity``.
    """
    return torch.ops.rnn_ext.elman_cell_forward(
        input, hx, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity
    )


@torch.library.register_fake("rnn_ext::elman_cell_forward")
def _elman_cell_forward_fake(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity):
    _check_fake_devices("rnn_ext::elman_cell_forward", "input", input, hx=hx,
                        weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
                        bias_hh=bias_hh)
    torch._check(input.dim() == 2, lambda: f"expected input of rank 2, got {tuple(input.shape)}")
    return input.new_empty((input.shape[0], weight_hh.shape[0]))


@torch.library.register_fake("rnn_ext::elman_cell_backward")
def _elman_cell_backward_fake(grad_hy, input, hx, weight_ih, weight_hh, hy, nonlinearity):
    _check_fake_devices("rnn_ext::elman_cell_backward", "input", input, grad_hy=grad_hy, hx=hx,
                        weight_ih=weight_ih, weight_hh=weight_hh, hy=hy)
    return (
        torch.empty_like(input, memory_format=torch.contiguous_format),
        torch.empty_like(hx, memory_format=torch.contiguous_format),
        weight_ih.new_empty(weight_ih.shape),
        weight_hh.new_empty(weight_hh.shape),
        weight_hh.new_empty((weight_hh.shape[0],)),
    )


# ---------------------------------------------------------------------------------------------
# CUDA: choice of the recurrence kernel

_PERSISTENT_MODES = ("auto", "on", "off", "require", "1", "0")


def set_cuda_persistent(mode: str) -> None:
    """Choose how the CUDA kernels of :func:`elman_rnn` run the recurrence.

    Sets the environment variable ``RNN_EXT_CUDA_PERSISTENT``, which the CUDA kernels read at
    every call (so it can also be set before starting Python):

    * ``"auto"`` (default): the persistent kernel (one cooperative launch for all time steps,
      W_hh held in shared memory, a grid-wide barrier per step) when a launch plan fits the
      device and ``T >= 2``; else the cuBLAS step loop (one GEMM and one fused pointwise kernel
      per step).
    * ``"on"`` / ``"1"``: the persistent kernel whenever a plan fits, ``T = 1`` included.
    * ``"off"`` / ``"0"``: always the cuBLAS step loop.
    * ``"require"``: the persistent kernel, or a RuntimeError that says why it cannot run.

    The plan fits when all of W_hh, in the accumulation type (float32 for float32 / float16 /
    bfloat16, float64 for float64), and each block's slice of the state fit in the shared
    memory of blocks that can all be resident at once (estimated for an H200: up to about
    H = 2112 at B <= 8, 1056 at B = 64, 512 at B = 512; float64 about half as far). See
    ``csrc/cuda/elman_cuda.cu``; :func:`cuda_persistent_plan` tells for a given shape.

    Raises:
        ValueError: ``mode`` is not one of the values above.
    """
    if mode not in _PERSISTENT_MODES:
        raise ValueError(f"set_cuda_persistent: unknown mode {mode!r}: expected one of "
                         f"{', '.join(repr(m) for m in _PERSISTENT_MODES)}")
    import os

    os.environ["RNN_EXT_CUDA_PERSISTENT"] = mode


def get_cuda_persistent() -> str:
    """The current value of ``RNN_EXT_CUDA_PERSISTENT`` (``"auto"`` when unset); see
    :func:`set_cuda_persistent`."""
    import os

    return os.environ.get("RNN_EXT_CUDA_PERSISTENT", "") or "auto"


_PLAN_FIELDS = ("rb", "rj", "ks", "gb", "gj", "bt", "jt", "nbt", "njt", "padded", "smem")


def cuda_persistent_plan(B: int, H: int, dtype: torch.dtype = torch.float32, *,
                         backward: bool = False,
                         device: Union[torch.device, str, int, None] = None) -> Optional[dict]:
    """The launch plan of the persistent CUDA kernel for batch ``B`` and hidden size ``H``, or
    ``None`` when no plan fits the device (the cuBLAS step loop then runs; see
    :func:`set_cuda_persistent`).

    It is the plan :func:`elman_rnn`'s forward (``backward=False``) or backward
    (``backward=True``) launches for any ``T`` and ``input_size`` (the mode allowing): a dict of
    ints with the per-thread register tile ``rb`` x ``rj``, the K-split ``ks`` (lanes per dot
    product), the output groups per block ``gb`` x ``gj``, the block tile ``bt`` (batch rows)
    x ``jt`` (hidden columns), the grid ``nbt`` x ``njt`` blocks (``blocks`` = their product, of
    256 threads each), ``padded`` (1 when the shared-memory layout is padded against bank
    conflicts) and ``smem`` (bytes of dynamic shared memory per block). The layout is that of
    ``csrc/cuda/persistent_plan.h``.

    Args:
        B: batch size, >= 1.
        H: hidden size, >= 1.
        dtype: float32, float64, float16 or bfloat16.
        backward: the backward kernel's plan instead of the forward's.
        device: a CUDA device (default: the current one).

    Raises:
        ValueError: ``B`` or ``H`` < 1, ``dtype`` not a floating dtype above, or ``device`` not
            a CUDA device.
        RuntimeError: this build of rnn_ext has no CUDA kernels, or no CUDA device is present.
    """
    if not has_cuda_kernels():
        raise RuntimeError("cuda_persistent_plan: this build of rnn_ext has no CUDA kernels "
                           "(rnn_ext.has_cuda_kernels() is False)")
    if not torch.cuda.is_available():
        raise RuntimeError("cuda_persistent_plan: no CUDA device is available")
    dev = torch.device("cuda") if device is None else torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"cuda_persistent_plan: device must be a CUDA device, got {dev}")
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"cuda_persistent_plan: dtype must be float32, float64, float16 or "
                         f"bfloat16, got {dtype}")
    if int(B) < 1 or int(H) < 1:
        raise ValueError(f"cuda_persistent_plan: B and H must be >= 1, got B = {B}, H = {H}")
    like = torch.empty(0, dtype=dtype, device=dev)
    return _plan_from_vector(torch.ops.rnn_ext._persistent_plan(like, int(B), int(H),
                                                                 bool(backward)))


def _plan_from_vector(v) -> Optional[dict]:
    """The dict of :func:`cuda_persistent_plan` from the ``rnn_ext::_persistent_plan`` op's
    ``[ok, rb, rj, ks, gb, gj, bt, jt, nbt, njt, padded, smem]`` (``persistent_plan_cuda`` in
    ``csrc/cuda/elman_cuda.cu`` writes that order; tests/test_cuda_emulated.py checks that both
    agree), or None when ``ok`` is 0."""
    if len(v) != len(_PLAN_FIELDS) + 1:
        raise RuntimeError(f"rnn_ext::_persistent_plan returned {len(v)} values, expected "
                           f"{len(_PLAN_FIELDS) + 1}: the extension and rnn_ext/ops.py differ")
    if not v[0]:
        return None
    plan = dict(zip(_PLAN_FIELDS, (int(x) for x in v[1:])))
    plan["blocks"] = plan["nbt"] * plan["njt"]
    return plan
