"""The fused Elman operators (rnn_ext.ops.elman_rnn / elman_cell) on the CPU.

References: torch.nn.RNN / nn.RNNCell with the same weights (PyTorch's own kernels),
float64 finite differences (gradcheck), torch.library.opcheck, and rnn_ext.reference.
"""

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnn_ext
from rnn_ext.ops import elman_cell, elman_rnn
from rnn_ext.reference import elman_rnn_reference

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}

# (T, B, I, H): the degenerate sizes, odd ones and the lesson's layer shape, kept small.
SIZES = [(1, 1, 1, 1), (1, 3, 2, 5), (4, 1, 3, 1), (7, 5, 3, 9), (5, 4, 1, 33), (8, 16, 42, 64)]


def _rnn_params(rnn, suffix=""):
    names = [f"weight_ih_l0{suffix}", f"weight_hh_l0{suffix}"]
    if rnn.bias:
        names += [f"bias_ih_l0{suffix}", f"bias_hh_l0{suffix}"]
    return [getattr(rnn, n) for n in names]


def _op_args(rnn, suffix=""):
    p = _rnn_params(rnn, suffix)
    return p if rnn.bias else p + [None, None]


def _random_lengths(T, B, gen):
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[torch.randint(0, B, (1,), generator=gen)] = T  # nn.RNN's packed output pads to max
    return lengths


def _grads(outputs, inputs, grad_outputs):
    return torch.autograd.grad(outputs, inputs, grad_outputs)


def _assert_close_all(actual, expected, dtype):
    for i, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, **TOL[dtype], msg=lambda m, i=i: f"item {i}: {m}")


# ----------------------------------------------------------------------------------------------
# Values and gradients against nn.RNN


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("T,B,I,H", SIZES)
def test_forward_direction_matches_nn_rnn(dtype, nonlinearity, bias, T, B, I, H):
    torch.manual_seed(T * 1000 + B * 100 + I * 10 + H)
    rnn = nn.RNN(I, H, nonlinearity=nonlinearity, bias=bias).to(dtype)
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=dtype, requires_grad=True)
    out_ref, hn_ref = rnn(x, h0)
    out, hn = elman_rnn(x, h0[0], *_op_args(rnn), nonlinearity=nonlinearity)
    _assert_close_all([out, hn], [out_ref, hn_ref[0]], dtype)

    gy, gh = torch.randn_like(out), torch.randn_like(hn)
    inputs = [x, h0, *_rnn_params(rnn)]
    _assert_close_all(_grads((out, hn), inputs, (gy, gh)),
                      _grads((out_ref, hn_ref[0]), inputs, (gy, gh)), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nonlinearity,bias", [("tanh", True), ("relu", False)])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("T,B,I,H", SIZES)
def test_both_directions_match_bidirectional_nn_rnn(dtype, nonlinearity, bias, with_lengths,
                                                     T, B, I, H):
    """reverse=True is nn.RNN's second direction; lengths are nn.RNN's packed sequences."""
    gen = torch.Generator().manual_seed(T + 10 * B + 100 * H)
    torch.manual_seed(T + 10 * B + 100 * H)
    rnn = nn.RNN(I, H, nonlinearity=nonlinearity, bias=bias, bidirectional=True).to(dtype)
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    h0 = torch.randn(2, B, H, dtype=dtype, requires_grad=True)
    lengths = _random_lengths(T, B, gen) if with_lengths else None

    if with_lengths:
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out_ref, hn_ref = rnn(packed, h0)
        out_ref, _ = pad_packed_sequence(out_ref, total_length=T)
    else:
        out_ref, hn_ref = rnn(x, h0)

    out_f, hn_f = elman_rnn(x, h0[0], *_op_args(rnn), nonlinearity, False, lengths)
    out_b, hn_b = elman_rnn(x, h0[1], *_op_args(rnn, "_reverse"), nonlinearity, True, lengths)
    out = torch.cat([out_f, out_b], dim=2)
    hn = torch.stack([hn_f, hn_b])
    _assert_close_all([out, hn], [out_ref, hn_ref], dtype)

    gy, gh = torch.randn_like(out), torch.randn_like(hn)
    if with_lengths:  # the gradient of padded outputs is meaningless for both
        gy = gy * (torch.arange(T).unsqueeze(1) < lengths).unsqueeze(2)
    inputs = [x, h0, *_rnn_params(rnn), *_rnn_params(rnn, "_reverse")]
    _assert_close_all(_grads((out, hn), inputs, (gy, gh)),
                      _grads((out_ref, hn_ref), inputs, (gy, gh)), dtype)


# The CPU backward hands ga to the weight-gradient GEMMs in chunks of about 2048 rows (steps x
# batch): these sizes give several chunks, one of a single step, and a last partial chunk. A
# zero h_0 (nn.RNN's default) takes the path that skips its GEMMs.
@pytest.mark.parametrize("T,B,I,H", [(70, 64, 3, 5), (9, 300, 2, 3), (3, 2048, 1, 2)])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("h0_kind", ["zeros", "random"])
def test_chunked_backward_and_zero_h_0_match_nn_rnn(T, B, I, H, with_lengths, h0_kind):
    dtype = torch.float64
    gen = torch.Generator().manual_seed(T + B)
    torch.manual_seed(T + B)
    rnn = nn.RNN(I, H, bidirectional=True).to(dtype)
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    h0 = (torch.zeros if h0_kind == "zeros" else torch.randn)(2, B, H, dtype=dtype)
    h0.requires_grad_()
    lengths = _random_lengths(T, B, gen) if with_lengths else None
    if with_lengths:
        out_ref, hn_ref = rnn(pack_padded_sequence(x, lengths, enforce_sorted=False), h0)
        out_ref, _ = pad_packed_sequence(out_ref, total_length=T)
    else:
        out_ref, hn_ref = rnn(x, h0)
    out_f, hn_f = elman_rnn(x, h0[0], *_op_args(rnn), "tanh", False, lengths)
    out_b, hn_b = elman_rnn(x, h0[1], *_op_args(rnn, "_reverse"), "tanh", True, lengths)
    out, hn = torch.cat([out_f, out_b], dim=2), torch.stack([hn_f, hn_b])
    _assert_close_all([out, hn], [out_ref, hn_ref], dtype)
    gy, gh = torch.randn_like(out), torch.randn_like(hn)
    if with_lengths:
        gy = gy * (torch.arange(T).unsqueeze(1) < lengths).unsqueeze(2)
    inputs = [x, h0, *_rnn_params(rnn), *_rnn_params(rnn, "_reverse")]
    _assert_close_all(_grads((out, hn), inputs, (gy, gh)),
                      _grads((out_ref, hn_ref), inputs, (gy, gh)), dtype)


def _tanh_through_forward(a, via_bias=False):
    """tanh(a) as the CPU forward computes it: one step, h_0 = 0, W_hh = 0; a (N, H) float32
    given as the input with weight_ih the identity, or (via_bias) as bias_ih with the input and
    weight_ih zero, so that the pre-activation 0 @ 0 + a keeps inf and NaN."""
    N, H = a.shape
    h_0, w_hh = torch.zeros(N, H), torch.zeros(H, H)
    if via_bias:
        x, w, b = torch.zeros(1, N, H), torch.zeros(H, H), a
        return torch.stack([torch.ops.rnn_ext.elman_forward(x[:, i:i + 1], h_0[i:i + 1], w,
                                                            w_hh, b[i], None, "tanh", False,
                                                            None)[0][0, 0] for i in range(N)])
    out, _ = torch.ops.rnn_ext.elman_forward(a.unsqueeze(0), h_0, torch.eye(H), w_hh, None,
                                             None, "tanh", False, None)
    return out[0]


def test_cpu_float32_tanh_within_two_ulps():
    # The CPU forward's own vectorised float32 tanh (csrc/cpu/vec_math.h, in place of ATen's
    # tanh_, 3.8 ns per element on an AVX2 CPU): against float64 over [-20, 20], values near 0,
    # the branch point 0.625, large values and subnormals; inf, -inf and NaN as torch.tanh.
    H = 128
    g = torch.Generator().manual_seed(0)
    parts = [torch.linspace(-20, 20, 100_000), torch.randn(50_000, generator=g) * 2,
             torch.logspace(-38, 1.5, 20_000), -torch.logspace(-38, 1.5, 20_000),
             torch.linspace(0.62, 0.63, 2_000), -torch.linspace(0.62, 0.63, 2_000),
             torch.tensor([1e-45, -1e-45, 3e-40, 0.0, 50.0, -50.0, 1e30, -1e30])]
    a = torch.cat(parts)
    a = torch.cat([a, torch.zeros(-a.numel() % H)]).reshape(-1, H)
    got = _tanh_through_forward(a).double()
    ref = torch.tanh(a.double())
    # One ulp: the float32 spacing in the binade of the exact value (2^-149 below the normals).
    exponent = torch.frexp(ref.abs())[1]  # |ref| in [2^(e-1), 2^e)
    ulp = torch.pow(2.0, (exponent - 24).clamp(min=-149).double())
    err = (got - ref).abs() / ulp
    worst = err.argmax()
    assert err.max() <= 2.0, f"{err.max():.2f} ulps at tanh({a.flatten()[worst].item()!r})"
    special = torch.tensor([[float("inf"), float("-inf"), float("nan"), 0.0, 30.0, -30.0]])
    torch.testing.assert_close(_tanh_through_forward(special, via_bias=True), torch.tanh(special),
                               equal_nan=True, rtol=0, atol=0)
    # tanh(-0) = -0 (the pre-activation -0 * 1 + -0 is -0: relu passes it on as -0).
    args = (torch.full((1, 1, 1), -0.0), torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(1, 1),
            torch.tensor([-0.0]), None)
    for act in ("relu", "tanh"):
        out = torch.ops.rnn_ext.elman_forward(*args, act, False, None)[0]
        assert out.item() == 0.0 and torch.signbit(out).item(), (act, out)


@pytest.mark.parametrize("reverse", [False, True])
def test_zero_h_0_shortcut_keeps_nn_rnn_inf_and_nan(reverse):
    """A zero h_0 skips its GEMMs only when the other factor is finite: 0 * inf is NaN, and
    nn.RNN, which multiplies, gives NaN there (forward: an inf in W_hh; backward: an inf in the
    gradient of the first step)."""
    torch.manual_seed(0)
    rnn = nn.RNN(2, 3, bidirectional=True).double()
    with torch.no_grad():
        rnn.weight_hh_l0[0, 0] = float("inf")
        rnn.weight_hh_l0_reverse[0, 0] = float("inf")
    x = torch.randn(4, 2, 2, dtype=torch.float64)
    h0 = torch.zeros(2, 2, 3, dtype=torch.float64)
    out_ref = rnn(x, h0)[0][..., 3:] if reverse else rnn(x, h0)[0][..., :3]
    sfx = "_reverse" if reverse else ""
    out, _ = elman_rnn(x, h0[int(reverse)], *_op_args(rnn, sfx), "tanh", reverse, None)
    torch.testing.assert_close(out, out_ref, equal_nan=True)

    # T = 1, zero h_0, an inf in grad_output: grad_weight_hh is NaN in nn.RNN (0 * inf)
    rnn = nn.RNN(2, 3).double()
    x1 = torch.randn(1, 2, 2, dtype=torch.float64)
    h1 = torch.zeros(1, 2, 3, dtype=torch.float64)
    gy = torch.randn(1, 2, 3, dtype=torch.float64)
    gy[0, 0, 0] = float("inf")
    params = _rnn_params(rnn)
    ref = _grads(rnn(x1, h1)[0], params, gy)
    got = _grads(elman_rnn(x1, h1[0], *_op_args(rnn), "tanh", False, None)[0], params, gy)
    for a, e in zip(got, ref):
        torch.testing.assert_close(a, e, equal_nan=True)


@pytest.mark.parametrize("ac_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_ops_under_cpu_autocast_like_nn_rnn(ac_dtype):
    """Under torch.autocast('cpu') the raw ops run in the autocast dtype, as nn.RNN and
    nn.RNNCell do: float32 arguments are cast (the result equals the op on cast arguments, bit
    for bit), gradients come back in float32; float64 arguments are left alone."""
    torch.manual_seed(0)
    rnn = nn.RNN(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    h0 = torch.randn(2, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=ac_dtype):
        out, hn = elman_rnn(x, h0, *_op_args(rnn), "tanh", False, None)
        out_nn, _ = rnn(x, h0.unsqueeze(0))
        hy = elman_cell(x[0], h0, *_op_args(rnn), nonlinearity="relu")
    assert out.dtype == hn.dtype == hy.dtype == out_nn.dtype == ac_dtype
    cast = [t.detach().to(ac_dtype) for t in (x, h0, *_rnn_params(rnn))]
    out_ref, hn_ref = elman_rnn(*cast, "tanh", False, None)
    assert torch.equal(out, out_ref) and torch.equal(hn, hn_ref)
    assert torch.equal(hy, elman_cell(cast[0][0], *cast[1:], nonlinearity="relu"))
    (out.float().sum() + hy.float().sum()).backward()
    assert x.grad.dtype == h0.grad.dtype == rnn.weight_hh_l0.grad.dtype == torch.float32
    with torch.autocast("cpu", dtype=ac_dtype):
        out64, _ = elman_rnn(x.double(), h0.double(),
                             *[p.double() for p in _rnn_params(rnn)], "tanh", False, None)
    assert out64.dtype == torch.float64


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_nan_input_propagates_as_in_nn_rnn(nonlinearity):
    """A NaN in the input: relu(NaN) is NaN (not 0), and relu's backward passes the gradient
    where the output is NaN (threshold_backward: 0 only where output <= 0), as in nn.RNN and
    nn.RNNCell; outputs and every gradient, NaN pattern included, equal nn.RNN's."""
    torch.manual_seed(0)
    rnn = nn.RNN(3, 4, nonlinearity=nonlinearity).double()
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    x[0, 0, 1] = float("nan")
    h0 = torch.randn(1, 2, 4, dtype=torch.float64)
    x.requires_grad_()
    h0.requires_grad_()
    out_ref, hn_ref = rnn(x, h0)
    out, hn = elman_rnn(x, h0[0], *_op_args(rnn), nonlinearity, False, None)
    torch.testing.assert_close(out, out_ref, equal_nan=True)
    torch.testing.assert_close(hn, hn_ref[0], equal_nan=True)
    gy = torch.randn_like(out)
    inputs = [x, h0, *_rnn_params(rnn)]
    for a, e in zip(_grads(out, inputs, gy), _grads(out_ref, inputs, gy)):
        torch.testing.assert_close(a, e, equal_nan=True)

    cell = nn.RNNCell(3, 4, nonlinearity=nonlinearity).double()
    params = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    hy_ref = cell(x[0], h0[0])
    hy = elman_cell(x[0], h0[0], *params, nonlinearity=nonlinearity)
    torch.testing.assert_close(hy, hy_ref, equal_nan=True)
    g = torch.randn_like(hy)
    for a, e in zip(_grads(hy, [x, h0, *params], g), _grads(hy_ref, [x, h0, *params], g)):
        torch.testing.assert_close(a, e, equal_nan=True)


@pytest.mark.parametrize("used", ["output", "h_n", "h_n_sum", "last_output"])
@pytest.mark.parametrize("reverse,with_lengths", [(False, False), (True, True), (False, True)])
def test_gradients_when_an_output_is_unused(used, reverse, with_lengths):
    """An unused output's gradient reaches the backward as None (materialize_grads off) and
    the kernel reads a broadcast zero in its place; a broadcast grad_h_n is read as one row:
    the gradients must still be nn.RNN's."""
    torch.manual_seed(1)
    T, B, I, H = 6, 5, 3, 4
    rnn = nn.RNN(I, H, bidirectional=True).double()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, B, H, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2, 5, 1, 6]) if with_lengths else None
    d = int(reverse)
    sfx = "_reverse" if reverse else ""
    if with_lengths:
        out_ref, hn_ref = rnn(pack_padded_sequence(x, lengths, enforce_sorted=False), h0)
        out_ref, _ = pad_packed_sequence(out_ref, total_length=T)
    else:
        out_ref, hn_ref = rnn(x, h0)
    out_ref, hn_ref = out_ref[..., d * H:(d + 1) * H], hn_ref[d]
    out, hn = elman_rnn(x, h0[d], *_op_args(rnn, sfx), "tanh", reverse, lengths)

    def loss(o, h):
        if used == "output":
            return (o * torch.arange(1.0, H + 1, dtype=o.dtype)).sum()
        if used == "h_n":
            return (h * torch.arange(1.0, H + 1, dtype=h.dtype)).sum()
        if used == "h_n_sum":  # grad_h_n: ones expanded, stride 0 (read as one row)
            return h.sum()
        return o[0 if reverse else -1].pow(2).sum()

    inputs = [x, h0, *_rnn_params(rnn, sfx)]
    expected = torch.autograd.grad(loss(out_ref, hn_ref), inputs)
    actual = torch.autograd.grad(loss(out, hn), inputs)
    _assert_close_all(actual, expected, torch.float64)


def test_padded_steps_output_zero_and_keep_state():
    torch.manual_seed(0)
    T, B, I, H = 6, 3, 2, 4
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(B, H, dtype=torch.float64)
    w = [torch.randn(H, I, dtype=torch.float64), torch.randn(H, H, dtype=torch.float64)]
    lengths = torch.tensor([6, 2, 4])
    for reverse in (False, True):
        out, hn = elman_rnn(x, h0, *w, reverse=reverse, lengths=lengths)
        for b, n in enumerate(lengths.tolist()):
            assert out[n:, b].abs().max().item() == 0.0 if n < T else True
            # each sequence alone, unpadded, gives the same states
            out_b, hn_b = elman_rnn(x[:n, b:b + 1], h0[b:b + 1], *w, reverse=reverse)
            torch.testing.assert_close(out[:n, b:b + 1], out_b, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(hn[b:b + 1], hn_b, rtol=1e-12, atol=1e-12)


def test_lengths_as_list_equal_lengths_as_tensor():
    torch.manual_seed(0)
    x, h0 = torch.randn(4, 2, 3), torch.randn(2, 5)
    w = [torch.randn(5, 3), torch.randn(5, 5)]
    a = elman_rnn(x, h0, *w, lengths=[4, 2])
    b = elman_rnn(x, h0, *w, lengths=torch.tensor([4, 2]))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("B,I,H", [(1, 1, 1), (3, 4, 5), (16, 42, 64)])
def test_cell_matches_nn_rnncell(dtype, nonlinearity, bias, B, I, H):
    torch.manual_seed(B + I + H)
    cell = nn.RNNCell(I, H, bias=bias, nonlinearity=nonlinearity).to(dtype)
    x = torch.randn(B, I, dtype=dtype, requires_grad=True)
    hx = torch.randn(B, H, dtype=dtype, requires_grad=True)
    hy_ref = cell(x, hx)
    params = [cell.weight_ih, cell.weight_hh] + ([cell.bias_ih, cell.bias_hh] if bias else [])
    args = params if bias else params + [None, None]
    hy = elman_cell(x, hx, *args, nonlinearity=nonlinearity)
    _assert_close_all([hy], [hy_ref], dtype)
    g = torch.randn_like(hy)
    inputs = [x, hx, *params]
    _assert_close_all(_grads(hy, inputs, g), _grads(hy_ref, inputs, g), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_close_to_float64(dtype):
    """bfloat16 / float16 on the CPU (nn.RNN accepts both in this torch): close to float64."""
    torch.manual_seed(0)
    T, B, I, H = 6, 4, 8, 16
    rnn = nn.RNN(I, H).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(B, H, dtype=torch.float64)
    out64, hn64 = elman_rnn(x, h0, *_op_args(rnn))
    params = [p.detach().to(dtype).requires_grad_() for p in _op_args(rnn)]
    xl = x.to(dtype).requires_grad_()
    out, hn = elman_rnn(xl, h0.to(dtype), *params)
    assert out.dtype == dtype and hn.dtype == dtype
    torch.testing.assert_close(out.double(), out64, rtol=0, atol=5e-2)
    torch.testing.assert_close(hn.double(), hn64, rtol=0, atol=5e-2)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in params)
    assert torch.isfinite(xl.grad.float()).all()


# ----------------------------------------------------------------------------------------------
# Finite differences, double backward, opcheck, torch.compile


def _small_case(bias=True, seed=0, T=4, B=3, I=2, H=3):
    """[input, h_0, weight_ih, weight_hh, bias_ih, bias_hh], float64, requiring grad; bias:
    True (both), False (neither), "ih" or "hh" (that one only, the other None)."""
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * 0.5).requires_grad_()

    args = [r(T, B, I), r(B, H), r(H, I), r(H, H)]
    args += [r(H) if bias in (True, "ih") else None, r(H) if bias in (True, "hh") else None]
    return args


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, [4, 1, 3]])
@pytest.mark.parametrize("bias", [True, False, "ih", "hh"])
def test_gradcheck_and_gradgradcheck(nonlinearity, reverse, lengths, bias):
    """Finite differences of the first and second derivatives, every bias combination: with
    one bias None the optional argument has no autograd input edge, so the double backward's
    needs_input_grad must skip it (it once raised "Index out of range", or with lengths
    silently dropped bias_hh's gradient)."""
    args = _small_case(bias=bias)
    lt = None if lengths is None else torch.tensor(lengths)

    def f(*a):
        return elman_rnn(*a, nonlinearity=nonlinearity, reverse=reverse, lengths=lt)

    tensors = tuple(a for a in args if a is not None)

    def g(*t):
        it = iter(t)
        return f(*[next(it) if a is not None else None for a in args])

    assert torch.autograd.gradcheck(g, tensors)
    assert torch.autograd.gradgradcheck(g, tensors)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False, "ih", "hh"])
def test_cell_gradcheck_and_gradgradcheck(nonlinearity, bias):
    args = _small_case(bias=bias, T=1)
    args[0] = args[0][0].detach().requires_grad_()
    tensors = tuple(a for a in args if a is not None)

    def g(*t):
        it = iter(t)
        return elman_cell(*[next(it) if a is not None else None for a in args],
                          nonlinearity=nonlinearity)

    assert torch.autograd.gradcheck(g, tensors)
    assert torch.autograd.gradgradcheck(g, tensors)


@pytest.mark.parametrize("op,lengths", [("sequence", None), ("sequence", [4, 1, 3]),
                                        ("cell", None)])
def test_double_backward_one_bias_partial_requires_grad(op, lengths):
    """bias_ih = None, bias_hh given and only some arguments requiring grad: the gradients
    with create_graph=True equal those of the plain backward and of the reference, and the
    graph they carry differentiates again (nothing dropped, no index error)."""
    x, h0, wih, whh, _, bhh = _small_case(bias="hh")
    x, wih = x.detach(), wih.detach()  # constants: the input edges of h_0, W_hh, b_hh only
    if op == "sequence":
        lt = None if lengths is None else torch.tensor(lengths)

        def f(fn, *a):
            out, h_n = fn(*a, "tanh", False, lt)
            return (out ** 2).sum() + h_n.sum()

        fns = (elman_rnn, elman_rnn_reference)
    else:
        x = x[0]

        def f(fn, *a):
            return (fn(*a) ** 2).sum()

        fns = (elman_cell, lambda *a: torch.tanh(
            a[0] @ a[2].T + a[1] @ a[3].T + a[5]))
    wanted = (h0, whh, bhh)
    plain = torch.autograd.grad(f(fns[0], x, h0, wih, whh, None, bhh), wanted)
    graph = torch.autograd.grad(f(fns[0], x, h0, wih, whh, None, bhh), wanted,
                                create_graph=True)
    ref = torch.autograd.grad(f(fns[1], x, h0, wih, whh, None, bhh), wanted, create_graph=True)
    for p, g, r in zip(plain, graph, ref):
        assert g is not None and g.requires_grad
        torch.testing.assert_close(g, p, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    second = torch.autograd.grad(sum((g ** 2).sum() for g in graph), wanted)
    second_ref = torch.autograd.grad(sum((r ** 2).sum() for r in ref), wanted)
    for a, b in zip(second, second_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_double_backward_equals_reference():
    args = _small_case()
    out, hn = elman_rnn(*args)
    out_r, hn_r = elman_rnn_reference(*args)
    for o, h in [(out, hn), (out_r, hn_r)]:
        (gx,) = torch.autograd.grad((o ** 2).sum() + h.sum(), args[0], create_graph=True)
        o._gg = torch.autograd.grad(gx.pow(2).sum(), args[2:4])
    for a, b in zip(out._gg, out_r._gg):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("reverse,lengths", [(False, None), (True, None), (True, [4, 2, 3])])
def test_opcheck_sequence_ops(nonlinearity, reverse, lengths):
    for dtype in (torch.float64, torch.float32):
        args = [a.detach().to(dtype).requires_grad_() if a is not None else None
                for a in _small_case()]
        lt = None if lengths is None else torch.tensor(lengths)
        torch.library.opcheck(torch.ops.rnn_ext.elman_forward,
                              (*args, nonlinearity, reverse, lt))
        out, hn = torch.ops.rnn_ext.elman_forward(*args, nonlinearity, reverse, lt)
        bwd_args = (torch.randn_like(out), torch.randn_like(hn), *[a.detach() for a in args[:4]],
                    out.detach(), nonlinearity, reverse, lt)
        torch.library.opcheck(torch.ops.rnn_ext.elman_backward, bwd_args)


def test_opcheck_cell_ops():
    x, h, wih, whh, bih, bhh = _small_case(T=1)
    x = x[0].detach().requires_grad_()
    for nl in ("tanh", "relu"):
        torch.library.opcheck(torch.ops.rnn_ext.elman_cell_forward, (x, h, wih, whh, bih, bhh, nl))
        torch.library.opcheck(torch.ops.rnn_ext.elman_cell_forward,
                              (x, h, wih, whh, None, None, nl))
        hy = torch.ops.rnn_ext.elman_cell_forward(x, h, wih, whh, bih, bhh, nl)
        torch.library.opcheck(torch.ops.rnn_ext.elman_cell_backward,
                              (torch.randn_like(hy), x.detach(), h.detach(), wih.detach(),
                               whh.detach(), hy.detach(), nl))


def test_torch_compile_fullgraph_equals_eager():
    torch.manual_seed(0)
    args = [a.detach().float().requires_grad_() for a in _small_case()]
    lengths = torch.tensor([4, 2, 3])

    def f(x, h0, wih, whh, bih, bhh):
        out, hn = elman_rnn(x, h0, wih, whh, bih, bhh, "tanh", True, lengths)
        hy = elman_cell(out[-1], hn, wih.new_ones(3, 3), whh, bih, bhh, "relu")
        return out.square().sum() + hy.sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)  # inductor, the default backend
    loss_c = compiled(*args)
    grads_c = torch.autograd.grad(loss_c, args)
    loss_e = f(*args)
    grads_e = torch.autograd.grad(loss_e, args)
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------
# Layouts: non-contiguous, transposed and expanded (stride-0) tensors give the same numbers


def test_non_contiguous_transposed_and_expanded_inputs():
    torch.manual_seed(0)
    T, B, I, H = 5, 3, 4, 6
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(B, H, dtype=torch.float64)
    wih, whh = torch.randn(H, I, dtype=torch.float64), torch.randn(H, H, dtype=torch.float64)
    bih, bhh = torch.randn(H, dtype=torch.float64), torch.randn(H, dtype=torch.float64)
    expected = elman_rnn(x, h0, wih, whh, bih, bhh)

    x_bf = x.transpose(0, 1).contiguous().transpose(0, 1)        # batch-first storage
    x_sliced = torch.randn(T, B, 2 * I, dtype=torch.float64)
    x_sliced[:, :, ::2] = x
    h0_t = h0.t().contiguous().t()
    wih_t, whh_t = wih.t().contiguous().t(), whh.t().contiguous().t()
    bih_s = torch.stack([bih, bih], 1)[:, 0]
    for args in [(x_bf, h0, wih, whh, bih, bhh),
                 (x_sliced[:, :, ::2], h0_t, wih_t, whh_t, bih_s, bhh),
                 (x, h0, wih, whh_t, bih, bhh)]:
        assert not all(a.is_contiguous() for a in args)
        got = elman_rnn(*args)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    # stride-0: the same input row for every step and batch element, a zero state expanded
    row = torch.randn(I, dtype=torch.float64)
    x_exp = row.expand(T, B, I)
    h_exp = torch.zeros(1, 1, dtype=torch.float64).expand(B, H)
    got = elman_rnn(x_exp, h_exp, wih, whh, bih, bhh)
    want = elman_rnn(x_exp.contiguous(), h_exp.contiguous(), wih, whh, bih, bhh)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_backward_with_expanded_and_non_contiguous_grads():
    """out.sum().backward() hands the kernel a stride-0 gradient; the result must not change."""
    args = _small_case()
    out, hn = elman_rnn(*args)
    g1 = torch.autograd.grad(out.sum() + hn.sum(), args[:4])
    out, hn = elman_rnn(*args)
    g2 = torch.autograd.grad((out, hn), args[:4], (torch.ones_like(out), torch.ones_like(hn)))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    out, hn = elman_rnn(*args)
    gy = torch.randn(out.shape[2], out.shape[1], out.shape[0], dtype=out.dtype).permute(2, 1, 0)
    g3 = torch.autograd.grad((out, hn), args[:4], (gy, torch.zeros_like(hn)))
    out, hn = elman_rnn(*args)
    g4 = torch.autograd.grad((out, hn), args[:4], (gy.contiguous(), torch.zeros_like(hn)))
    for a, b in zip(g3, g4):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument and the expected shape, never a crash


def _good(T=4, B=3, I=2, H=5, dtype=torch.float32):
    return dict(input=torch.randn(T, B, I, dtype=dtype), h_0=torch.randn(B, H, dtype=dtype),
                weight_ih=torch.randn(H, I, dtype=dtype), weight_hh=torch.randn(H, H, dtype=dtype),
                bias_ih=torch.randn(H, dtype=dtype), bias_hh=torch.randn(H, dtype=dtype))


BAD_SEQUENCE_CASES = [
    # (what to change, exception type, words the message must hold)
    (dict(input=torch.randn(4, 3)), RuntimeError, ["input", "rank 3", "(T, B, I)", "[4, 3]"]),
    (dict(input=torch.randn(4, 3, 2, 1)), RuntimeError, ["input", "rank 3", "[4, 3, 2, 1]"]),
    (dict(input=torch.randn(0, 3, 2)), ValueError, ["sequence length", "larger than 0"]),
    (dict(h_0=torch.randn(2, 5)), RuntimeError, ["h_0", "(B, H)", "[3, 5]", "[2, 5]"]),
    (dict(h_0=torch.randn(1, 3, 5)), RuntimeError, ["h_0", "(B, H)", "[1, 3, 5]"]),
    (dict(weight_ih=torch.randn(5, 3)), RuntimeError, ["weight_ih", "(H, I)", "[5, 2]", "[5, 3]"]),
    (dict(weight_hh=torch.randn(5, 4)), RuntimeError, ["weight_hh", "(H, H)", "[5, 4]"]),
    (dict(bias_ih=torch.randn(4)), RuntimeError, ["bias_ih", "(H,)", "[5]", "[4]"]),
    (dict(bias_hh=torch.randn(5, 1)), RuntimeError, ["bias_hh", "(H,)", "[5, 1]"]),
    (dict(h_0=torch.randn(3, 5, dtype=torch.float64)), RuntimeError,
     ["h_0", "dtype", "Float", "Double"]),
    (dict(weight_hh=torch.randn(5, 5, dtype=torch.float64)), RuntimeError, ["weight_hh", "dtype"]),
    (dict(bias_hh=torch.randn(5, dtype=torch.float16)), RuntimeError, ["bias_hh", "dtype"]),
    (dict(input=torch.ones(4, 3, 2, dtype=torch.int64)), RuntimeError,
     ["input", "floating", "Long"]),
]


@pytest.mark.parametrize("change,exc,words", BAD_SEQUENCE_CASES)
def test_bad_sequence_input_names_the_argument(change, exc, words):
    kw = {**_good(), **change}
    with pytest.raises(exc) as info:
        elman_rnn(**kw)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value}"


@pytest.mark.parametrize("lengths,exc,words", [
    (torch.tensor([4, 0, 2]), ValueError, ["lengths[1] = 0", "[1, T] = [1, 4]", "empty"]),
    (torch.tensor([4, 5, 2]), ValueError, ["lengths[1] = 5", "[1, 4]"]),
    (torch.tensor([-1, 2, 2]), ValueError, ["lengths[0] = -1"]),
    (torch.tensor([4, 2]), RuntimeError, ["lengths", "(B,)", "[3]", "[2]"]),
    (torch.tensor([[4, 2, 1]]), RuntimeError, ["lengths", "(B,)", "[1, 3]"]),
    (torch.tensor([4.0, 2.0, 1.0]), RuntimeError, ["lengths", "int64", "Float"]),
])
def test_bad_lengths(lengths, exc, words):
    with pytest.raises(exc) as info:
        elman_rnn(**_good(), lengths=lengths)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value}"


def test_bad_nonlinearity():
    with pytest.raises(ValueError, match="unknown nonlinearity 'sigmoid'.*'tanh' or 'relu'"):
        elman_rnn(**_good(), nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="unknown nonlinearity"):
        g = _good()
        elman_cell(g["input"][0], g["h_0"], g["weight_ih"], g["weight_hh"], nonlinearity="gelu")


@pytest.mark.parametrize("change,words", [
    (dict(input=torch.randn(3)), ["input", "rank 2", "(B, I)", "[3]"]),
    (dict(input=torch.randn(4, 3, 2)), ["input", "rank 2", "[4, 3, 2]"]),
    (dict(hx=torch.randn(3, 5, 1)), ["hx", "rank 2", "[3, 5, 1]"]),
    (dict(hx=torch.randn(2, 5)), ["hx", "(B, H)", "[3, 5]", "[2, 5]"]),
    (dict(weight_ih=torch.randn(5, 7)), ["weight_ih", "(H, I)", "[5, 7]"]),
    (dict(hx=torch.randn(3, 5, dtype=torch.float64)), ["hx", "dtype"]),
])
def test_bad_cell_input_names_the_argument(change, words):
    g = _good()
    kw = dict(input=g["input"][0], hx=g["h_0"], weight_ih=g["weight_ih"],
              weight_hh=g["weight_hh"], bias_ih=g["bias_ih"], bias_hh=g["bias_hh"])
    kw.update(change)
    with pytest.raises(RuntimeError) as info:
        elman_cell(**kw)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value}"


@pytest.mark.parametrize("name,bad,words", [
    ("grad_output", torch.randn(4, 3, 4), ["grad_output", "(T, B, H)", "[4, 3, 5]", "[4, 3, 4]"]),
    ("grad_h_n", torch.randn(3, 4), ["grad_h_n", "(B, H)", "[3, 4]"]),
    ("output", torch.randn(3, 3, 5), ["output", "(T, B, H)", "[3, 3, 5]"]),
    ("grad_output", torch.randn(4, 3, 5, dtype=torch.float64), ["grad_output", "dtype"]),
])
def test_bad_backward_input_names_the_argument(name, bad, words):
    g = _good()
    out, hn = elman_rnn(**g)
    kw = dict(grad_output=torch.randn_like(out), grad_h_n=torch.randn_like(hn), input=g["input"],
              h_0=g["h_0"], weight_ih=g["weight_ih"], weight_hh=g["weight_hh"], output=out)
    kw[name] = bad
    with pytest.raises(RuntimeError) as info:
        torch.ops.rnn_ext.elman_backward(*kw.values(), "tanh", False, None)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value}"


def _schema_tensor_args(op):
    """The tensor arguments' names of an operator, from its schema."""
    return [a.name for a in op._schemas[""].arguments
            if str(a.type) in ("Tensor", "Optional[Tensor]")]


def test_an_argument_on_another_device_is_an_error_on_every_op():
    """One tensor argument on another device (meta: the other device every machine has) is a
    RuntimeError naming it, for each tensor argument of the four Elman operators. The meta one
    selects the operator's Meta kernel (its fake kernel), which returned uninitialised CPU
    tensors before it checked devices; nn.RNN and nn.RNNCell raise. lengths may also be on
    the CPU (the CUDA case is in test_cuda.py)."""
    g = _good()
    out, hn = elman_rnn(**g)
    x1, h1 = g["input"][0], g["h_0"]
    hy = elman_cell(x1, h1, g["weight_ih"], g["weight_hh"])
    cases = {
        torch.ops.rnn_ext.elman_forward: (
            dict(input=g["input"], h_0=g["h_0"], weight_ih=g["weight_ih"],
                 weight_hh=g["weight_hh"], bias_ih=torch.randn(5), bias_hh=torch.randn(5)),
            ("tanh", False, torch.tensor([4, 2, 3]))),
        torch.ops.rnn_ext.elman_backward: (
            dict(grad_output=torch.randn_like(out), grad_h_n=torch.randn_like(hn),
                 input=g["input"], h_0=g["h_0"], weight_ih=g["weight_ih"],
                 weight_hh=g["weight_hh"], output=out),
            ("tanh", False, torch.tensor([4, 2, 3]))),
        torch.ops.rnn_ext.elman_cell_forward: (
            dict(input=x1, hx=h1, weight_ih=g["weight_ih"], weight_hh=g["weight_hh"],
                 bias_ih=torch.randn(5), bias_hh=torch.randn(5)), ("tanh",)),
        torch.ops.rnn_ext.elman_cell_backward: (
            dict(grad_hy=torch.randn_like(hy), input=x1, hx=h1, weight_ih=g["weight_ih"],
                 weight_hh=g["weight_hh"], hy=hy), ("tanh",)),
    }
    for op, (kw, rest) in cases.items():
        names = [n for n in _schema_tensor_args(op) if n != "lengths"]
        assert names == list(kw), names  # every tensor argument is tried
        op(*kw.values(), *rest)  # all on the CPU: fine
        for name in kw:
            bad = dict(kw, **{name: kw[name].to("meta")})
            with pytest.raises(RuntimeError) as info:
                op(*bad.values(), *rest)
            if name != "input":
                assert str(info.value).startswith(
                    f"{op._qualified_op_name}: expected {name} on device cpu like input, but got "
                    f"it on meta"), str(info.value)
            else:  # input itself on meta: the others are named against it
                assert "on device meta like input, but got it on cpu" in str(info.value)
        if "lengths" in _schema_tensor_args(op):
            with pytest.raises(RuntimeError, match="expected lengths on the CPU or on input's "
                               "device cpu, but got it on meta"):
                op(*kw.values(), *rest[:-1], torch.tensor([4, 2, 3], device="meta"))


def test_empty_batch_and_zero_hidden_do_not_crash():
    """B = 0 and H = 0 are legal for nn.RNN; the op returns the same empty shapes."""
    for T, B, I, H in [(3, 0, 2, 4), (3, 2, 2, 0)]:
        rnn = nn.RNN(I, H) if H > 0 else None
        x = torch.randn(T, B, I)
        h0 = torch.zeros(B, H)
        w = [torch.randn(H, I), torch.randn(H, H)]
        out, hn = elman_rnn(x, h0, *w)
        assert out.shape == (T, B, H) and hn.shape == (B, H)
        if rnn is not None:
            ref, _ = rnn(x)
            assert ref.shape == out.shape


def test_no_cuda_build_reports_itself():
    """has_cuda_kernels() says whether the CUDA kernels were compiled in (a bool either way)."""
    assert isinstance(rnn_ext.has_cuda_kernels(), bool)
    assert rnn_ext.has_cuda_kernels() == torch._C._dispatch_has_kernel_for_dispatch_key(
        "rnn_ext::elman_backward", "CUDA")


def test_all_combinations_hit_the_same_kernel_as_reference():
    """A sweep through the plain-PyTorch reference (the double-backward path) for every flag."""
    torch.manual_seed(1)
    for nonlinearity, reverse, bias in itertools.product(["tanh", "relu"], [False, True],
                                                         [True, False]):
        args = _small_case(bias=bias, T=5, B=4)
        lt = torch.tensor([5, 3, 1, 4])
        got = elman_rnn(*args, nonlinearity, reverse, lt)
        want = elman_rnn_reference(*args, nonlinearity, reverse, lt)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("x_grad,h_grad", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("reverse,lengths", [(False, None), (True, [4, 2, 3])])
def test_gradients_when_input_or_h_0_is_a_constant(x_grad, h_grad, reverse, lengths):
    """autograd asks the backward op only for what it needs (output_mask); the rest is exact."""
    args = [a.detach() if a is not None else None for a in _small_case()]
    x, h0, *weights = args
    x.requires_grad_(x_grad)
    h0.requires_grad_(h_grad)
    for w in weights:
        w.requires_grad_()
    lt = None if lengths is None else torch.tensor(lengths)
    inputs = [t for t in (x, h0) if t.requires_grad] + weights
    out, hn = elman_rnn(x, h0, *weights, reverse=reverse, lengths=lt)
    out_r, hn_r = elman_rnn_reference(x, h0, *weights, reverse=reverse, lengths=lt)
    gy, gh = torch.randn_like(out), torch.randn_like(hn)
    _assert_close_all(_grads((out, hn), inputs, (gy, gh)),
                      _grads((out_r, hn_r), inputs, (gy, gh)), torch.float64)


def test_backward_output_mask_zeroes_only_the_unwanted_gradients():
    args = [a.detach() if a is not None else None for a in _small_case()]
    out, hn = torch.ops.rnn_ext.elman_forward(*args, "tanh", False, None)
    gy, gh = torch.randn_like(out), torch.randn_like(hn)
    bwd = (gy, gh, *args[:4], out, "tanh", False, None)
    full = torch.ops.rnn_ext.elman_backward(*bwd)
    for mask in ([False, True], [True, False], [False, False]):
        part = torch.ops.rnn_ext.elman_backward(*bwd, mask)
        for i, wanted in enumerate(mask):
            expected = full[i] if wanted else torch.zeros_like(full[i])
            torch.testing.assert_close(part[i], expected, rtol=0, atol=0)
        for a, b in zip(part[2:], full[2:]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.library.opcheck(torch.ops.rnn_ext.elman_backward, (*bwd, mask))


def test_missing_compiled_extension_is_a_clear_import_error(tmp_path):
    """A source tree without its built rnn_ext._C (e.g. Python started in the checkout after a
    non-editable install) fails with a message that says what to do, not a circular-import
    riddle."""
    src = Path(rnn_ext.__file__).parent
    shutil.copytree(src, tmp_path / "rnn_ext", ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    # An editable install (the README's) adds a meta-path finder that would still find the
    # source tree's _C for the copy: drop it, as if that tree had never been built.
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
            "if 'editable' not in repr(f).lower() and 'editable' not in "
            "getattr(f, '__module__', '').lower()]; import rnn_ext")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0
    assert "rnn_ext._C could not be loaded" in r.stderr
    assert "pip install --no-build-isolation -e ." in r.stderr


def test_lengths_of_any_integer_dtype_and_no_truncation():
    """Integer lengths of a smaller dtype are widened (as pack_padded_sequence does); a list
    holding a float is refused (it was truncated: 2.7 -> 2, silently)."""
    gen = torch.Generator().manual_seed(0)
    x, h0 = torch.randn(4, 3, 2, generator=gen), torch.zeros(3, 5)
    w_ih, w_hh = torch.randn(5, 2, generator=gen), torch.randn(5, 5, generator=gen) / 3
    expected = elman_rnn(x, h0, w_ih, w_hh, lengths=torch.tensor([4, 2, 1]))
    for dtype in (torch.int32, torch.int16, torch.int8, torch.uint8):
        got = elman_rnn(x, h0, w_ih, w_hh, lengths=torch.tensor([4, 2, 1], dtype=dtype))
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    got = elman_rnn(x, h0, w_ih, w_hh, lengths=[np.int64(4), 2, torch.tensor(1)])
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    with pytest.raises(TypeError, match=r"lengths must hold integers, got \[2.7, 4, 1\]"):
        elman_rnn(x, h0, w_ih, w_hh, lengths=[2.7, 4, 1])
    with pytest.raises(RuntimeError, match="expected lengths of dtype int64, but got Float"):
        elman_rnn(x, h0, w_ih, w_hh, lengths=torch.tensor([4.0, 2.0, 1.0]))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("case", ["nan_padding", "inf_padding", "nan_last_valid_step"])
def test_non_finite_padding_is_never_read(nonlinearity, reverse, create_graph, case):
    """Steps t >= lengths[b] are not part of the sequence: nn.RNN on a PackedSequence never
    reads their input, nor (forward) multiplies a sequence's last state by their zero
    gradient. The weight gradients were NaN (0 * NaN in the whole-sequence GEMMs), and with
    create_graph=True every gradient was. Reference: nn.RNN on the packed batch, float64, with
    a loss that reads only the finite sequence 0 in the third case."""
    dt = torch.float64
    gen = torch.Generator().manual_seed(3)
    T, B, I, H = 5, 3, 2, 4
    lengths = torch.tensor([5, 2, 3])
    x = torch.randn(T, B, I, dtype=dt, generator=gen)
    if case == "nan_last_valid_step":
        x[1, 1, 0] = float("nan")  # sequence 1's last valid step (its state goes NaN)
    else:
        bad = float("nan") if case == "nan_padding" else float("inf")
        for b, n in enumerate(lengths.tolist()):
            x[n:, b] = bad
    rnn = nn.RNN(I, H, nonlinearity=nonlinearity, bidirectional=True, dtype=dt)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    h0 = torch.randn(2, B, H, dtype=dt, generator=gen, requires_grad=True)
    d = 1 if reverse else 0
    params = _rnn_params(rnn, "_reverse" if reverse else "")

    out_ref, hn_ref = rnn(pack_padded_sequence(x_ref, lengths, enforce_sorted=False), h0)
    out_ref, _ = pad_packed_sequence(out_ref)
    out_ref, hn_ref = out_ref[..., d * H:(d + 1) * H], hn_ref[d]
    out, hn = elman_rnn(x_ours, h0[d], *params, nonlinearity, reverse, lengths)

    if case == "nan_last_valid_step":  # a loss that reads only sequence 0
        loss_ref, loss = out_ref[:, 0].sum() + hn_ref[0].sum(), out[:, 0].sum() + hn[0].sum()
    else:
        w = torch.randn(T, B, H, dtype=dt, generator=gen)
        loss_ref, loss = (out_ref * w).sum() + hn_ref.sum(), (out * w).sum() + hn.sum()
    g_ref = list(torch.autograd.grad(loss_ref, [x_ref, h0, *params]))
    g = list(torch.autograd.grad(loss, [x_ours, h0, *params], create_graph=create_graph))
    g[1], g_ref[1] = g[1][d], g_ref[1][d]  # h_0: the other direction's half is nn.RNN's own
    for i, (a, e) in enumerate(zip(g, g_ref)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, equal_nan=True,
                                   msg=lambda m, i=i: f"gradient {i}: {m}")
    if case != "nan_last_valid_step":
        assert all(torch.isfinite(t).all() for t in g)
