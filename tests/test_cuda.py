"""CUDA kernels of the Elman operators against the CPU kernels, float64 math and cuDNN.

Every test here needs a CUDA device and a build with CUDA kernels; without them the whole
module is skipped. The recurrence has two CUDA paths (csrc/cuda/elman_cuda.cu): the cuBLAS step
loop (RNN_EXT_CUDA_PERSISTENT=off) and the persistent cooperative kernel
(RNN_EXT_CUDA_PERSISTENT=require, which fails loudly instead of falling back); the sequence
tests run both.

References: the CPU operator run in float64 on the same (rounded) values; torch.nn.RNN /
nn.RNNCell on cuDNN with TF32 off; torch.library.opcheck.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import rnn_ext
from cuda_cases import REL_TOL, capture_graph, make_args, rel_err
from rnn_ext import ops

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not rnn_ext.has_cuda_kernels(), reason="rnn_ext built without CUDA"),
]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
MODES = ["off", "require"]  # cuBLAS step loop, persistent kernel


def assert_close_rel(got, ref, dtype, what=""):
    err = rel_err(got, ref)
    assert err <= REL_TOL[dtype], f"{what}: relative error {err:.3e} > {REL_TOL[dtype]:.1e}"


@pytest.fixture(autouse=True)
def _no_tf32():
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture
def mode(request, monkeypatch):
    monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", request.param)
    return request.param


_SMALL_REQUEST = 1 << 20  # the caching allocator serves requests up to 1 MiB from its small pool


def poison_cuda_allocator():
    """Fill the caching allocator's free memory with all-ones bytes, which read as NaN in every
    floating dtype (float64/32/16, bfloat16), so that an output element the kernel never writes
    reads NaN (the ops allocate their outputs with at::empty).

    First fresh segments in both pools (64 x 512 KiB small, 8 x 16 MiB large); then every free
    block left beside live tensors in older segments, which the allocator's best fit would hand
    out first: largest first, each request exactly a free block's size (a small segment's free
    block above 1 MiB in pieces of at most 1 MiB), from torch.cuda.memory_snapshot(). Only the
    current stream's blocks (the allocator keeps free blocks per stream). A request above
    16 MiB that no free block holds gets a fresh segment, which is not poisoned."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    ones = dict(dtype=torch.int8, device="cuda")
    held = [torch.full((1 << 19,), -1, **ones) for _ in range(64)]  # small pool
    held += [torch.full((1 << 24,), -1, **ones) for _ in range(8)]  # large pool
    free = []
    device, stream = torch.cuda.current_device(), torch.cuda.current_stream().cuda_stream
    for seg in torch.cuda.memory_snapshot():
        if seg["device"] != device or seg["stream"] != stream:
            continue
        for b in seg["blocks"]:
            if b["state"] != "inactive":
                continue
            size = b["size"]
            while seg["segment_type"] == "small" and size > _SMALL_REQUEST:
                free.append(_SMALL_REQUEST)
                size -= _SMALL_REQUEST
            free.append(size)
    for size in sorted(free, reverse=True):
        held.append(torch.full((size,), -1, **ones))
    torch.cuda.synchronize()
    del held


def to(t, device, dtype=None, grad=False):
    if t is None:
        return None
    t = t.to(device=device, dtype=dtype if dtype is not None else t.dtype).detach()
    return t.requires_grad_(grad)


def run_seq(args, device, dtype=None, nonlinearity="tanh", reverse=False, lengths=None,
            gy=None, ghn=None):
    """Forward and backward of rnn_ext.elman_rnn; returns (output, h_n, grads)."""
    leaves = [to(a, device, dtype, grad=True) for a in args]
    out, hn = rnn_ext.elman_rnn(*leaves, nonlinearity=nonlinearity, reverse=reverse,
                                lengths=lengths)
    loss = (out * to(gy, device, out.dtype)).sum() + (hn * to(ghn, device, hn.dtype)).sum()
    loss.backward()
    return out, hn, [leaf.grad if leaf is not None else None for leaf in leaves]


LOW_PRECISION = (torch.float16, torch.bfloat16)


def isolated_grads(args, out, gy, ghn, nonlinearity="tanh", reverse=False, lengths=None):
    """The backward alone in float64 on the CPU, given the forward's `out` from the device.

    For float16/bfloat16 the end-to-end float64 reference is ill-conditioned for the gradients:
    a relu pre-activation next to 0 can change sign under the forward's rounding, and 1 - h^2
    magnifies the rounding of h near +-1, so a correct kernel can miss it by 10-20%. Given the
    same `out`, both sides use the same activation pattern and the backward's own error shows.
    Returns the gradients in the order of `args` (bias grads only when `args` has biases).
    """
    x, h0, wih, whh, bih, _ = [None if a is None else a.detach().cpu().double() for a in args]
    gx, gh0, gwih, gwhh, gb = torch.ops.rnn_ext.elman_backward(
        gy.double(), ghn.double(), x, h0, wih, whh, out.detach().cpu().double(), nonlinearity,
        reverse, None if lengths is None else lengths.cpu())
    return [gx, gh0, gwih, gwhh] + ([gb, gb] if bih is not None else [])


def grads_like(T, B, H, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    gy = (torch.rand(T, B, H, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    ghn = (torch.rand(B, H, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    return gy, ghn


SHAPES = [
    # (T, B, I, H)
    (5, 3, 4, 7),
    (1, 2, 3, 5),  # T = 1
    (6, 1, 5, 33),  # B = 1, H not a multiple of 32
    (4, 5, 8, 70),
    (3, 2, 3, 300),  # K split over many lanes
    (3, 1, 2, 1),  # B = 1, H = 1: only the smallest block tiles give a launch plan
]


@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_sequence_against_cpu_float64(mode, dtype, shape, nonlinearity):
    T, B, I, H = shape
    args = make_args(T, B, I, H, dtype, seed=sum(shape) + len(nonlinearity))
    gy, ghn = grads_like(T, B, H, dtype)
    poison_cuda_allocator()
    out, hn, grads = run_seq(args, "cuda", nonlinearity=nonlinearity, gy=gy, ghn=ghn)
    assert out.dtype == dtype and hn.dtype == dtype
    r_out, r_hn, r_grads = run_seq(args, "cpu", torch.float64, nonlinearity=nonlinearity, gy=gy,
                                   ghn=ghn)
    assert_close_rel(out, r_out, dtype, "output")
    assert_close_rel(hn, r_hn, dtype, "h_n")
    if dtype in LOW_PRECISION:
        r_grads = isolated_grads(args, out, gy, ghn, nonlinearity)
    for name, g, r in zip(["input", "h_0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"],
                          grads, r_grads):
        assert g.dtype == dtype
        assert_close_rel(g, r, dtype, f"grad {name}")


@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_lengths_and_reverse(mode, dtype, reverse, nonlinearity):
    T, B, I, H = 7, 5, 3, 37
    args = make_args(T, B, I, H, dtype, seed=7)
    lengths = torch.tensor([7, 1, 4, 7, 2])
    gy, ghn = grads_like(T, B, H, dtype)
    poison_cuda_allocator()
    for lens in (lengths, lengths.cuda()):
        out, hn, grads = run_seq(args, "cuda", nonlinearity=nonlinearity, reverse=reverse,
                                 lengths=lens, gy=gy, ghn=ghn)
        r_out, r_hn, r_grads = run_seq(args, "cpu", torch.float64, nonlinearity=nonlinearity,
                                       reverse=reverse, lengths=lengths, gy=gy, ghn=ghn)
        for b, n in enumerate(lengths.tolist()):
            assert (out[n:, b] == 0).all(), "padded steps must output exactly 0"
        assert_close_rel(out, r_out, dtype, "output")
        assert_close_rel(hn, r_hn, dtype, "h_n")
        if dtype in LOW_PRECISION:
            r_grads = isolated_grads(args, out, gy, ghn, nonlinearity, reverse, lengths)
        for g, r in zip(grads, r_grads):
            assert_close_rel(g, r, dtype, "grad")


@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_nan_input_propagates_as_nn_rnn(mode, nonlinearity):
    """A NaN in the input: relu(NaN) is NaN, not 0, and relu's backward passes the gradient where
    the output is NaN, as nn.RNN (the CPU op, checked against nn.RNN in test_elman_ops.py)."""
    T, B, I, H = 4, 3, 2, 5
    args = list(make_args(T, B, I, H, torch.float64, seed=11))
    args[0][1, 1, 0] = float("nan")
    gy, ghn = grads_like(T, B, H, torch.float64)
    out, hn, grads = run_seq(args, "cuda", nonlinearity=nonlinearity, gy=gy, ghn=ghn)
    r_out, r_hn, r_grads = run_seq(args, "cpu", nonlinearity=nonlinearity, gy=gy, ghn=ghn)
    assert torch.isnan(out[2:, 1]).all()
    for got, ref in zip([out, hn, *grads], [r_out, r_hn, *r_grads]):
        torch.testing.assert_close(got.cpu(), ref, equal_nan=True, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths_on", ["cpu", "cuda"])
def test_nan_padding_is_never_read(mode, reverse, lengths_on):
    """NaN in the padded steps' input: every gradient finite and equal to the CPU op's (itself
    checked against nn.RNN on a PackedSequence in test_elman_ops.py)."""
    T, B, I, H = 5, 3, 4, 37
    args = list(make_args(T, B, I, H, torch.float64, seed=12))
    lengths = torch.tensor([5, 2, 3])
    for b, n in enumerate(lengths.tolist()):
        args[0][n:, b] = float("nan")
    gy, ghn = grads_like(T, B, H, torch.float64)
    out, hn, grads = run_seq(args, "cuda", reverse=reverse, lengths=lengths.to(lengths_on),
                             gy=gy, ghn=ghn)
    r_out, r_hn, r_grads = run_seq(args, "cpu", reverse=reverse, lengths=lengths, gy=gy,
                                   ghn=ghn)
    for got, ref in zip([out, hn, *grads], [r_out, r_hn, *r_grads]):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.cpu(), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_long_sequence_float32(mode):
    """Many steps and a multi-block grid: any missing barrier or stale read shows here."""
    T, B, I, H = 200, 9, 16, 130
    args = make_args(T, B, I, H, torch.float32, seed=3)
    gy, ghn = grads_like(T, B, H, torch.float32)
    out, hn, grads = run_seq(args, "cuda", gy=gy, ghn=ghn)
    r_out, r_hn, r_grads = run_seq(args, "cpu", torch.float64, gy=gy, ghn=ghn)
    assert_close_rel(out, r_out, torch.float32, "output")
    assert_close_rel(hn, r_hn, torch.float32, "h_n")
    for g, r in zip(grads, r_grads):
        assert rel_err(g, r) < 1e-4


@pytest.mark.parametrize("shape", [(3, 64, 32, 256), (2, 130, 8, 96), (2, 4, 8, 1030)], ids=str)
def test_persistent_equals_cublas(shape, monkeypatch):
    """The two CUDA paths agree on shapes that exercise different launch plans."""
    T, B, I, H = shape
    args = make_args(T, B, I, H, torch.float32, seed=11)
    gy, ghn = grads_like(T, B, H, torch.float32)
    results = {}
    for m in MODES:
        monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", m)
        poison_cuda_allocator()
        results[m] = run_seq(args, "cuda", gy=gy, ghn=ghn)
    a, b = results["off"], results["require"]
    assert rel_err(a[0], b[0]) < 1e-5 and rel_err(a[1], b[1]) < 1e-5
    for ga, gb in zip(a[2], b[2]):
        assert rel_err(ga, gb) < 1e-4


@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("use", ["output", "h_n", "output.sum"])
def test_unused_outputs_and_broadcast_grads(mode, use):
    """Gradients when only one output is used (autograd passes no gradient for the other: the
    kernels get a broadcast zero) or when the gradient is a stride-0 broadcast (out.sum())."""
    T, B, I, H = 5, 3, 4, 37
    args = make_args(T, B, I, H, torch.float32, seed=29)
    gy, ghn = grads_like(T, B, H, torch.float32)
    res = {}
    for dev, dt in (("cuda", torch.float32), ("cpu", torch.float64)):
        leaves = [to(a, dev, dt, grad=True) for a in args]
        out, hn = rnn_ext.elman_rnn(*leaves, lengths=torch.tensor([5, 2, 4]))
        if use == "output":
            loss = (out * to(gy, dev, dt)).sum()
        elif use == "h_n":
            loss = (hn * to(ghn, dev, dt)).sum()
        else:
            loss = out.sum()
        if dev == "cuda":
            poison_cuda_allocator()
        loss.backward()
        res[dev] = [leaf.grad for leaf in leaves]
    for g, r in zip(res["cuda"], res["cpu"]):
        assert_close_rel(g, r, torch.float32, f"grad ({use} used)")


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_gradgradcheck_float64(mode):
    """Double backward on CUDA (a recomputation in ATen ops) against finite differences."""
    T, B, I, H = 3, 2, 3, 4
    args = [to(a, "cuda", torch.float64, grad=True) for a in make_args(T, B, I, H,
                                                                        torch.float64, seed=31)]
    lengths = torch.tensor([3, 1])

    def f(*a):
        return rnn_ext.elman_rnn(*a, lengths=lengths)

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)
    cell_args = [args[0][0].detach().requires_grad_(), *args[1:]]
    assert torch.autograd.gradgradcheck(lambda *a: rnn_ext.elman_cell(*a, nonlinearity="relu"),
                                        cell_args)


@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("shape", [(4, 0, 4, 5), (4, 3, 0, 5), (4, 3, 4, 0)], ids=str)
def test_empty_sizes(mode, shape):
    """B, I or H = 0: the same shapes and values as the CPU operator, no launch error; T = 0 is
    the CPU operator's (and nn.RNN's) error."""
    T, B, I, H = shape
    args = make_args(T, B, I, H, torch.float32, seed=37, scale=0.5)
    gy, ghn = grads_like(T, B, H, torch.float32)
    out, hn, grads = run_seq(args, "cuda", gy=gy, ghn=ghn)
    r_out, r_hn, r_grads = run_seq(args, "cpu", torch.float64, gy=gy, ghn=ghn)
    with pytest.raises(ValueError, match="sequence length T larger than 0"):
        rnn_ext.elman_rnn(*[to(a, "cuda") for a in make_args(0, B, I, H, torch.float32, scale=1)])
    for a, b in zip([out, hn, *grads], [r_out, r_hn, *r_grads]):
        assert a.shape == b.shape
        torch.testing.assert_close(a.detach().double().cpu(), b.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_side_stream(mode):
    """The kernels run on the current stream: on a side stream, with the input written there
    after a long GEMM chain, the results are those of the default stream. (Kernels launched on
    another stream would not wait for that write and would read an unwritten input.)"""
    T, B, I, H = 20, 4, 8, 64
    args = [to(a, "cuda") for a in make_args(T, B, I, H, torch.float32, seed=41)]
    ref_out, ref_hn = rnn_ext.elman_rnn(*args)
    ref_hy = rnn_ext.elman_cell(args[0][0], *args[1:])
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        busy = torch.randn(4096, 4096, device="cuda")
        for _ in range(10):  # tens of milliseconds of work queued before the input is written
            busy = busy @ busy / 4096 ** 0.5
        x = torch.full_like(args[0], math.nan)
        x.copy_(args[0] + 0 * busy[0, 0])
        out, hn = rnn_ext.elman_rnn(x, *args[1:])
        hy = rnn_ext.elman_cell(x[0], *args[1:])
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for got, ref in ((out, ref_out), (hn, ref_hn), (hy, ref_hy)):
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


def test_require_reports_when_no_plan_fits(monkeypatch):
    monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", "require")
    H = 4096  # W_hh in float64 is 128 MiB: more than all shared memory of any GPU
    args = [to(a, "cuda") for a in make_args(2, 2, 3, H, torch.float64)]
    with pytest.raises(RuntimeError, match="persistent kernel cannot run"):
        rnn_ext.elman_rnn(*args)
    monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", "auto")  # falls back to cuBLAS
    out, hn = rnn_ext.elman_rnn(*args)
    ref_out, ref_hn = rnn_ext.elman_rnn(*[to(a, "cpu") for a in args])
    assert rel_err(out, ref_out) < 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H", [(512, 256), (64, 512), (8, 256), (64, 1024), (1, 1), (3, 37)])
def test_cuda_persistent_plan(dtype, B, H):
    """The plan the planner reports is one the device can run (its grid resident at once, its
    shared memory within the block's limit, its tiles covering B x H), and with it `require`
    runs the persistent kernel; where no plan is reported, `require` raises."""
    prop = torch.cuda.get_device_properties(0)
    for backward in (False, True):
        plan = ops.cuda_persistent_plan(B, H, dtype, backward=backward)
        if plan is None:
            # The limits in csrc/cuda/README.md are estimated for an H100/H200 (132 SMs,
            # 227 KiB of shared memory per block); a smaller GPU or a MIG slice may have less.
            big = prop.multi_processor_count >= 132 and \
                prop.shared_memory_per_block_optin >= 227 * 1024
            assert not big or (dtype == torch.float64 and B * H >= 64 * 1024), (
                f"no plan for {dtype}, B = {B}, H = {H}, where the estimated limits "
                f"(csrc/cuda/README.md) have one")
            continue
        assert plan["blocks"] == plan["nbt"] * plan["njt"] <= 4 * prop.multi_processor_count
        assert plan["bt"] == plan["gb"] * plan["rb"] and plan["jt"] == plan["gj"] * plan["rj"]
        assert plan["gb"] * plan["gj"] * plan["ks"] == 256
        assert plan["nbt"] * plan["bt"] >= B > (plan["nbt"] - 1) * plan["bt"]
        assert plan["njt"] * plan["jt"] >= H > (plan["njt"] - 1) * plan["jt"]
        elt = 8 if dtype == torch.float64 else 4
        assert H * plan["jt"] * elt <= plan["smem"] <= prop.shared_memory_per_block_optin
    args = [to(a, "cuda") for a in make_args(2, B, 3, H, dtype)]
    fits = ops.cuda_persistent_plan(B, H, dtype) is not None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RNN_EXT_CUDA_PERSISTENT", "require")
        if fits:
            rnn_ext.elman_rnn(*args)
        else:
            with pytest.raises(RuntimeError, match="persistent kernel cannot run"):
                rnn_ext.elman_rnn(*args)


def test_cuda_persistent_plan_errors():
    assert ops.cuda_persistent_plan(2, 4096, torch.float64) is None  # 128 MiB of W_hh
    with pytest.raises(ValueError, match="device must be a CUDA device, got cpu"):
        ops.cuda_persistent_plan(2, 8, device="cpu")
    with pytest.raises(ValueError, match="dtype must be float32.*got torch.int64"):
        ops.cuda_persistent_plan(2, 8, torch.int64)
    with pytest.raises(ValueError, match="B and H must be >= 1, got B = 0, H = 8"):
        ops.cuda_persistent_plan(0, 8)


def test_grid_barrier_loop():
    """The barrier microbenchmark of bench_cuda.py counts its barriers and every epoch check
    holds, on one block, one per SM, the largest grid the device keeps resident (the bound its
    error names) and a plan-sized shared memory; it rejects what it cannot launch."""
    import re

    op = torch.ops.rnn_ext._grid_barrier_loop
    prop = torch.cuda.get_device_properties(0)
    sms, smem_max = prop.multi_processor_count, prop.shared_memory_per_block_optin
    counter = torch.zeros(2, dtype=torch.int64, device="cuda")
    op(counter, 1, 5)
    op(counter, sms, 1000)
    op(counter, sms, 0)
    op(counter, sms, 100, smem_max)  # one block per SM
    assert counter.tolist() == [1105, 0]
    with pytest.raises(ValueError, match=r"blocks must be in \[1, \d+\].*got 1000000") as e:
        op(counter, 1_000_000, 1)
    most = int(re.search(r"blocks must be in \[1, (\d+)\]", str(e.value)).group(1))
    assert most >= sms
    op(counter, most, 100)
    assert counter.tolist() == [1205, 0]
    with pytest.raises(ValueError, match=rf"blocks must be in \[1, {sms}\].*got {sms + 1}"):
        op(counter, sms + 1, 1, smem_max)
    with pytest.raises(ValueError, match=r"blocks must be in \[1, \d+\].*got 0"):
        op(counter, 0, 1)
    with pytest.raises(ValueError, match="iters must be >= 0, got -1"):
        op(counter, 1, -1)
    with pytest.raises(ValueError, match=rf"smem must be in \[0, {smem_max}\] bytes.*got -1"):
        op(counter, 1, 1, -1)
    with pytest.raises(ValueError, match="counter must be a contiguous int64 tensor with at "
                                         "least 2 elements"):
        op(counter[:1], 1, 1)
    with pytest.raises(ValueError, match="counter must be a contiguous int64 tensor"):
        op(counter.float(), 1, 1)
    assert counter.tolist() == [1205, 0]


def test_bad_mode_value(monkeypatch):
    monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", "fast")
    args = [to(a, "cuda") for a in make_args(2, 2, 3, 4, torch.float32)]
    with pytest.raises(ValueError, match="RNN_EXT_CUDA_PERSISTENT"):
        rnn_ext.elman_rnn(*args)
    with pytest.raises(ValueError, match="unknown mode"):
        ops.set_cuda_persistent("fast")


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_non_contiguous_inputs(mode):
    T, B, I, H = 4, 3, 5, 6
    x, h0, wih, whh, bih, bhh = make_args(T, B, I, H, torch.float32, seed=5)
    dev = "cuda"
    x_nc = x.transpose(0, 1).contiguous().to(dev).transpose(0, 1)  # (T, B, I) view of (B, T, I)
    h0_nc = torch.stack([h0, h0], 2).to(dev)[:, :, 0]
    wih_nc = wih.t().contiguous().to(dev).t()
    whh_nc = whh.t().contiguous().to(dev).t()
    b_nc = torch.stack([bih, bhh], 1).to(dev)
    assert not (x_nc.is_contiguous() or h0_nc.is_contiguous() or whh_nc.is_contiguous())
    out, hn = rnn_ext.elman_rnn(x_nc, h0_nc, wih_nc, whh_nc, b_nc[:, 0], b_nc[:, 1])
    ref_out, ref_hn = rnn_ext.elman_rnn(x.double(), h0.double(), wih.double(), whh.double(),
                                        bih.double(), bhh.double())
    assert_close_rel(out, ref_out, torch.float32)
    assert_close_rel(hn, ref_hn, torch.float32)
    # Non-contiguous grad_output through the backward op.
    gy = torch.randn(B, T, H, device=dev, dtype=torch.float64).transpose(0, 1)
    args64 = [a.double().cuda() for a in (x, h0, wih, whh)]
    out64, _ = rnn_ext.elman_rnn(*args64)
    res = torch.ops.rnn_ext.elman_backward(gy, torch.zeros(B, H, device=dev, dtype=torch.float64),
                                           *args64, out64, "tanh", False, None)
    ref = torch.ops.rnn_ext.elman_backward(gy.cpu(), torch.zeros(B, H, dtype=torch.float64),
                                           *[a.cpu() for a in args64], out64.cpu(), "tanh", False,
                                           None)
    for a, b in zip(res, ref):
        assert rel_err(a, b) < 1e-12


def _nn_rnn(I, H, nonlinearity, bias, args, dtype, device="cuda"):
    x, h0, wih, whh, bih, bhh = args
    rnn = nn.RNN(I, H, nonlinearity=nonlinearity, bias=bias).to(device=device, dtype=dtype)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(wih)
        rnn.weight_hh_l0.copy_(whh)
        if bias:
            rnn.bias_ih_l0.copy_(bih)
            rnn.bias_hh_l0.copy_(bhh)
    return rnn


@pytest.mark.parametrize("mode", MODES, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_against_cudnn_rnn(mode, dtype, bias, nonlinearity):
    T, B, I, H = 6, 4, 5, 45
    args = make_args(T, B, I, H, dtype, bias=bias, seed=13)
    gy, ghn = grads_like(T, B, H, dtype)
    try:
        rnn = _nn_rnn(I, H, nonlinearity, bias, args, dtype)
        x = to(args[0], "cuda", grad=True)
        h0 = to(args[1], "cuda", grad=True)
        r_out, r_hn = rnn(x, h0.unsqueeze(0))
    except RuntimeError as e:  # cuDNN without this dtype
        pytest.skip(f"nn.RNN on CUDA does not run in {dtype}: {e}")
    r_hn = r_hn.squeeze(0)
    ((r_out * gy.cuda()).sum() + (r_hn * ghn.cuda()).sum()).backward()
    out, hn, grads = run_seq(args, "cuda", nonlinearity=nonlinearity, gy=gy, ghn=ghn)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2,
           torch.bfloat16: 5e-2}[dtype]
    assert rel_err(out, r_out) < tol
    assert rel_err(hn, r_hn) < tol
    ref_grads = [x.grad, h0.grad, rnn.weight_ih_l0.grad, rnn.weight_hh_l0.grad]
    if bias:
        ref_grads += [rnn.bias_ih_l0.grad, rnn.bias_hh_l0.grad]
    if dtype in LOW_PRECISION:
        # Both against float64: the gradients in 16 bits depend on where the forward's rounding
        # flipped a relu or moved h near +-1 (see isolated_grads), which differs between cuDNN
        # and us; ours must be about as close to the exact gradients as cuDNN's, or closer.
        # And the backward itself is exact to 16-bit rounding given our forward's output.
        _, _, grads64 = run_seq(args, "cpu", torch.float64, nonlinearity=nonlinearity, gy=gy,
                                ghn=ghn)
        exact = isolated_grads(args, out, gy, ghn, nonlinearity)
        for g, r, g64, e in zip(grads, ref_grads, grads64, exact):
            assert rel_err(g, g64) < min(0.35, max(2 * tol, 2 * rel_err(r, g64)))
            assert_close_rel(g, e, dtype, "grad given our output")
        return
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) < 2 * tol


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_lengths_against_cudnn_packed(mode):
    T, B, I, H = 6, 4, 3, 20
    dtype = torch.float32
    args = make_args(T, B, I, H, dtype, seed=17)
    lengths = torch.tensor([6, 2, 5, 1])
    rnn = _nn_rnn(I, H, "tanh", True, args, dtype)
    x = args[0].cuda()
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    r_out, r_hn = rnn(packed, args[1].cuda().unsqueeze(0))
    r_out, _ = nn.utils.rnn.pad_packed_sequence(r_out, total_length=T)
    out, hn = rnn_ext.elman_rnn(*[to(a, "cuda") for a in args], lengths=lengths.cuda())
    assert rel_err(out, r_out) < 1e-5
    assert rel_err(hn, r_hn.squeeze(0)) < 1e-5


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("B", [1, 6])
def test_cell(dtype, nonlinearity, B):
    I, H = 5, 33
    x, h0, wih, whh, bih, bhh = make_args(1, B, I, H, dtype, seed=19)
    args = [x[0], h0, wih, whh, bih, bhh]
    g = torch.randn(B, H, dtype=torch.float64, generator=torch.Generator().manual_seed(B)).to(dtype)
    poison_cuda_allocator()
    leaves = [to(a, "cuda", grad=True) for a in args]
    hy = rnn_ext.elman_cell(*leaves, nonlinearity=nonlinearity)
    (hy * g.cuda()).sum().backward()
    leaves64 = [to(a, "cpu", torch.float64, grad=True) for a in args]
    hy64 = rnn_ext.elman_cell(*leaves64, nonlinearity=nonlinearity)
    (hy64 * g.double()).sum().backward()
    assert_close_rel(hy, hy64, dtype, "hy")
    ref_grads = [b.grad for b in leaves64]
    if dtype in LOW_PRECISION:  # the backward alone, given our hy (see isolated_grads)
        gx, ghx, gwih, gwhh, gb = torch.ops.rnn_ext.elman_cell_backward(
            g.double(), *[a.double() for a in args[:4]], hy.detach().cpu().double(),
            nonlinearity)
        ref_grads = [gx, ghx, gwih, gwhh, gb, gb]
    for a, b in zip(leaves, ref_grads):
        assert_close_rel(a.grad, b, dtype, "grad")
    if dtype in (torch.float32, torch.float64):
        cell = nn.RNNCell(I, H, nonlinearity=nonlinearity).to("cuda", dtype)
        with torch.no_grad():
            for p, v in zip(cell.parameters(), [wih, whh, bih, bhh]):
                p.copy_(v)
        ref = cell(args[0].cuda(), h0.cuda())
        assert rel_err(hy, ref) < (1e-5 if dtype == torch.float32 else 1e-12)


def test_device_mismatch_error():
    x, h0, wih, whh, bih, bhh = make_args(2, 2, 3, 4, torch.float32)
    with pytest.raises(RuntimeError, match="h_0 on device"):
        rnn_ext.elman_rnn(x.cuda(), h0, wih.cuda(), whh.cuda())
    with pytest.raises(RuntimeError, match="weight_hh on device"):
        rnn_ext.elman_rnn(x.cuda(), h0.cuda(), wih.cuda(), whh)
    with pytest.raises(RuntimeError, match="hx on device"):
        rnn_ext.elman_cell(x[0].cuda(), h0, wih.cuda(), whh.cuda())


def test_errors_match_cpu():
    """The CUDA kernels call the shared checks: same message as on the CPU."""
    x, h0, wih, whh, _, _ = make_args(3, 2, 3, 4, torch.float32)
    bad = [
        (x, h0[:1], wih, whh, None, None, "tanh", False, None),
        (x, h0, wih, whh, None, None, "sigmoid", False, None),
        (x, h0, wih, whh, None, None, "tanh", False, torch.tensor([0, 3])),
        (x, h0, wih, whh, None, None, "tanh", False, torch.tensor([1, 4])),
    ]
    for args in bad:
        msgs = []
        for dev in ("cpu", "cuda"):
            moved = [a.to(dev) if isinstance(a, torch.Tensor) and a.dtype != torch.int64 else a
                     for a in args]
            with pytest.raises((RuntimeError, ValueError)) as info:
                torch.ops.rnn_ext.elman_forward(*moved)
            msgs.append(str(info.value).splitlines()[0].replace("cuda:0", "DEV").replace(
                "cpu", "DEV"))
        assert msgs[0] == msgs[1]


def test_opcheck_cuda():
    """opcheck on CUDA (default mode "auto": the persistent kernel for these sizes)."""
    T, B, I, H = 3, 2, 4, 5
    args = [to(a, "cuda", grad=True) for a in make_args(T, B, I, H, torch.float32)]
    torch.library.opcheck(torch.ops.rnn_ext.elman_forward.default,
                          (*args, "tanh", False, None))
    torch.library.opcheck(torch.ops.rnn_ext.elman_forward.default,
                          (*args, "relu", True, torch.tensor([3, 1], device="cuda")))
    out, hn = rnn_ext.elman_rnn(*[a.detach() for a in args])
    torch.library.opcheck(
        torch.ops.rnn_ext.elman_backward.default,
        (torch.randn_like(out), torch.randn_like(hn), *[a.detach() for a in args[:4]], out,
         "tanh", False, None))
    cell_args = [args[0][0].detach().requires_grad_(), *args[1:]]
    torch.library.opcheck(torch.ops.rnn_ext.elman_cell_forward.default, (*cell_args, "tanh"))


def test_torch_compile():
    args = [to(a, "cuda") for a in make_args(5, 3, 4, 6, torch.float32)]

    def f(x, h0, wih, whh, bih, bhh):
        out, hn = rnn_ext.elman_rnn(x, h0, wih, whh, bih, bhh, "tanh")
        return out.sum(0) * 2 + hn

    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(*args), f(*args))
    leaves = [a.clone().requires_grad_() for a in args]
    compiled(*leaves).sum().backward()
    leaves2 = [a.clone().requires_grad_() for a in args]
    f(*leaves2).sum().backward()
    for a, b in zip(leaves, leaves2):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("ac_dtype", [torch.float16, torch.bfloat16], ids=str)
def test_autocast_like_nn_rnn(ac_dtype):
    T, B, I, H = 5, 3, 4, 16
    args = make_args(T, B, I, H, torch.float32, seed=23)
    rnn = _nn_rnn(I, H, "tanh", True, args, torch.float32)
    x = args[0].cuda()
    h0 = args[1].cuda()
    leaves = [to(a, "cuda", grad=True) for a in args]
    with torch.autocast("cuda", dtype=ac_dtype):
        r_out, r_hn = rnn(x, h0.unsqueeze(0))
        out, hn = rnn_ext.elman_rnn(*leaves)
        hy = rnn_ext.elman_cell(leaves[0][0], *leaves[1:])
    assert out.dtype == r_out.dtype == ac_dtype
    assert hn.dtype == r_hn.dtype
    assert hy.dtype == ac_dtype
    assert rel_err(out, r_out) < 3e-2
    (out.float().sum() + hn.float().sum()).backward()
    for leaf in leaves:
        assert leaf.grad is not None and leaf.grad.dtype == torch.float32
    # float64 is not cast, as for nn.RNN.
    args64 = [to(a, "cuda", torch.float64) for a in args]
    with torch.autocast("cuda", dtype=ac_dtype):
        out64, _ = rnn_ext.elman_rnn(*args64)
    assert out64.dtype == torch.float64


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_poison_is_effective(dtype):
    """poison_cuda_allocator really hands NaN-filled memory to the next torch.empty, in every
    dtype and size class, also where live tensors have left free fragments in their segments
    (which the allocator's best fit hands out before fresh blocks), so the poisoning in the
    tests above can catch unwritten elements."""
    g = torch.Generator().manual_seed(0)
    sizes = torch.randint(1, 1 << 18, (200,), generator=g).tolist()
    scratch = [torch.zeros(n, dtype=torch.float32, device="cuda") for n in sizes]
    live = scratch[::2]  # every other one freed: zero-filled holes beside live tensors
    del scratch
    poison_cuda_allocator()
    for n in [1, 100, 1000, 10_000, 100_000, 1 << 20]:  # up to 8 MiB
        t = torch.empty(n, device="cuda", dtype=dtype)
        assert torch.isnan(t).all(), f"torch.empty({n}) after poisoning holds non-NaN values"
    del live


# ---------------------------------------------------------------------------------------------
# Sequence losses (csrc/cuda/seq_nll_cuda.cu) against the CPU kernels. tests/test_loss.py also
# runs all of its tests on CUDA when the CUDA kernels are present.

LOSS_OPS = {
    "nll": (torch.ops.rnn_ext.seq_nll_loss_forward, torch.ops.rnn_ext.seq_nll_loss_backward),
    "ce": (torch.ops.rnn_ext.seq_cross_entropy_forward,
           torch.ops.rnn_ext.seq_cross_entropy_backward),
}
LOSS_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3,
            torch.bfloat16: 1e-2}


def _loss_case(kind, T, B, C, dtype, batch_first, seed=0, p_ignore=0.2, ignore_index=-100,
               target_dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, C, generator=g, dtype=torch.float64) * 2
    if kind == "nll":
        x = x.log_softmax(-1)
    x = x.to(dtype)
    tgt = torch.randint(0, C, (B, T) if batch_first else (T, B), generator=g)
    drop = torch.rand(tgt.shape, generator=g) < p_ignore
    tgt = torch.where(drop, torch.full_like(tgt, ignore_index), tgt).to(target_dtype)
    w = torch.rand(C, generator=g, dtype=torch.float64).to(dtype)
    return x, tgt, w


@pytest.mark.parametrize("kind", ["nll", "ce"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("weighted", [True, False])
def test_losses_against_cpu(kind, dtype, reduction, batch_first, weighted):
    T, B, C = 7, 5, 85
    x, tgt, w = _loss_case(kind, T, B, C, dtype, batch_first, seed=T + B)
    w = w if weighted else None
    fwd, bwd = LOSS_OPS[kind]
    poison_cuda_allocator()
    res = {}
    for dev in ("cpu", "cuda"):
        args = (x.to(dev), tgt.to(dev), None if w is None else w.to(dev), -100, reduction,
                batch_first)
        out = fwd(*args)
        grad_loss = torch.linspace(-1, 1, out[0].numel(), dtype=torch.float64).reshape(
            out[0].shape).to(dtype).to(dev)
        gx = bwd(grad_loss, *args, *out[1:])  # the statistics: total_weight; ce: m, log_sum too
        res[dev] = (*out, gx)
    for a, b in zip(res["cuda"], res["cpu"]):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert rel_err(a, b) <= LOSS_TOL[dtype]


@pytest.mark.parametrize("kind", ["nll", "ce"])
def test_losses_strided_and_uint8(kind):
    T, B, C = 6, 4, 30
    x, tgt, w = _loss_case(kind, T, B, C, torch.float32, True, seed=3, p_ignore=0.0,
                           target_dtype=torch.uint8)
    fwd, bwd = LOSS_OPS[kind]
    x_nc = x.transpose(0, 1).contiguous().cuda().transpose(0, 1)  # (T, B, C) view, not contiguous
    x_nc2 = torch.stack([x, x], 3).cuda()[..., 0]  # stride 2 along C
    tgt_nc = tgt.t().contiguous().cuda().t()  # (B, T) view of a (T, B) tensor
    assert not (x_nc.is_contiguous() or x_nc2.is_contiguous() or tgt_nc.is_contiguous())
    ref = fwd(x, tgt.long(), w, -100, "none", True)
    for xx in (x_nc, x_nc2):
        out = fwd(xx, tgt_nc, w.cuda(), -100, "none", True)
        for a, b in zip(out, ref):
            assert rel_err(a, b) < 1e-5


def test_losses_opcheck_cuda():
    for kind in ("nll", "ce"):
        x, tgt, w = _loss_case(kind, 4, 3, 6, torch.float32, True, seed=5)
        x = x.cuda().requires_grad_()
        fwd, _ = LOSS_OPS[kind]
        for reduction in ("none", "mean"):
            torch.library.opcheck(fwd.default, (x, tgt.cuda(), w.cuda(), -100, reduction, True))


@pytest.mark.parametrize("kind", ["nll", "ce"])
def test_losses_cuda_graph_capture(kind):
    """The loss ops make no host read-back while the stream is captured (their bad-target check
    moves to the device then), so forward and backward can be put in a CUDA graph; the graph's
    replay on new values equals the eager call. Reference: the eager op on the same values."""
    fn = {"nll": rnn_ext.seq_nll_loss, "ce": rnn_ext.seq_cross_entropy}[kind]
    x, tgt, w = _loss_case(kind, 5, 4, 11, torch.float32, True, seed=7)
    x2, tgt2, _ = _loss_case(kind, 5, 4, 11, torch.float32, True, seed=8)
    static_x = x.cuda().requires_grad_()
    static_tgt, w = tgt.cuda(), w.cuda()

    def step():
        loss = fn(static_x, static_tgt, weight=w)
        (grad,) = torch.autograd.grad(loss, static_x)
        return loss, grad

    graph, (loss, grad) = capture_graph(step)
    with torch.no_grad():
        static_x.copy_(x2.cuda())
        static_tgt.copy_(tgt2.cuda())
    graph.replay()
    torch.cuda.synchronize()
    ref_x = x2.cuda().requires_grad_()
    ref_loss = fn(ref_x, tgt2.cuda(), weight=w)
    (ref_grad,) = torch.autograd.grad(ref_loss, ref_x)
    assert rel_err(loss, ref_loss) <= 1e-6
    assert rel_err(grad, ref_grad) <= 1e-6


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_sequence_cuda_graph_capture(mode):
    """elman_rnn with lengths on the device makes no host read-back while the stream is
    captured (the lengths check becomes a device-side assert), so forward and backward can be
    put in a CUDA graph, and the replay on new values equals the eager call. Lengths on the CPU
    cannot be copied to the device during capture: a clear error instead of a failed capture."""
    T, B, I, H = 6, 5, 4, 37
    args = [to(a, "cuda", grad=True) for a in make_args(T, B, I, H, torch.float32, seed=11)]
    new_args = [to(a, "cuda") for a in make_args(T, B, I, H, torch.float32, seed=12)]
    lengths = torch.tensor([6, 1, 3, 6, 2], device="cuda")
    gy, ghn = (g.cuda() for g in grads_like(T, B, H, torch.float32))

    def step(leaves, lens):
        out, hn = rnn_ext.elman_rnn(*leaves, lengths=lens)
        grads = torch.autograd.grad((out * gy).sum() + (hn * ghn).sum(), leaves)
        return out, hn, grads

    graph, (out, hn, grads) = capture_graph(lambda: step(args, lengths))
    new_lengths = torch.tensor([2, 6, 6, 1, 4], device="cuda")  # read from device memory
    with torch.no_grad():
        for a, n in zip(args, new_args):
            a.copy_(n)
        lengths.copy_(new_lengths)
    graph.replay()
    torch.cuda.synchronize()
    ref_out, ref_hn, ref_grads = step([a.detach().clone().requires_grad_() for a in new_args],
                                      new_lengths)
    assert rel_err(out, ref_out) <= 1e-6 and rel_err(hn, ref_hn) <= 1e-6
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) <= 1e-6
    cpu_lengths = new_lengths.cpu()  # before the capture: a device-to-host copy syncs
    with pytest.raises(RuntimeError, match="lengths is on cpu, but the current CUDA stream "
                                           "is being captured into a CUDA graph"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            rnn_ext.elman_rnn(*args, lengths=cpu_lengths)


_DEVICE_ASSERT_SCRIPT = r"""
import sys, torch, rnn_ext
kind, tests_dir = sys.argv[1:3]
sys.path.insert(0, tests_dir)
from cuda_cases import capture_graph
x = torch.randn(3, 2, 5, device="cuda")
if kind == "loss":
    static = torch.tensor([[1, 2, 3], [4, 0, -100]], device="cuda")
    run = lambda: rnn_ext.seq_cross_entropy(x, static)
    bad = torch.tensor([[1, 2, 3], [4, 9, -100]], device="cuda")
else:
    w_ih, w_hh, h0 = torch.randn(4, 5, device="cuda"), torch.randn(4, 4, device="cuda"), \
        torch.zeros(2, 4, device="cuda")
    static = torch.tensor([3, 2], device="cuda")
    run = lambda: rnn_ext.elman_rnn(x, h0, w_ih, w_hh, lengths=static)
    bad = torch.tensor([3, 0], device="cuda")
graph, _ = capture_graph(run)
graph.replay()
torch.cuda.synchronize()
print("valid replay ok", flush=True)
static.copy_(bad)
graph.replay()
torch.cuda.synchronize()
print("bad replay not stopped", flush=True)
"""


@pytest.mark.parametrize("kind", ["loss", "lengths"])
def test_capture_device_asserts_fire(kind, tmp_path):
    """Under CUDA-graph capture the target / lengths checks are device-side asserts: a replay
    with a bad value copied into the captured input stops with one (in a subprocess: a device
    assert ends the process's CUDA context), after a replay with valid values ran."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "device_assert.py"
    script.write_text(_DEVICE_ASSERT_SCRIPT)
    tests_dir = str(Path(__file__).resolve().parent)  # for cuda_cases.capture_graph
    res = subprocess.run([sys.executable, str(script), kind, tests_dir], capture_output=True,
                         text=True, timeout=300, cwd=str(tmp_path))
    assert "valid replay ok" in res.stdout, res.stderr[-3000:]
    assert "bad replay not stopped" not in res.stdout and res.returncode != 0, res.stdout
    assert "device-side assert" in res.stderr or "Assertion" in res.stderr, res.stderr[-3000:]
