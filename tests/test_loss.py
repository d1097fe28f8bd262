"""Tests of rnn_ext.seq_nll_loss / seq_cross_entropy (and their modules and operators).

Reference: the lesson's nll_loss_seq, i.e. F.nll_loss / F.cross_entropy on the flattened pair
(log_probs.view(-1, C), target.transpose(0, 1).contiguous().view(-1)). Every test runs on each
available device (CPU always; CUDA when a GPU and the CUDA kernels are present).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cuda_cases import confident_rows
from hypothesis import given, settings
from hypothesis import strategies as st

import rnn_ext

DEVICES = ["cpu"]
if torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "rnn_ext::seq_nll_loss_forward", "CUDA"
):
    DEVICES.append(pytest.param("cuda", marks=pytest.mark.cuda))

REDUCTIONS = ["none", "mean", "sum"]
KINDS = ["nll", "ce"]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def fused(kind):
    return rnn_ext.seq_nll_loss if kind == "nll" else rnn_ext.seq_cross_entropy


def lesson_reference(kind, inp, targ, weight=None, ignore_index=-100, reduction="mean",
                     target_batch_first=True):
    """The lesson's transpose-copy-flatten call (F.nll_loss or F.cross_entropy)."""
    sl, bs, nh = inp.size()
    t = targ.transpose(0, 1) if target_batch_first else targ
    t = t.contiguous().view(-1)
    loss_fn = F.nll_loss if kind == "nll" else F.cross_entropy
    out = loss_fn(inp.contiguous().view(-1, nh), t, weight, ignore_index=ignore_index,
                  reduction=reduction)
    if reduction == "none":
        out = out.view(sl, bs)
        if target_batch_first:
            out = out.t()
    return out


def make_input(kind, T, B, C, dtype, device, gen=None):
    x = torch.randn(T, B, C, dtype=dtype, device=device, generator=gen) * 2
    return x.log_softmax(-1) if kind == "nll" else x


def compare(kind, x, target, weight=None, ignore_index=-100, reduction="mean",
            target_batch_first=True, tol=None, x_ref=None):
    """Loss and gradient of the fused op against the reference; x_ref is the input the
    reference gets (default: a detached copy of x)."""
    tol = tol or TOL[x.dtype]
    x = x.detach().requires_grad_()
    xr = (x if x_ref is None else x_ref).detach().clone().requires_grad_()
    kw = dict(weight=weight, ignore_index=ignore_index, reduction=reduction,
              target_batch_first=target_batch_first)
    out = fused(kind)(x, target, **kw)
    ref = lesson_reference(kind, xr, target, **kw)
    assert out.shape == ref.shape
    assert out.dtype == x.dtype
    torch.testing.assert_close(out, ref.to(out.dtype), equal_nan=True, **tol)
    grad = torch.randn_like(ref)
    (g,) = torch.autograd.grad(out, x, grad.to(out.dtype))
    (gr,) = torch.autograd.grad(ref, xr, grad)
    assert g.shape == x.shape
    torch.testing.assert_close(g, gr.to(g.dtype), equal_nan=True, **tol)
    return out, g


def random_target(B, T, C, device, ignore_index=-100, p_ignore=0.2, batch_first=True, gen=None):
    shape = (B, T) if batch_first else (T, B)
    t = torch.randint(0, C, shape, generator=gen)
    t[torch.rand(shape, generator=gen) < p_ignore] = ignore_index
    return t.to(device)


# ---------------------------------------------------------------------------------------------
# Values and gradients against F.nll_loss / F.cross_entropy


@settings(max_examples=60, deadline=None)
@given(
    T=st.integers(1, 6), B=st.integers(1, 6), C=st.integers(1, 12),
    kind=st.sampled_from(KINDS), reduction=st.sampled_from(REDUCTIONS),
    weighted=st.booleans(), ignore=st.sampled_from(["-100", "0", "C-1"]),
    p_ignore=st.sampled_from([0.0, 0.3, 1.0]), batch_first=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**31 - 1),
)
def test_random_shapes_match_reference(T, B, C, kind, reduction, weighted, ignore, p_ignore,
                                       batch_first, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    ignore_index = {"-100": -100, "0": 0, "C-1": C - 1}[ignore]
    for device in [d if isinstance(d, str) else d.values[0] for d in DEVICES]:
        x = make_input(kind, T, B, C, dtype, "cpu", gen).to(device)
        target = random_target(B, T, C, device, ignore_index, p_ignore, batch_first, gen)
        weight = torch.rand(C, dtype=dtype, generator=gen).to(device) if weighted else None
        compare(kind, x, target, weight, ignore_index, reduction, batch_first)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(8, 5, 1), (1, 5, 7), (8, 1, 7), (1, 1, 1), (8, 512, 85)])
def test_edge_shapes(device, kind, reduction, shape):
    T, B, C = shape
    x = make_input(kind, T, B, C, torch.float64, device)
    target = random_target(B, T, C, device)
    compare(kind, x, target, reduction=reduction)
    compare(kind, x, target, weight=torch.rand(C, dtype=torch.float64, device=device),
            reduction=reduction)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, 0, "C-1", 3])
def test_ignore_index(device, kind, reduction, ignore_index):
    T, B, C = 6, 4, 5
    ignore_index = C - 1 if ignore_index == "C-1" else ignore_index
    x = make_input(kind, T, B, C, torch.float64, device)
    target = random_target(B, T, C, device, ignore_index=ignore_index, p_ignore=0.4)
    out, g = compare(kind, x, target, torch.rand(C, dtype=torch.float64, device=device),
                     ignore_index, reduction)
    ignored = (target == ignore_index).t()  # (T, B)
    assert ignored.any()
    assert (g[ignored] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored(device, kind, weighted):
    T, B, C = 3, 4, 5
    x = make_input(kind, T, B, C, torch.float32, device)
    target = torch.full((B, T), -100, device=device)
    weight = torch.rand(C, device=device) if weighted else None
    mean, g = compare(kind, x, target, weight, reduction="mean")
    assert math.isnan(mean.item())  # 0 / 0, as PyTorch
    assert (g == 0).all()
    total, _ = compare(kind, x, target, weight, reduction="sum")
    assert total.item() == 0
    none, _ = compare(kind, x, target, weight, reduction="none")
    assert (none == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_zero_total_weight_matches_pytorch(device, kind):
    # weights zero on every class present: mean is 0 / 0 = NaN and the gradient NaN, as PyTorch.
    T, B, C = 3, 4, 5
    x = make_input(kind, T, B, C, torch.float64, device)
    target = torch.randint(0, 2, (B, T), device=device)
    weight = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64, device=device)
    out, g = compare(kind, x, target, weight, reduction="mean")
    assert math.isnan(out.item()) and g.isnan().any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_target_time_first(device, kind, reduction):
    T, B, C = 7, 3, 6
    x = make_input(kind, T, B, C, torch.float64, device)
    target = random_target(B, T, C, device, batch_first=False)
    out, _ = compare(kind, x, target, reduction=reduction, target_batch_first=False)
    if reduction == "none":
        assert out.shape == (T, B)
    # the same target given batch-first gives the same loss
    again = fused(kind)(x, target.t(), reduction=reduction)
    torch.testing.assert_close(again, out.t() if reduction == "none" else out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded", "classes_strided"])
def test_non_contiguous_input(device, kind, layout):
    T, B, C = 5, 4, 6
    if layout == "transposed":
        x = make_input(kind, B, T, C, torch.float64, device).transpose(0, 1)
    elif layout == "sliced":
        x = make_input(kind, 2 * T, B + 2, C, torch.float64, device)[::2, 1:-1]
    elif layout == "expanded":
        x = make_input(kind, T, 1, C, torch.float64, device).expand(T, B, C)
    else:
        z = torch.zeros(T, B, 2 * C, dtype=torch.float64, device=device)
        z[..., ::2] = make_input(kind, T, B, C, torch.float64, device)
        x = z[..., ::2]
    assert not x.is_contiguous()
    target = random_target(B, T, C, device)
    for reduction in REDUCTIONS:
        compare(kind, x, target, reduction=reduction, x_ref=x.contiguous())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded", "uint8"])
def test_non_contiguous_target(device, kind, layout):
    T, B, C = 5, 4, 6
    x = make_input(kind, T, B, C, torch.float64, device)
    if layout == "transposed":
        target = random_target(B, T, C, device, batch_first=False).t()  # (B, T), strides (1, B)
        assert not target.is_contiguous()
    elif layout == "sliced":
        target = random_target(B, 2 * T + 1, C, device)[:, 1::2]
        assert not target.is_contiguous()
    elif layout == "expanded":
        target = torch.randint(0, C, (1, T), device=device).expand(B, T)
        assert not target.is_contiguous()
    else:
        target = random_target(B, T, C, device, p_ignore=0.0).to(torch.uint8)
    for reduction in REDUCTIONS:
        compare(kind, x, target, reduction=reduction,
                ignore_index=0 if layout == "uint8" else -100)


@pytest.mark.parametrize("device", DEVICES)
def test_cross_entropy_extreme_logits(device):
    T, B, C = 4, 3, 50
    gen = torch.Generator().manual_seed(50)
    x = (torch.randn(T, B, C, generator=gen) * 100).to(device)  # far beyond exp's float range
    target = random_target(B, T, C, "cpu", p_ignore=0.0, gen=gen).to(device)
    x[0, 0, :] = -float("inf")  # a masked row but for the target class
    x[0, 0, target[0, 0]] = 1.0
    x[1, 1, ::2] = -float("inf")
    x[1, 1, target[1, 1]] = 0.0
    # Against float64 at float32's usual tolerance. (The softmax's accuracy beside large
    # logits is test_cross_entropy_gradient_accurate_beside_huge_logits's; this one is about
    # -inf and exp's range.)
    for reduction in REDUCTIONS:
        compare("ce", x, target, reduction=reduction, x_ref=x.double())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1e4, 1e6, 1e8, 1e30])
def test_cross_entropy_gradient_accurate_beside_huge_logits(device, scale):
    # Rows whose top logits tie or nearly tie at a huge magnitude. The softmax formed as
    # exp(x - lse) from a float32 lse = m + log_sum loses log_sum below half a spacing of m
    # (at 1e8 the spacing is 8, and [1e8, 1e8, 0] got the softmax [1, 1, 0]); formed as
    # exp((x - m) - log_sum), as F.cross_entropy's log_softmax, it is [0.5, 0.5, 0].
    C = 7
    gen = torch.Generator().manual_seed(7)
    rows = []
    for sign in (1.0, -1.0):
        r = torch.zeros(C)
        r[:2] = sign * scale  # a tie at the top
        rows.append(r)
        r = torch.randn(C, generator=gen) + sign * scale
        rows.append(r)  # every logit near the same huge value
        r = torch.full((C,), -scale)
        r[3] = scale
        rows.append(r)  # one class far above the others
    x = torch.stack(rows).float().view(len(rows), 1, C)  # (T, B = 1, C)
    target = torch.tensor([[0, 1, 3, 1, 2, 4]])  # (B, T)
    tol = dict(rtol=1e-5, atol=1e-6)
    for reduction in REDUCTIONS:
        compare("ce", x.to(device), target.to(device), reduction=reduction, tol=tol,
                x_ref=x.double().to(device))
    # the bar: F.cross_entropy's own float32 gradient meets the same tolerance
    xs = x.clone().requires_grad_()
    xd = x.double().requires_grad_()
    F.cross_entropy(xs.view(-1, C), target.t().reshape(-1)).backward()
    F.cross_entropy(xd.view(-1, C), target.t().reshape(-1)).backward()
    torch.testing.assert_close(xs.grad.double(), xd.grad, **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_entropy_infinite_grad_loss_matches_reference(device, dtype):
    # An infinite or NaN grad_loss (reduction none): F.cross_entropy's gradient of the row is
    # +-inf beside the target and NaN at it (log_softmax's backward: c - p * c = inf - inf).
    # Ours is formed as c * (1 - p) there (more accurate), with the NaN kept.
    T, B, C = 4, 3, 5
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(T, B, C, generator=gen, dtype=dtype)
    target = torch.randint(0, C, (B, T), generator=gen)
    target[0, 0] = -100
    grad = torch.randn(B, T, generator=gen, dtype=dtype)
    grad[0, :] = torch.tensor([float("inf"), -float("inf"), float("nan"), 1.0], dtype=dtype)
    grad[1, 2] = float("inf")
    xs, xr = x.clone().to(device).requires_grad_(), x.clone().to(device).requires_grad_()
    out = rnn_ext.seq_cross_entropy(xs, target.to(device), reduction="none")
    ref = lesson_reference("ce", xr, target.to(device), reduction="none")
    (g,) = torch.autograd.grad(out, xs, grad.to(device))
    (gr,) = torch.autograd.grad(ref, xr, grad.to(device))
    assert gr.isnan().any() and gr.isinf().any()  # the case this test is for
    torch.testing.assert_close(g, gr, equal_nan=True, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_cross_entropy_infinite_class_weight_matches_reference(device):
    # A class weight of inf: the rows of that class get c = +-inf, and F.cross_entropy's
    # gradient is NaN at their target, +-inf beside it (mean: NaN everywhere, inf / inf).
    T, B, C = 2, 3, 4
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(T, B, C, generator=gen)
    target = torch.randint(0, C, (B, T), generator=gen)
    target[0, 0] = 1
    weight = torch.tensor([1.0, float("inf"), 0.5, 2.0])
    for reduction in REDUCTIONS:
        compare("ce", x.to(device), target.to(device), weight=weight.to(device),
                reduction=reduction)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ignored", [False, True], ids=["kept", "ignored"])
def test_cross_entropy_special_values_match_reference(device, ignored):
    # Rows holding a NaN, a +inf, -inf beside finite values, or only -inf: the loss and the
    # gradient equal F.cross_entropy's, NaN where it is NaN. For a row whose target is
    # ignore_index the loss is 0 and F's gradient is still NaN when the row's log-softmax is
    # (log_softmax's backward multiplies the row's zero gradient by exp(NaN)), 0 otherwise.
    T, B, C = 5, 2, 9
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(T, B, C, generator=gen)
    target = torch.randint(1, C, (B, T), generator=gen)
    x[0, 0, 4] = float("nan")
    x[1, 0, 2] = float("inf")
    x[2, 0, 5] = -float("inf")
    x[3, 0, :] = -float("inf")
    x[4, 0, 0] = float("nan")
    x[4, 0, 1] = float("inf")
    if ignored:
        target[0, :] = -100  # every special row is at b = 0
    for reduction in REDUCTIONS:
        out, g = compare("ce", x.to(device), target.to(device), reduction=reduction,
                         x_ref=x.double().to(device))
        if ignored:  # the case this test is for: F's gradient is NaN there, not 0
            assert g[[0, 1, 3, 4], 0].isnan().all() and not g[2, 0].isnan().any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1.0, 50.0, 3000.0])
def test_cross_entropy_loss_accurate_beside_large_logits(device, scale):
    # The loss of a confident row is small while its logits are large. Formed as lse - x_y it
    # took lse's rounding at the logits' magnitude (errors of 7e-6 at scale 50, 5e-4 at 3000,
    # where F.cross_entropy's are below 3e-7); formed as (m - x_y) + log_sum it is as close to
    # float64 as F.cross_entropy's.
    T, B, C = 8, 16, 85
    x, target = confident_rows(T, B, C, scale)
    ref = F.cross_entropy(x.double().reshape(-1, C), target.t().reshape(-1), reduction="none")
    theirs = F.cross_entropy(x.reshape(-1, C), target.t().reshape(-1), reduction="none")
    tol = dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(theirs.double(), ref, **tol)  # the bar, met by F.cross_entropy
    x, target = x.to(device), target.to(device)
    got = rnn_ext.seq_cross_entropy(x, target, reduction="none")  # (B, T)
    torch.testing.assert_close(got.t().reshape(-1).double().cpu(), ref, **tol)
    mean = rnn_ext.seq_cross_entropy(x, target)
    torch.testing.assert_close(mean.double().cpu(), ref.mean(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision(device, kind, dtype):
    T, B, C = 6, 5, 20
    x = make_input(kind, T, B, C, torch.float32, device)
    target = random_target(B, T, C, device)
    weight = torch.rand(C, device=device)
    for reduction in REDUCTIONS:
        xl = x.to(dtype).requires_grad_()
        out = fused(kind)(xl, target, weight.to(dtype), reduction=reduction)
        ref_in = xl.detach().float().requires_grad_()
        ref = lesson_reference(kind, ref_in, target, weight.to(dtype).float(), reduction=reduction)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
        grad = torch.randn_like(ref)
        (g,) = torch.autograd.grad(out, xl, grad.to(dtype))
        (gr,) = torch.autograd.grad(ref, ref_in, grad)
        torch.testing.assert_close(g.float(), gr, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_autocast_like_f_nll_loss(device, kind, dtype):
    """Under torch.autocast the loss has the dtype F.nll_loss / F.cross_entropy give (float32
    for 16-bit inputs, their float32 policy) and their value; the input's gradient keeps the
    input's dtype."""
    # CPU autocast runs in bfloat16 (a float16 input still falls under the float32 policy).
    ac_dtype = torch.float16 if dtype == torch.float16 and device == "cuda" else torch.bfloat16
    T, B, C = 5, 4, 30
    x = make_input(kind, T, B, C, torch.float32, device).to(dtype)
    target = random_target(B, T, C, device)
    weight = (torch.rand(C, device=device) + 0.5).to(dtype)
    for reduction in REDUCTIONS:
        xl = x.detach().requires_grad_()
        xr = x.detach().requires_grad_()
        with torch.autocast(device, dtype=ac_dtype):
            out = fused(kind)(xl, target, weight, reduction=reduction)
            ref = lesson_reference(kind, xr, target, weight, reduction=reduction)
        assert out.dtype == ref.dtype, (out.dtype, ref.dtype)
        tol = TOL.get(dtype, dict(rtol=1e-2, atol=1e-2))
        torch.testing.assert_close(out, ref, **tol)
        grad = torch.randn_like(ref)
        (g,) = torch.autograd.grad(out, xl, grad)
        (gr,) = torch.autograd.grad(ref, xr, grad)
        assert g.dtype == gr.dtype == dtype
        torch.testing.assert_close(g, gr, **tol)


@pytest.mark.parametrize("batch_first", [True, False], ids=["target_BT", "target_TB"])
def test_nll_many_rows_across_chunks_and_blocks(batch_first):
    """The CPU NLL forward takes rows in blocks of 32,768 and, within a block, chunks of 64 (targets
    first, then the gathers): 300 x 257 rows make three blocks whose chunks do not line up with B.
    Values, gradients and the out-of-range error against F.nll_loss / the first bad row."""
    T, B, C = 300, 257, 3
    gen = torch.Generator().manual_seed(7)
    x = make_input("nll", T, B, C, torch.float64, "cpu", gen)
    target = random_target(B, T, C, "cpu", ignore_index=1, p_ignore=0.3, batch_first=batch_first,
                           gen=gen)
    weight = torch.rand(C, dtype=torch.float64, generator=gen)
    for reduction in REDUCTIONS:
        compare("nll", x, target, weight, 1, reduction, batch_first)
        compare("nll", x, target, None, 1, reduction, batch_first)
    compare("nll", x, target.to(torch.uint8), weight, 1, "none", batch_first)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [rnn_ext.seq_nll_loss(x, target, weight, ignore_index=1, reduction=r,
                                    target_batch_first=batch_first) for r in REDUCTIONS]
        torch.set_num_threads(max(2, n))
        many = [rnn_ext.seq_nll_loss(x, target, weight, ignore_index=1, reduction=r,
                                     target_batch_first=batch_first) for r in REDUCTIONS]
    finally:
        torch.set_num_threads(n)
    for a, b in zip(one, many):
        assert torch.equal(a, b)
    # out-of-range targets in rows 290 * 257 + 5 (third block) and 20 * 257 + 100 (first block):
    # the error names the first row's
    bad = target.clone()
    for t, b, v in [(290, 5, 3), (20, 100, -2)]:
        bad[(b, t) if batch_first else (t, b)] = v
    where = r"target\[100, 20\]" if batch_first else r"target\[20, 100\]"
    with pytest.raises(IndexError, match=r"Target -2 is out of bounds.*" + where):
        rnn_ext.seq_nll_loss(x, bad, ignore_index=1, target_batch_first=batch_first)


def test_result_does_not_depend_on_thread_count():
    T, B, C = 64, 32, 40
    x = torch.randn(T, B, C)
    target = random_target(B, T, C, "cpu")
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [fused(k)(x, target, reduction=r) for k in KINDS for r in ("mean", "sum")]
        torch.set_num_threads(max(2, n))
        many = [fused(k)(x, target, reduction=r) for k in KINDS for r in ("mean", "sum")]
    finally:
        torch.set_num_threads(n)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Modules


@pytest.mark.parametrize("device", DEVICES)
def test_modules(device):
    T, B, C = 5, 4, 6
    weight = torch.rand(C, dtype=torch.float64)
    nll = rnn_ext.SeqNLLLoss(weight=weight, ignore_index=2, reduction="sum").to(device)
    ce = rnn_ext.SeqCrossEntropyLoss(weight=weight, ignore_index=2, reduction="sum").to(device)
    assert "weight" in nll.state_dict() and nll.weight.device.type == torch.device(device).type
    x = torch.randn(T, B, C, dtype=torch.float64, device=device)
    target = random_target(B, T, C, device, ignore_index=2)
    w = weight.to(device)
    torch.testing.assert_close(
        nll(x.log_softmax(-1), target),
        lesson_reference("nll", x.log_softmax(-1), target, w, 2, "sum"))
    torch.testing.assert_close(ce(x, target), lesson_reference("ce", x, target, w, 2, "sum"))
    tf = rnn_ext.SeqCrossEntropyLoss(target_batch_first=False)
    torch.testing.assert_close(tf(x, target.t()), lesson_reference("ce", x, target))
    with pytest.raises(ValueError, match="reduction"):
        rnn_ext.SeqNLLLoss(reduction="avg")


@pytest.mark.parametrize("kind", KINDS)
def test_elementwise_mean_is_mean_with_fs_warning(kind):
    # F.nll_loss / nn.NLLLoss take the deprecated 'elementwise_mean' as 'mean' and warn.
    T, B, C = 3, 2, 5
    x = torch.randn(T, B, C, dtype=torch.float64)
    target = random_target(B, T, C, "cpu")
    inp = x.log_softmax(-1) if kind == "nll" else x
    module = (rnn_ext.SeqNLLLoss if kind == "nll" else rnn_ext.SeqCrossEntropyLoss)(
        reduction="elementwise_mean")
    assert module.reduction == "elementwise_mean"  # kept as given, as nn.NLLLoss keeps it
    for loss in (lambda: fused(kind)(inp, target, reduction="elementwise_mean"),
                 lambda: module(inp, target)):
        with pytest.warns(UserWarning, match="elementwise_mean' is deprecated"):
            out = loss()
        assert torch.equal(out, fused(kind)(inp, target, reduction="mean"))
        torch.testing.assert_close(out, lesson_reference(kind, inp, target),
                                   **TOL[torch.float64])


# ---------------------------------------------------------------------------------------------
# gradcheck, double backward, opcheck, torch.compile


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(device, kind, reduction):
    T, B, C = 4, 3, 5
    x = torch.randn(T, B, C, dtype=torch.float64, device=device, requires_grad=True)
    target = random_target(B, T, C, device, ignore_index=1, p_ignore=0.3)
    weight = torch.rand(C, dtype=torch.float64, device=device)
    if kind == "nll":
        def fn(x):
            return rnn_ext.seq_nll_loss(x.log_softmax(-1), target, weight, 1, reduction)
    else:
        def fn(x):
            return rnn_ext.seq_cross_entropy(x, target, weight, 1, reduction)
    assert torch.autograd.gradcheck(fn, (x,))
    # double backward (create_graph=True) differentiates a recomputation: exact
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    T, B, C = 4, 3, 5
    target = random_target(B, T, C, device)
    weight = torch.rand(C, device=device)
    for reduction in REDUCTIONS:
        for w in (None, weight):
            lp = torch.randn(T, B, C, device=device).log_softmax(-1).requires_grad_()
            args = (lp, target, w, -100, reduction, True)
            torch.library.opcheck(torch.ops.rnn_ext.seq_nll_loss_forward.default, args)
            loss, total_weight = torch.ops.rnn_ext.seq_nll_loss_forward(*args)
            torch.library.opcheck(
                torch.ops.rnn_ext.seq_nll_loss_backward.default,
                (torch.randn_like(loss), lp.detach(), target, w, -100, reduction, True,
                 total_weight))
            x = torch.randn(T, B, C, device=device, requires_grad=True)
            args = (x, target, w, -100, reduction, True)
            torch.library.opcheck(torch.ops.rnn_ext.seq_cross_entropy_forward.default, args)
            loss, row_max, log_sum, total_weight = (
                torch.ops.rnn_ext.seq_cross_entropy_forward(*args))
            torch.library.opcheck(
                torch.ops.rnn_ext.seq_cross_entropy_backward.default,
                (torch.randn_like(loss), x.detach(), target, w, -100, reduction, True, row_max,
                 log_sum, total_weight))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_equals_eager(device):
    T, B, C = 5, 4, 7
    target = random_target(B, T, C, device)
    weight = torch.rand(C, device=device)

    def step(x):
        a = rnn_ext.seq_nll_loss(x.log_softmax(-1), target, weight)
        b = rnn_ext.seq_cross_entropy(x, target, reduction="none").sum()
        return a + b

    compiled = torch.compile(step, fullgraph=True)
    x = torch.randn(T, B, C, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    eager = step(x)
    eager.backward()
    out = compiled(x2)
    out.backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(x2.grad, x.grad)


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors, never a crash or a wrong number


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [5, -1, 1000, -100])
def test_target_out_of_range_names_value(device, kind, bad):
    T, B, C = 4, 3, 5
    x = make_input(kind, T, B, C, torch.float32, device)
    target = random_target(B, T, C, device, p_ignore=0.0)
    target[2, 1] = bad
    ignore_index = -100 if bad != -100 else -1
    with pytest.raises(IndexError, match=rf"Target {bad} is out of bounds.*target\[2, 1\]"):
        fused(kind)(x, target, ignore_index=ignore_index)
    with pytest.raises(IndexError, match=rf"Target {bad} is out of bounds.*target\[1, 2\]"):
        fused(kind)(x, target.t().contiguous(), ignore_index=ignore_index,
                    target_batch_first=False)
    # the backward operators check too (they may be called directly)
    good = random_target(B, T, C, device)
    if kind == "nll":
        _, tw = torch.ops.rnn_ext.seq_nll_loss_forward(x, good, None, -100, "mean", True)
        with pytest.raises(IndexError, match=rf"Target {bad}"):
            torch.ops.rnn_ext.seq_nll_loss_backward(
                torch.tensor(1.0, device=device), x, target, None, ignore_index, "mean", True, tw)
    else:
        _, row_max, log_sum, tw = torch.ops.rnn_ext.seq_cross_entropy_forward(
            x, good, None, -100, "mean", True)
        with pytest.raises(IndexError, match=rf"Target {bad}"):
            torch.ops.rnn_ext.seq_cross_entropy_backward(
                torch.tensor(1.0, device=device), x, target, None, ignore_index, "mean", True,
                row_max, log_sum, tw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_bad_arguments(device, kind):
    T, B, C = 4, 3, 5
    name = "log_probs" if kind == "nll" else "logits"
    fn = fused(kind)
    x = make_input(kind, T, B, C, torch.float32, device)
    target = random_target(B, T, C, device)
    # shape mismatch: both shapes named
    with pytest.raises(ValueError, match=r"\[3, 4\].*\[4, 3, 5\].*\[4, 3\]"):
        fn(x, target.t().contiguous())
    with pytest.raises(ValueError, match=r"\[4, 3\].*\[4, 3, 5\].*\[3, 5\]"):
        fn(x, torch.zeros(3, 5, dtype=torch.long, device=device), target_batch_first=False)
    # ranks
    with pytest.raises(RuntimeError, match=rf"{name} of rank 3.*\[12, 5\]"):
        fn(x.reshape(T * B, C), target)
    # target dtype
    for dt in (torch.int32, torch.float32):
        with pytest.raises(RuntimeError, match="int64"):
            fn(x, target.to(dt))
    # input dtype
    with pytest.raises(RuntimeError, match="floating"):
        fn(x.to(torch.int64), target)
    # weight shape and dtype
    with pytest.raises(RuntimeError, match=r"weight of shape \(C,\) = \(5,\).*\[4\]"):
        fn(x, target, torch.ones(4, device=device))
    with pytest.raises(RuntimeError, match=r"weight.*\[1, 5\]"):
        fn(x, target, torch.ones(1, 5, device=device))
    with pytest.raises(RuntimeError, match="weight to have dtype"):
        fn(x, target, torch.ones(C, dtype=torch.float64, device=device))
    # reduction
    with pytest.raises(ValueError, match="avg"):
        fn(x, target, reduction="avg")
    with pytest.raises(ValueError, match="avg"):
        op = (torch.ops.rnn_ext.seq_nll_loss_forward if kind == "nll"
              else torch.ops.rnn_ext.seq_cross_entropy_forward)
        op(x, target, None, -100, "avg", True)
    # a weight that requires grad: not differentiable, as F.nll_loss
    with pytest.raises(RuntimeError, match="not differentiable with respect to weight"):
        fn(x, target, torch.ones(C, device=device, requires_grad=True))


@pytest.mark.parametrize("kind", KINDS)
def test_an_argument_on_another_device_is_an_error(kind):
    """target, weight (forward) and grad_loss, target, weight, row_max, log_sum, total_weight
    (backward) on another device than the input (meta: the other device every machine has)
    raise, naming the argument, as F.nll_loss and F.cross_entropy raise. A meta argument
    selects the operator's Meta (fake) kernel, which returned an uninitialised CPU loss before
    it checked devices."""
    ce = kind == "ce"
    name = "logits" if ce else "log_probs"
    op = "seq_cross_entropy" if ce else "seq_nll_loss"
    x = torch.randn(3, 2, 4)
    x = x if ce else x.log_softmax(-1)
    fwd = getattr(torch.ops.rnn_ext, f"{op}_forward")
    bwd = getattr(torch.ops.rnn_ext, f"{op}_backward")
    kw = dict(target=torch.randint(0, 4, (2, 3)), weight=torch.rand(4))
    res = fwd(x, *kw.values(), -100, "mean", True)
    bkw = dict(grad_loss=torch.ones(()), **kw)
    stats = (dict(row_max=res[1], log_sum=res[2], total_weight=res[3]) if ce
             else dict(total_weight=res[1]))
    for arg in kw:
        bad = dict(kw, **{arg: kw[arg].to("meta")})
        with pytest.raises(RuntimeError, match=f"^rnn_ext::{op}_forward: expected {arg} on "
                           f"device cpu like {name}, but got it on meta"):
            fwd(x, *bad.values(), -100, "mean", True)
    for arg in [*bkw, *stats]:
        b = dict(bkw, **{k: v.to("meta") for k, v in bkw.items() if k == arg})
        st = {k: (v.to("meta") if k == arg else v) for k, v in stats.items()}
        with pytest.raises(RuntimeError, match=f"^rnn_ext::{op}_backward: expected {arg} on "
                           f"device cpu like {name}, but got it on meta"):
            bwd(b["grad_loss"], x, b["target"], b["weight"], -100, "mean", True, *st.values())
    loss_fn = rnn_ext.seq_cross_entropy if ce else rnn_ext.seq_nll_loss
    with pytest.raises(RuntimeError, match="expected target on device cpu"):
        loss_fn(x, kw["target"].to("meta"))
    if ce:  # a statistic of the wrong shape: the CPU kernel's error, and the fake kernel's
        for dev in ("cpu", "meta"):
            st = {k: v.to(dev) for k, v in stats.items()}
            st["log_sum"] = st["log_sum"][:, :1]
            b = {k: v.to(dev) for k, v in bkw.items()}
            with pytest.raises(RuntimeError, match=r"expected log_sum of shape \(T, B\) = "
                               r"\[3, 2\], but got log_sum of shape \[3, 1\]"):
                bwd(b["grad_loss"], x.to(dev), b["target"], b["weight"], -100, "mean", True,
                    *st.values())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch_is_an_error():
    x = torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match="device"):
        rnn_ext.seq_nll_loss(x, torch.zeros(3, 2, dtype=torch.long, device="cuda"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(0, 3, 4), (3, 0, 4)])
def test_empty(device, kind, shape):
    T, B, C = shape
    x = torch.randn(T, B, C, device=device, requires_grad=True)
    target = torch.zeros(B, T, dtype=torch.long, device=device)
    assert math.isnan(fused(kind)(x, target).item())  # 0 / 0, as F.nll_loss on (0, C)
    assert math.isnan(lesson_reference(kind, x, target).item())
    total = fused(kind)(x, target, reduction="sum")
    assert total.item() == 0
    (g,) = torch.autograd.grad(total, x)
    assert g.shape == x.shape
    assert fused(kind)(x, target, reduction="none").shape == (B, T)


@pytest.mark.parametrize("device", DEVICES)
def test_cross_entropy_float32_long_rows_accuracy(device):
    # the float32 kernels' exp: compare with the float64 loss and gradient on long rows
    T, B, C = 3, 4, 5000
    x = torch.randn(T, B, C, dtype=torch.float64, device=device) * 5
    target = random_target(B, T, C, device, p_ignore=0.0)
    for reduction in REDUCTIONS:
        compare("ce", x.float(), target, reduction=reduction, x_ref=x,
                tol=dict(rtol=1e-5, atol=1e-6))


@pytest.mark.parametrize("op", ["seq_nll_loss_forward", "seq_cross_entropy_forward"])
def test_raw_op_rejects_a_weight_that_requires_grad(op):
    """The check lives in the C++ autograd kernel (not only in the Python wrappers), so the
    operators called directly raise too, instead of silently returning no weight gradient."""
    x = torch.randn(5, 3, 7).log_softmax(-1).requires_grad_()
    target = torch.randint(0, 7, (3, 5))
    weight = torch.rand(7, requires_grad=True)
    fn = getattr(torch.ops.rnn_ext, op)
    with pytest.raises(RuntimeError, match="not differentiable with respect to weight"):
        fn(x, target, weight, -100, "mean", True)
    with torch.no_grad():  # no graph, nothing to refuse: the value equals F.nll_loss's
        loss = fn(x, target, weight, -100, "mean", True)[0]
        ref = lesson_reference("nll" if "nll" in op else "ce", x, target, weight)
    torch.testing.assert_close(loss, ref, **TOL[torch.float32])


def test_large_vocabulary_nll_gradient_values_accumulation_and_profiled_memory():
    """At a word-level size (T 35, B 32, C 10000: a 45 MB gradient of 40 KB rows) the CPU
    backward returns a lazily zeroed fresh mapping (csrc/cpu/seq_nll_cpu.cpp): every element
    must still equal F.nll_loss's gradient, accumulate into .grad like any tensor, and be seen
    by the memory profiler."""
    T, B, C = 35, 32, 10000
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, C, generator=gen).log_softmax(-1).requires_grad_()
    target = random_target(B, T, C, "cpu", gen=gen)
    weight = torch.rand(C, generator=gen)
    for reduction in REDUCTIONS:
        compare("nll", x, target, weight=weight, reduction=reduction)
    x.grad = None
    for _ in range(2):  # the second backward adds into the first gradient
        rnn_ext.seq_nll_loss(x, target, weight, reduction="sum").backward()
    xr = x.detach().clone().requires_grad_()
    (gr,) = torch.autograd.grad(lesson_reference("nll", xr, target, weight, reduction="sum"), xr)
    torch.testing.assert_close(x.grad, 2 * gr, rtol=0, atol=0)
    x.grad.resize_(T, B, C + 1)  # resizable like any gradient (reallocates)
    assert x.grad.shape == (T, B, C + 1)
    (g,) = torch.autograd.grad(rnn_ext.seq_nll_loss(x, target), [x])
    g.untyped_storage().resize_(0)  # the storage-freeing pattern of FSDP-style code
    assert g.untyped_storage().nbytes() == 0
    with torch.profiler.profile(profile_memory=True) as prof:
        torch.autograd.grad(rnn_ext.seq_nll_loss(x, target), [x])
    by_op = {e.key: e.self_cpu_memory_usage for e in prof.key_averages()}
    assert by_op.get("rnn_ext::seq_nll_loss_backward", 0) >= T * B * C * 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_double_backward_time_first_target(device, kind):
    T, B, C = 3, 2, 4
    x = torch.randn(T, B, C, dtype=torch.float64, device=device, requires_grad=True)
    target = random_target(B, T, C, device, p_ignore=0.3, batch_first=False)

    def fn(x):
        lp = x.log_softmax(-1) if kind == "nll" else x
        return fused(kind)(lp, target, reduction="none", target_batch_first=False)

    assert torch.autograd.gradgradcheck(fn, (x,))
    # and the second derivative is the reference's
    (g,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad((g * g).sum(), x)
    xr = x.detach().clone().requires_grad_()
    ref_in = xr.log_softmax(-1) if kind == "nll" else xr
    ref = lesson_reference(kind, ref_in, target, reduction="none", target_batch_first=False)
    (gr,) = torch.autograd.grad(ref.sum(), xr, create_graph=True)
    (ggr,) = torch.autograd.grad((gr * gr).sum(), xr)
    torch.testing.assert_close(gg, ggr)


@pytest.mark.parametrize("bad, error, match", [
    (2 ** 70, ValueError, "in the int64 range, got 1180591620717411303424"),
    (-(2 ** 63) - 1, ValueError, "in the int64 range"),
    (1.5, TypeError, "an integer, got 1.5"),
    (True, TypeError, "an integer, got True"),
    (np.bool_(True), TypeError, "an integer"),
    (np.uint64(2 ** 64 - 1), ValueError, "in the int64 range"),
    (torch.tensor(1.5), TypeError, r"an integer, got a tensor of dtype torch.float32 and shape "
                                   r"\(\)"),
    (torch.tensor([1, 2]), TypeError, r"an integer, got a tensor of dtype torch.int64 and "
                                      r"shape \(2,\)"),
])
def test_ignore_index_out_of_int64_or_not_an_int(bad, error, match):
    """The error types of F.nll_loss (TypeError for a float or bool, ValueError on overflow),
    with messages that name ignore_index."""
    lp = torch.randn(2, 3, 4).log_softmax(-1)
    t = torch.zeros(3, 2, dtype=torch.int64)
    with pytest.raises(error):
        F.nll_loss(lp.reshape(6, 4), t.reshape(-1), ignore_index=bad)
    for fn in (rnn_ext.seq_nll_loss, rnn_ext.seq_cross_entropy):
        with pytest.raises(error, match=f"ignore_index must be {match}"):
            fn(lp, t, ignore_index=bad)
    expected = rnn_ext.seq_nll_loss(lp, t, ignore_index=1)
    assert torch.equal(rnn_ext.seq_nll_loss(lp, t, ignore_index=np.int64(1)), expected)
    for one in (torch.tensor(1), torch.tensor([1], dtype=torch.uint8)):  # F takes these too
        assert torch.equal(rnn_ext.seq_nll_loss(lp, t, ignore_index=one), expected)
    # A bool tensor (F: an internal assert) was read as 1.
    with pytest.raises(TypeError, match="ignore_index must be an integer, got a tensor of dtype "
                                        "torch.bool"):
        rnn_ext.seq_cross_entropy(lp, t, ignore_index=torch.tensor(True))
    assert torch.equal(rnn_ext.seq_nll_loss(lp, t, ignore_index=2 ** 63 - 1),
                       rnn_ext.seq_nll_loss(lp, t, ignore_index=-100))


@pytest.fixture(scope="module")
def loss_rows():
    """csrc/cpu/loss_rows.h compiled at every vector width (tests/cpu_vec/), for this machine."""
    from pathlib import Path

    from native_build import load_test_module, missing_build_requirement

    root = Path(__file__).resolve().parents[1]
    missing = missing_build_requirement(root / "csrc" / "cpu" / "loss_rows.h")
    if missing:
        pytest.skip(missing)
    return load_test_module(
        "rnn_ext_loss_rows", [root / "tests" / "cpu_vec" / "loss_rows_ext.cpp"],
        include_dirs=[root / "csrc"], extra_cflags=["-O2", "-fno-trapping-math", "-Wno-psabi"])


def _special_rows(C, gen):
    """float32 rows (R, C) of length C: random at several scales, and rows whose max or NaN
    sits in a full block and in the padded last one, all -inf, a +inf, -inf beside finite."""
    rows = [torch.randn(C, generator=gen) * s for s in (1.0, 30.0, 1000.0)]
    for pos in sorted({0, C // 2, C - 1}):
        r = torch.randn(C, generator=gen)
        r[pos] = 40.0  # the max
        rows.append(r)
        for v in (float("nan"), float("inf"), -float("inf")):
            r = torch.randn(C, generator=gen)
            r[pos] = v
            rows.append(r)
    rows.append(torch.full((C,), -float("inf")))
    return torch.stack(rows).float()


@pytest.mark.parametrize("W", [4, 8, 16])
@pytest.mark.parametrize("C", [1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 85, 1000])
def test_cpu_float_rows_at_every_vector_width(loss_rows, W, C):
    """The float rows of the CPU cross-entropy at the vector width of each instruction set
    (16: AVX-512, 8: AVX2, 4: others), lengths around each block size: log-sum-exp (its max and
    log_sum) and the gradient against float64. The reference is log_softmax's (F.cross_entropy):
    m + log(sum(exp(x - m))) with m the row's max, so a row holding NaN or +inf, or all -inf,
    is NaN (torch.logsumexp gives +-inf for the last two)."""
    gen = torch.Generator().manual_seed(C * 100 + W)
    x = _special_rows(C, gen)
    m, log_sum = loss_rows.logsumexp_rows(x, W)
    xd = x.double()
    m_ref = xd.max(dim=1, keepdim=True).values
    ls_ref = torch.log(torch.exp(xd - m_ref).sum(dim=1))
    ref = m_ref.squeeze(1) + ls_ref
    assert torch.equal((m + log_sum).isnan(), ref.isnan())
    finite = ref.isfinite()
    assert finite.sum() >= 3 + min(C, 3)  # the random rows and those with a max of 40
    assert torch.equal(m[finite].double(), m_ref.squeeze(1)[finite])  # exactly the max
    torch.testing.assert_close(log_sum[finite].double(), ls_ref[finite], rtol=1e-6, atol=2e-7)
    torch.testing.assert_close((m + log_sum)[finite].double(), ref[finite], rtol=2e-7, atol=0)
    xf = x[finite]

    # The gradient against float64's softmax (not against the float32 statistics). Formed as
    # exp(x - lse) from a float32 lse it fails this for 7 of the 45 (C, W), in the scale-30 row
    # mostly (a row whose log_sum is near 0 has lse == m, where the old formula was exact).
    y = torch.randint(0, C, (int(finite.sum()),), generator=gen)
    c = torch.rand(y.shape, generator=gen) * 4 - 2
    g = loss_rows.ce_grad_rows(xf.contiguous(), m[finite].contiguous(),
                               log_sum[finite].contiguous(), c, y, W)
    onehot = F.one_hot(y, C).double()
    g_ref = c.double()[:, None] * (onehot - torch.softmax(xf.double(), dim=1))
    # atol: |c| <= 2 times a few float32 spacings below 1 (1 - p of a dominant class)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-6, atol=3e-7)
