"""The CUDA kernels of the Elman recurrence and of the losses, run on the CPU by a host emulation.

Most machines that build rnn_ext have no GPU (CI among them), so the CUDA kernels' own source,
csrc/cuda/elman_kernels.cuh and seq_nll_kernels.cuh, is also compiled for the host with
tests/cuda_emu/cuda_emu.h, which emulates CUDA threads (fibers, every block resident at once),
__syncthreads, the cooperative grid barrier, warp shuffles, atomicMin and shared memory
(poisoned with NaN, guarded against overruns).
These tests run:

* the persistent forward and backward kernels, for every tiling family the planner
  (csrc/cuda/persistent_plan.h) can choose (register tile, K-split, padding, one or several
  blocks along B and along H), against a float64 reference: the recurrence for the output and
  h_n, autograd for the gradient of the pre-activations; with lengths, reverse, tanh and relu,
  with and without grad_h_n; in float64, float32, float16 and bfloat16;
* the plan the planner picks on an H200 at the issue's four benchmark shapes (fewer steps);
* the fused pointwise kernels of the cuBLAS path (grid-stride loops);
* the four loss kernels: per-row losses, weights, log-sum-exp and gradients against float64
  math and autograd of F.nll_loss / F.cross_entropy, and the record of the first bad target;
* the emulation itself: a deadlock, a shared-memory overrun and a missing __syncthreads are
  caught;
* the host code of csrc/cuda/elman_cuda.cu and seq_nll_cuda.cu, whole (the operators' CUDA
  entry points: planning, buffers, the cuBLAS step loop with ATen's CPU GEMMs in cuBLAS's
  place, the persistent launches and their fallbacks, gradients, output_mask, the cell ops, the
  loss ops, the CUDA-graph capture branches), its CUDA runtime calls emulated by
  tests/cuda_emu/cuda_host_emu.h on a small device, against the CPU operators in float64.

What this does not check: the device's memory ordering, its real occupancy and the driver's
answers, cuBLAS and the ATen CUDA reductions themselves, speed. tests/test_cuda.py does, on a
GPU (and tests/test_cuda_ptx.py checks the persistent kernels' loads in their PTX).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from cuda_cases import REL_TOL, confident_rows, make_args, rel_err
from native_build import load_test_module, missing_build_requirement

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
EMU_DIR = Path(__file__).resolve().parent / "cuda_emu"

H200_SMEM_PER_BLOCK = 232448  # sharedMemPerBlockOptin of an H200 (227 KiB)
H200_SMS = 132

_MISSING = missing_build_requirement(CSRC / "cuda" / "elman_kernels.cuh")
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


@pytest.fixture(scope="module")
def emu():
    """The emulation module, built once (tests/native_build.py)."""
    return load_test_module(
        "rnn_ext_cuda_emu",
        # The host code's non-CUDA dependencies: the shared argument checks and the
        # whole-sequence gradients (elman_cuda.cu and seq_nll_cuda.cu are included by the
        # two *_emu.cpp files).
        [EMU_DIR / "elman_emu.cpp", EMU_DIR / "seq_nll_emu.cpp", CSRC / "elman_checks.cpp",
         CSRC / "elman_grads.cpp", CSRC / "seq_nll_checks.cpp"],
        include_dirs=[CSRC],
        extra_cflags=["-O2", "-Wno-unknown-pragmas", "-DRNN_EXT_CUDA_EMULATION"],
    )


# ---------------------------------------------------------------------------------------------
# References (float64).


def _phi(act):
    return torch.tanh if act == "tanh" else torch.relu


def reference_forward(xp, h_0, w, lengths, reverse, act, round_to=None):
    """The Elman recurrence given the input projection: h_t = phi(xp_t + h_{t-1} W^T), steps
    t >= lengths[b] output 0 and keep the state (torch.nn.RNN's doc; rnn_ext/reference.py).
    In float64; with `round_to`, each stored h_t is rounded to that dtype, as the kernels store
    them. Returns (output (T, B, H), h_n (B, H))."""
    T = xp.shape[0]
    h = h_0.double()
    outs = [None] * T
    for t in range(T - 1, -1, -1) if reverse else range(T):
        h_new = _phi(act)(xp[t].double() + h @ w.double().T)
        if round_to is not None:
            h_new = h_new.to(round_to).double()
        if lengths is None:
            outs[t] = h = h_new
        else:
            running = (lengths > t).unsqueeze(1)
            outs[t] = torch.where(running, h_new, torch.zeros_like(h_new))
            h = torch.where(running, h_new, h)
    return torch.stack(outs), h


def reference_ga(xp, h_0, w, lengths, reverse, act, gy, grad_h_n):
    """d L / d a_t by float64 autograd, for L = sum(gy * output) + sum(grad_h_n * h_n): the
    gradient of the pre-activations, which is the gradient of the input projection."""
    xp = xp.double().detach().requires_grad_()
    out, h_n = reference_forward(xp, h_0, w, lengths, reverse, act)
    loss = (out * gy.double()).sum()
    if grad_h_n is not None:
        loss = loss + (h_n * grad_h_n.double()).sum()
    (ga,) = torch.autograd.grad(loss, xp)
    return out.detach(), ga


def reference_ga_step(gy_t, g, y_t, grad_h_n, t, T, lengths, reverse, act):
    """One step of the backward in float64: ga_t = (gy_t + g) * phi'(y_t), where at each
    sequence's last forward step (its first backward step: t = 0 in reverse, else
    lengths[b] - 1 or T - 1) g is grad_h_n (or 0) instead of the carry (which the pipeline
    makes 0 there, or NaN from a non-finite W_hh), and rows with t >= lengths[b] get 0.
    Shapes (B, H); lengths (B,) or None; grad_h_n or None."""
    B = y_t.shape[0]
    gy_t, g, y_t = gy_t.double(), g.double(), y_t.double()
    if reverse:
        first = torch.full((B,), t == 0)
    else:
        first = (lengths - 1 == t) if lengths is not None else torch.full((B,), t == T - 1)
    at_first = grad_h_n.double() if grad_h_n is not None else torch.zeros_like(g)
    g = torch.where(first.unsqueeze(1), at_first, g)
    if act == "tanh":
        ga_t = (gy_t + g) * (1 - y_t ** 2)
    else:  # relu selects (threshold_backward): 0 where the unit is off
        ga_t = torch.where(y_t <= 0, 0.0, gy_t + g)
    if lengths is not None:
        ga_t = torch.where((lengths > t).unsqueeze(1), ga_t, 0.0)
    return ga_t


def reference_ga_rounded(y, gy, grad_h_n, w, lengths, reverse, act, dtype):
    """The backward recurrence step by step, each ga_t rounded to `dtype` as the kernel stores it
    (and reads it back for the next step): ga_t = (gy_t + g) * phi'(y_t), g = ga_t W; grad_h_n
    joins g at each sequence's last forward step; steps t >= lengths[b] get 0."""
    T, B, H = y.shape
    ga = torch.zeros(T, B, H, dtype=torch.float64)
    g = torch.zeros(B, H, dtype=torch.float64)
    for u in range(T):
        t = u if reverse else T - 1 - u
        ga_t = reference_ga_step(gy[t], g, y[t], grad_h_n, t, T, lengths, reverse, act)
        ga[t] = ga_t.to(dtype).double()
        g = ga[t] @ w.double()
    return ga


# ---------------------------------------------------------------------------------------------
# Plans.

# (T, B, H): H = 1, H below and above a warp, B above and below a block tile, H not a multiple
# of 32; several blocks along B, along H, and both.
# T = 1: the backward's step loop does not run (RNN_EXT_CUDA_PERSISTENT=on / require take the
# persistent path at T = 1 too).
SWEEP_SHAPES = [(3, 1, 1), (4, 2, 3), (5, 3, 5), (3, 5, 33), (4, 17, 9), (3, 2, 70), (2, 9, 40),
                (1, 5, 33)]
MAX_SWEEP_GRID = 16


def tiling_families(plans, max_grid=MAX_SWEEP_GRID):
    """One plan (the smallest grid) per family: register tile, K-split, padding, and whether
    there are several blocks along B and along H. Only plans of at most `max_grid` blocks."""
    chosen = {}
    for p in plans:
        grid = p["nbt"] * p["njt"]
        if grid > max_grid:
            continue
        key = (p["rb"], p["rj"], p["ks"], p["padded"], p["nbt"] > 1, p["njt"] > 1)
        if key not in chosen or grid < chosen[key]["nbt"] * chosen[key]["njt"]:
            chosen[key] = p
    return [chosen[k] for k in sorted(chosen)]


def variants():
    """(act, reverse, with lengths, with grad_h_n): all 16, taken in turn by the plans."""
    return [
        (act, rev, lens, ghn)
        for act in ("tanh", "relu")
        for rev in (False, True)
        for lens in (False, True)
        for ghn in (False, True)
    ]


def make_inputs(T, B, H, dtype, seed, with_lengths):
    g = torch.Generator().manual_seed(seed)
    xp = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    h_0 = torch.randn(B, H, generator=g, dtype=torch.float64)
    w = torch.randn(H, H, generator=g, dtype=torch.float64) / math.sqrt(H)
    gy = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    ghn = torch.randn(B, H, generator=g, dtype=torch.float64)
    lengths = None
    if with_lengths and seed % 5 == 0:
        lengths = torch.ones(B, dtype=torch.int64)  # every sequence one step long
    elif with_lengths:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T  # the longest is T, as pack_padded_sequence gives
    cast = [t.to(dtype) for t in (xp, h_0, w, gy, ghn)]
    return (*cast, lengths)


TOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def check_plan(emu, plan, T, B, H, dtype, variant, seed):
    act, reverse, with_lengths, with_ghn = variant
    xp, h_0, w, gy, ghn, lengths = make_inputs(T, B, H, dtype, seed, with_lengths)
    ghn = ghn if with_ghn else None
    where = f"plan {plan}, (T, B, H) = {(T, B, H)}, {dtype}, {variant}"

    out, h_n = emu.persistent_forward(xp, h_0, w, lengths, reverse, act, plan)
    assert out.dtype == dtype and h_n.dtype == dtype
    ref_out, ref_ga = reference_ga(xp, h_0, w, lengths, reverse, act, gy, ghn)
    _, ref_h_n = reference_forward(xp, h_0, w, lengths, reverse, act)
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), ref_out, rtol=tol, atol=tol, msg=lambda m: where + m)
    torch.testing.assert_close(h_n.double(), ref_h_n, rtol=tol, atol=tol,
                               msg=lambda m: where + m)

    ga = emu.persistent_backward(gy, out, ghn, w, lengths, reverse, act, plan)
    assert ga.dtype == dtype
    scale = max(1.0, ref_ga.abs().max().item())
    torch.testing.assert_close(ga.double(), ref_ga, rtol=tol, atol=tol * scale,
                               msg=lambda m: where + m)


def test_candidate_plans_are_consistent(emu):
    """Every candidate plan's fields agree with each other and with the kernels' assumptions."""
    for B, H in [(1, 1), (1, 2), (2, 1), (3, 5), (64, 512), (512, 256), (8, 1024), (7, 2500)]:
        for acc_size in (4, 8):
            for smem_max in (H200_SMEM_PER_BLOCK, 48 * 1024):
                plans = emu.candidate_plans(B, H, acc_size, smem_max, H200_SMS)
                if B * H <= 2:
                    assert plans, "B = H = 1 must have a plan (the smallest block tiles)"
                for p in plans:
                    assert (p["rb"], p["rj"]) in {(1, 1), (1, 2), (2, 2), (4, 4)}, p
                    assert p["ks"] in (1, 2, 4, 8, 16, 32), p
                    assert p["gb"] * p["gj"] * p["ks"] == 256, p
                    assert p["bt"] == p["gb"] * p["rb"] and p["jt"] == p["gj"] * p["rj"], p
                    assert p["nbt"] == -(-B // p["bt"]) and p["njt"] == -(-H // p["jt"]), p
                    assert p["ldk"] >= H and p["ldj"] >= p["jt"], p
                    if p["padded"]:
                        assert p["ldk"] % 32 == p["ks"] % 32, p
                        if p["ks"] > 1:
                            assert p["ldj"] % 32 == (32 // p["ks"]) % 32, p
                    assert p["smem"] == (H * p["ldj"] + p["bt"] * p["ldk"]) * acc_size, p
                    assert p["smem"] <= smem_max, p
                    assert p["cost"] > 0, p


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_persistent_kernels_every_tiling_family(emu, dtype):
    """Forward (output, h_n) and backward (ga) of every tiling family at every sweep shape,
    against float64 math; the 16 variants (act, reverse, lengths, grad_h_n) taken in turn."""
    acc_size = 8 if dtype == torch.float64 else 4
    vs = variants()
    n = 0
    for T, B, H in SWEEP_SHAPES:
        plans = tiling_families(emu.candidate_plans(B, H, acc_size, H200_SMEM_PER_BLOCK,
                                                    H200_SMS))
        assert plans
        for i, plan in enumerate(plans):
            check_plan(emu, plan, T, B, H, dtype, vs[(n + i) % len(vs)], seed=n + i)
        n += len(plans)
    # Every register tile, K-split and padding was run.
    assert n > 300


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_persistent_kernels_16bit(emu, dtype):
    """16-bit storage, float32 accumulation: against float64 math that rounds every stored
    h_t and ga_t to the dtype as the kernels do; within two units in the last place."""
    eps = torch.finfo(dtype).eps
    vs = variants()
    k = 0
    for T, B, H in [(4, 3, 5), (3, 5, 33), (3, 9, 40)]:
        plans = tiling_families(emu.candidate_plans(B, H, 4, H200_SMEM_PER_BLOCK, H200_SMS),
                                max_grid=8)
        # One plan per register tile and K-split.
        picked = {}
        for p in plans:
            picked.setdefault((p["rb"], p["rj"], p["ks"]), p)
        for plan in picked.values():
            act, reverse, with_lengths, with_ghn = vs[k % len(vs)]
            xp, h_0, w, gy, ghn, lengths = make_inputs(T, B, H, dtype, k, with_lengths)
            ghn = ghn if with_ghn else None
            where = f"plan {plan}, {(T, B, H)}, {dtype}, {vs[k % len(vs)]}"
            out, h_n = emu.persistent_forward(xp, h_0, w, lengths, reverse, act, plan)
            ref_out, ref_h_n = reference_forward(xp, h_0, w, lengths, reverse, act,
                                                 round_to=dtype)
            torch.testing.assert_close(out.double(), ref_out, rtol=2 * eps, atol=2 * eps,
                                       msg=lambda m: where + m)
            torch.testing.assert_close(h_n.double(), ref_h_n, rtol=2 * eps, atol=2 * eps,
                                       msg=lambda m: where + m)
            ga = emu.persistent_backward(gy, out, ghn, w, lengths, reverse, act, plan)
            ref = reference_ga_rounded(out, gy, ghn, w, lengths, reverse, act, dtype)
            scale = max(1.0, ref.abs().max().item())
            torch.testing.assert_close(ga.double(), ref, rtol=2 * eps, atol=2 * eps * scale,
                                       msg=lambda m: where + m)
            k += 1
    assert k >= 20


# The four benchmark shapes, (T, B, I, H) = (8, 512, 42, 256), (100, 64, 512, 512),
# (1000, 8, 256, 256), (1000, 64, 1024, 1024), with fewer steps (the plan does not depend on T).
@pytest.mark.parametrize(
    "T,B,H",
    [(8, 512, 256), (3, 64, 512), (12, 8, 256), (2, 64, 1024)],
    ids=["lesson-B512-H256", "B64-H512", "B8-H256", "B64-H1024"],
)
def test_persistent_kernels_planners_choice(emu, T, B, H):
    """The plan make_plan picks on an H200 (132 SMs, 227 KiB of shared memory per block),
    float32, forward and backward with lengths and grad_h_n. make_plan keeps the cheapest
    candidate whose grid the driver says is resident (at most per_sm * 132 blocks, per_sm from
    the occupancy query, which needs the device); the cheapest is the same for per_sm = 1 .. 4
    at these shapes, so it is the plan the device runs whatever its occupancy answer."""
    plans = emu.candidate_plans(B, H, 4, H200_SMEM_PER_BLOCK, H200_SMS)
    picks = []
    for per_sm in (1, 2, 3, 4):
        resident = [p for p in plans if p["nbt"] * p["njt"] <= per_sm * H200_SMS]
        picks.append(min(resident, key=lambda p: p["cost"]))  # min keeps the first of ties
    assert all(p == picks[0] for p in picks), picks
    check_plan(emu, picks[0], T, B, H, torch.float32, ("tanh", False, True, True), seed=1)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_persistent_kernels_propagate_nan_as_nn_rnn(emu, act):
    """A NaN in the input projection: that unit is NaN, then the whole row from the next step
    on (relu(NaN) is NaN, as torch.relu), and relu's backward passes the gradient where the
    output is NaN (as threshold_backward); against float64 autograd, NaN pattern included."""
    T, B, H = 4, 3, 5
    plan = min(emu.candidate_plans(B, H, 8, H200_SMEM_PER_BLOCK, H200_SMS),
               key=lambda p: p["cost"])
    xp, h_0, w, gy, ghn, _ = make_inputs(T, B, H, torch.float64, 0, False)
    xp[1, 1, 2] = float("nan")
    out, h_n = emu.persistent_forward(xp, h_0, w, None, False, act, plan)
    ref_out, ref_ga = reference_ga(xp, h_0, w, None, False, act, gy, ghn)
    assert torch.isnan(out[1, 1, 2]) and torch.isnan(out[2:, 1]).all()
    assert not torch.isnan(out[:, [0, 2]]).any()
    torch.testing.assert_close(out, ref_out, equal_nan=True)
    ga = emu.persistent_backward(gy, out, ghn, w, None, False, act, plan)
    torch.testing.assert_close(ga, ref_ga, equal_nan=True)


def test_schedule_order_does_not_change_results(emu):
    """The kernels read nothing before it is written: any order of the threads' turns between
    barriers (block-greedy or interleaved, several seeds) gives the same bits."""
    T, B, H = 4, 5, 33
    plans = emu.candidate_plans(B, H, 4, H200_SMEM_PER_BLOCK, H200_SMS)
    plan = next(p for p in plans if p["ks"] == 8 and p["nbt"] > 1 and p["njt"] > 1)
    xp, h_0, w, gy, ghn, lengths = make_inputs(T, B, H, torch.float32, 0, True)
    results = []
    try:
        for seed in range(3):
            for interleaved in (False, True):
                emu.set_schedule(seed, interleaved)
                out, h_n = emu.persistent_forward(xp, h_0, w, lengths, True, "tanh", plan)
                ga = emu.persistent_backward(gy, out, ghn, w, lengths, True, "tanh", plan)
                results.append((out, h_n, ga))
    finally:
        emu.set_schedule(0, False)
    for r in results[1:]:
        for a, b in zip(results[0], r):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=str)
@pytest.mark.parametrize("with_lengths", [False, True], ids=["dense", "lengths"])
def test_pointwise_step_kernels(emu, dtype, with_lengths):
    """forward_step_kernel / backward_step_kernel of the cuBLAS path, launched with fewer
    threads than elements (grid-stride loops), against float64 math of one step."""
    T, B, H = 5, 7, 37  # B * H = 259 elements, 2 x 64 threads
    tol = {torch.float64: 1e-12, torch.float32: 1e-6}.get(dtype, 2 * torch.finfo(dtype).eps)
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([5, 1, 3, 2, 5, 4, 3]) if with_lengths else None
    for act in ("tanh", "relu"):
        for t in (0, 2, 4):
            a = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)
            h = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)
            out_t = a.clone()
            h_state = h.clone() if with_lengths else None
            emu.forward_step(out_t, h_state, lengths, t, act, 2, 64)
            y = _phi(act)(a.double())
            if with_lengths:
                running = (lengths > t).unsqueeze(1)
                ref_out = torch.where(running, y, torch.zeros_like(y))
                ref_h = torch.where(running, y.to(dtype).double(), h.double())
                torch.testing.assert_close(h_state.double(), ref_h, rtol=tol, atol=tol)
            else:
                ref_out = y
            torch.testing.assert_close(out_t.double(), ref_out, rtol=tol, atol=tol)

            for reverse in (False, True):
                y_t = torch.tanh(torch.randn(B, H, generator=g, dtype=torch.float64)).to(dtype)
                if act == "relu":
                    y_t = torch.relu(y_t)
                gy_t = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)
                carry = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)
                ghn = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)
                ga = emu.backward_step(gy_t, carry, ghn, y_t, lengths, t, T, reverse, act, 2, 64)
                ref = reference_ga_step(gy_t, carry, y_t, ghn, t, T, lengths, reverse, act)
                scale = max(1.0, ref.abs().max().item())
                torch.testing.assert_close(ga.double(), ref, rtol=tol, atol=tol * scale)


def test_grid_barrier_kernel(emu):
    """The barrier microbenchmark's kernel, launched by its host code (rnn_ext::
    _grid_barrier_loop, on emulated device 0), counts its barriers once and finds every epoch
    check passed, on one block and on several, in both schedules (a kernel without its
    grid.sync fails the check: the block-greedy schedule runs a block's loop before its
    neighbour has written anything)."""

    def barrier(blocks, iters):
        counter = torch.zeros(2, dtype=torch.int64)
        emu.grid_barrier_loop(counter, blocks, iters)
        return tuple(counter.tolist())

    emu.set_device(0)
    try:
        for seed, interleaved in ((0, False), (3, False), (1, True)):
            emu.set_schedule(seed, interleaved)
            assert barrier(1, 3) == (3, 0)
            assert barrier(5, 7) == (7, 0)
            assert barrier(4, 0) == (0, 0)
    finally:
        emu.set_schedule(0, False)


def test_emulation_catches_kernel_defects(emu):
    """The emulation is a test that can fail: a barrier only half a block reaches, a write past
    the shared memory, a read of shared memory with no barrier after the write, lanes that
    shuffle with different masks, and a read of another block's data with no grid barrier."""
    with pytest.raises(RuntimeError, match="deadlock: 32 of 64 threads wait at a barrier"):
        emu.selftest("deadlock")
    with pytest.raises(RuntimeError, match="wrote past its dynamic shared memory of 256 bytes"):
        emu.selftest("smem_overflow")
    got = emu.selftest("missing_sync")
    assert torch.isnan(got).any(), "a read before the write must see the NaN poison"
    with pytest.raises(RuntimeError, match="different lane masks"):
        emu.selftest("shuffle_mask_mismatch")
    # A block reading another block's data behind only __syncthreads: the block-greedy
    # schedule runs the reader first for some seeds (never with the grid barrier).
    stale, control = [], []
    try:
        for seed in range(8):
            emu.set_schedule(seed, False)
            stale.append(bool(torch.isnan(emu.selftest("missing_grid_sync")[:64]).any()))
            control.append(bool(torch.isnan(emu.selftest("grid_sync")[:64]).any()))
    finally:
        emu.set_schedule(0, False)
    assert any(stale), "a missing grid barrier must show for some schedule"
    assert not any(control)


# ---------------------------------------------------------------------------------------------
# Sequence losses (csrc/cuda/seq_nll_kernels.cuh): per-row values against float64 math and
# float64 autograd of F.nll_loss / F.cross_entropy. The reductions' sums are ATen calls on the
# device, outside the kernels.

NO_BAD_ROW = 2**63 - 1
IGNORE = 2  # a real class, ignored (uint8 targets cannot hold -100)
LOSS_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _stored_tol(dtype):
    """Tolerance of a value stored in `dtype` (computed in float32 for the 16-bit dtypes)."""
    return {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 2 * torch.finfo(dtype).eps)


def _acc_tol(dtype):
    """Tolerance of a value kept in the accumulation type (float32, or float64)."""
    return 1e-12 if dtype == torch.float64 else 1e-5


def loss_case(T, B, C, dtype, tbf, target_dtype, with_weight, strided, seed):
    """x (T, B, C) (a transposed view when `strided`), target (B, T) if tbf else (T, B) with some
    IGNORE entries, weight (C,) (a strided view) or None; and the float64 per-row references:
    y (T, B), w_row (T, B) (0 where ignored)."""
    g = torch.Generator().manual_seed(seed)
    if strided:
        x = torch.randn(B, T, C, generator=g, dtype=torch.float64).transpose(0, 1)
    else:
        x = torch.randn(T, B, C, generator=g, dtype=torch.float64)
    # Rows whose logits spread over hundreds (exp overflows float32 unless the row's true max
    # is subtracted), and -inf at some classes that are not the target.
    x[1::3] = x[1::3] * 100
    y = torch.randint(0, C, (T, B), generator=g)
    x[2, :, 0] = float("-inf")
    x[4, 3] = float("-inf")
    y[2] = torch.where(y[2] == 0, 1, y[2])
    y[4, 3] = 5
    x[4, 3, 5] = 1.0  # the target's own logit stays finite
    x = x.to(dtype)
    y.view(-1)[::7] = IGNORE
    target = (y.t().contiguous() if tbf else y).to(target_dtype)
    weight = None
    if with_weight:
        weight = (torch.rand(2 * C, generator=g, dtype=torch.float64) + 0.5).to(dtype)[::2]
    w_row = torch.ones(T, B, dtype=torch.float64) if weight is None else weight.double()[y]
    w_row = torch.where(y == IGNORE, 0.0, w_row)
    return x, target, weight, y, w_row


def _in_target_layout(rows, tbf):
    return rows.t() if tbf else rows


def loss_cases(C=None):
    """(dtype, target_batch_first, target dtype, weight, strided), mixed so that each appears
    with each dtype. uint8 targets where the C classes fit in them (C <= 256), else int64."""
    small = torch.uint8 if C is None or C <= 256 else torch.int64
    for i, dtype in enumerate(LOSS_DTYPES):
        for j, (tbf, tdt, with_w, strided) in enumerate(
            [(False, torch.int64, False, False), (True, small, True, True),
             (True, torch.int64, True, False), (False, small, False, True)]
        ):
            yield dtype, tbf, tdt, with_w, strided, 10 * i + j


# T * B = 287 rows and 10619 elements: more than the 2 blocks of 256 threads (16 warps) the
# kernels are launched with here, so every grid-stride loop takes several turns; C > 32, so
# each lane of the cross-entropy's warp reads one or two classes and both halves of the warp
# hold classes (a missing level of its shuffle reductions shows).
LT, LB, LC = 7, 41, 37
# Also: C over the cross-entropy backward's chunk of 1024 classes (kCeChunk; two chunks per
# row, the second partial, 40 units for 16 warps); C < 32 (most lanes see no class: their
# empty log-sum-exp state takes part in the warp's merge).
LOSS_SHAPES = [(LT, LB, LC), (5, 8, 1100), (5, 7, 6)]


def _check_forward_rows(loss, row_w, bad, ref_rows, w_row, none, tbf, target, dtype, where):
    """A forward kernel's results against float64 rows (T, B): no bad row; the row weights; for
    reduction none the loss in the target's shape and the input's dtype, else the float64
    per-row losses."""
    assert bad == NO_BAD_ROW, where
    torch.testing.assert_close(row_w, w_row.reshape(-1), rtol=1e-12, atol=1e-12)
    if none:
        assert loss.dtype == dtype and loss.shape == target.shape, where
        torch.testing.assert_close(loss.double(), _in_target_layout(ref_rows, tbf),
                                   rtol=_stored_tol(dtype), atol=_stored_tol(dtype),
                                   msg=lambda m: where + m)
    else:
        torch.testing.assert_close(loss, ref_rows.reshape(-1), rtol=_acc_tol(dtype),
                                   atol=_acc_tol(dtype), msg=lambda m: where + m)


@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=str)
def test_seq_loss_forward_kernels(emu, shape):
    for dtype, tbf, tdt, with_w, strided, seed in loss_cases(shape[2]):
        x, target, weight, y, w_row = loss_case(*shape, dtype, tbf, tdt, with_w, strided, seed)
        where = f"{dtype}, target_batch_first={tbf}, target {tdt}, weight={with_w}, " \
                f"strided={strided}"
        x64 = x.double()
        yc = torch.where(y == IGNORE, 0, y)
        x_y = x64.gather(2, yc.unsqueeze(2)).squeeze(2)
        nll_rows = torch.where(y == IGNORE, 0.0, -w_row * x_y)
        lse = torch.logsumexp(x64, dim=2)
        ce_rows = torch.where(y == IGNORE, 0.0, w_row * (lse - x_y))
        for none in (True, False):
            loss, row_w, bad = emu.nll_forward(x, target, weight, IGNORE, none, tbf, 2)
            _check_forward_rows(loss, row_w, bad, nll_rows, w_row, none, tbf, target, dtype,
                                "nll: " + where)
            loss, row_w, row_max, log_sum, bad = emu.ce_forward(x, target, weight, IGNORE, none,
                                                                tbf, 2)
            _check_forward_rows(loss, row_w, bad, ce_rows, w_row, none, tbf, target, dtype,
                                "ce: " + where)
            assert torch.equal(row_max.double(), x64.amax(dim=2)), where  # exactly the max
            torch.testing.assert_close(log_sum.double(), lse - x64.amax(dim=2),
                                       rtol=_acc_tol(dtype), atol=_acc_tol(dtype),
                                       msg=lambda m: where + m)


@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=str)
def test_seq_loss_backward_kernels(emu, shape):
    import torch.nn.functional as F

    T, B, C = shape
    for dtype, tbf, tdt, with_w, strided, seed in loss_cases(C):
        x, target, weight, y, w_row = loss_case(T, B, C, dtype, tbf, tdt, with_w, strided, seed)
        stat = torch.float64 if dtype == torch.float64 else torch.float32
        total_weight = torch.tensor(w_row.sum().item(), dtype=stat)
        row_max = x.double().amax(dim=2)
        log_sum = torch.logsumexp(x.double() - row_max.unsqueeze(2), dim=2).to(stat)
        row_max = row_max.to(stat)
        w64 = None if weight is None else weight.double()
        g = torch.Generator().manual_seed(seed + 1)
        for reduction in ("none", "mean", "sum"):
            where = f"{dtype}, {reduction}, target_batch_first={tbf}, target {tdt}, " \
                    f"weight={with_w}, strided={strided}"
            if reduction == "none":
                grad_loss = torch.randn(target.shape, generator=g, dtype=torch.float64).to(dtype)
                seed_grad = _in_target_layout(grad_loss.double(), tbf).reshape(-1)
            else:
                grad_loss = torch.randn((), generator=g, dtype=torch.float64).to(dtype)
                seed_grad = grad_loss.double()
            for name, fn in (("nll", F.nll_loss), ("ce", F.cross_entropy)):
                x64 = x.double().detach().requires_grad_()
                ref_loss = fn(x64.reshape(T * B, C), y.reshape(-1), weight=w64,
                              ignore_index=IGNORE, reduction=reduction)
                (ref,) = torch.autograd.grad(ref_loss, x64, seed_grad)
                if name == "nll":
                    got, bad = emu.nll_backward(grad_loss, x, target, weight, IGNORE, reduction,
                                                tbf, total_weight, 2)
                else:
                    got, bad = emu.ce_backward(grad_loss, x, target, weight, IGNORE, reduction,
                                               tbf, row_max, log_sum, total_weight, 2)
                assert bad == NO_BAD_ROW, where
                assert got.dtype == dtype and got.shape == (T, B, C), where
                tol = _stored_tol(dtype)
                scale = max(1.0, ref.abs().max().item())
                torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol * scale,
                                           msg=lambda m: f"{name}: {where}{m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_cross_entropy_kernels_special_values_as_the_cpu_op(emu, dtype):
    """Rows with infinities and NaN: the CUDA kernels' log-sum-exp (one pass, online), loss and
    gradient are the CPU operator's, NaN for NaN (the CPU op computes m + log(sum exp(x - m))
    in two passes)."""
    import rnn_ext  # noqa: F401  (registers torch.ops.rnn_ext)

    C = 40  # lanes 0-7 of the warp read two classes, the others one
    rows = torch.randn(10, C, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    inf, nan = float("inf"), float("nan")
    rows[0] = -inf                      # all -inf
    rows[1, 17] = inf                   # one +inf
    rows[2, [4, 36]] = inf              # two +inf, in one lane
    rows[3, 35] = nan                   # a NaN
    rows[4] = -inf                      # -inf but at one class, read by lane 1 after a -inf
    rows[4, 33] = 3.0
    rows[5] *= 1e4                      # exp overflows unless the max is subtracted
    rows[6, :32] = -inf                 # each lane's first class -inf, its second finite
    rows[7] = 0.25                      # all equal: lse = 0.25 + log(C)
    rows[8, :] = -inf                   # -inf but in the last lane's only class
    rows[8, 31] = -2.0
    rows[9, 5] = -inf                   # an ordinary row with the target's logit -inf
    target = torch.tensor([[1, 17, 4, 0, 33, 7, 39, 12, 31, 5]])  # (T = 1, B = 10)
    x = rows.to(dtype).unsqueeze(0)  # (1, 10, C)
    cpu = torch.ops.rnn_ext.seq_cross_entropy_forward(x, target, None, -100, "none", False)
    loss, _, row_max, log_sum, bad = emu.ce_forward(x, target, None, -100, True, False, 2)
    assert bad == NO_BAD_ROW
    tol = dict(rtol=_acc_tol(dtype), atol=_acc_tol(dtype), equal_nan=True)
    torch.testing.assert_close(row_max, cpu[1], **tol)
    torch.testing.assert_close(log_sum, cpu[2], **tol)
    torch.testing.assert_close(loss.double(), cpu[0].double(), **tol)
    assert torch.isnan(log_sum[0, :4]).all() and not torch.isnan(log_sum[0, 4:]).any()
    tw = cpu[3]
    for reduction, gl in (("none", torch.ones(1, 10, dtype=dtype)), ("sum", torch.tensor(1.0))):
        gl = gl.to(dtype)
        for tgt in (target, torch.full_like(target, -100)):  # every row kept, every row ignored
            want = torch.ops.rnn_ext.seq_cross_entropy_backward(gl, x, tgt, None, -100,
                                                                reduction, False, cpu[1], cpu[2],
                                                                tw)
            got, bad = emu.ce_backward(gl, x, tgt, None, -100, reduction, False, cpu[1], cpu[2],
                                       tw, 2)
            assert bad == NO_BAD_ROW
            torch.testing.assert_close(got.double(), want.double(), rtol=_stored_tol(dtype),
                                       atol=_stored_tol(dtype), equal_nan=True)
    # an ignored row's gradient: NaN where its log_sum is (the first four rows), else 0
    assert got[0, :4].isnan().all() and torch.equal(got[0, 4:], torch.zeros_like(got[0, 4:]))


def test_cross_entropy_kernel_loss_accurate_beside_large_logits(emu):
    """The CUDA forward forms a confident row's loss as (m - x_y) + log_sum, not lse - x_y,
    as the CPU op (test_loss.py's test of the same name): within 1e-6 of float64 where
    lse - x_y was up to 5e-4 off."""
    T, B, C = 8, 16, 85
    for scale in (1.0, 50.0, 3000.0):
        x, target = confident_rows(T, B, C, scale)
        ref = torch.nn.functional.cross_entropy(x.double().reshape(-1, C),
                                                target.t().reshape(-1), reduction="none")
        loss, _, row_max, log_sum, bad = emu.ce_forward(x, target, None, -100, True, True, 2)
        assert bad == NO_BAD_ROW
        torch.testing.assert_close(loss.t().reshape(-1).double(), ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(row_max.double() + log_sum.double(),
                                   torch.logsumexp(x.double(), 2), rtol=1e-6, atol=0)


def test_cross_entropy_kernel_gradient_accurate_beside_huge_logits(emu):
    """The CUDA backward forms the softmax as exp((x - m) - log_sum) from the forward's m and
    log_sum (test_loss.py's test of the same name): rows that tie at 1e8, where a float32
    lse = m + log_sum rounds to m and exp(x - lse) gave the softmax [1, 1, 0, ...]."""
    C = 40  # lanes 0-7 read two classes
    for scale in (1e4, 1e8, 1e30):
        rows = torch.zeros(4, C)
        rows[0, [0, 33]] = scale                       # a tie at the top, in one lane
        rows[1] = torch.randn(C, generator=torch.Generator().manual_seed(1)) + scale
        rows[2] = -scale
        rows[2, 7] = scale
        rows[3, [5, 6]] = -scale                       # ties far below the others
        x = rows.unsqueeze(0)  # (T = 1, B = 4, C)
        target = torch.tensor([[0, 3, 7, 5]])  # (T, B)
        x64 = x.double().requires_grad_()
        ref_loss = torch.nn.functional.cross_entropy(x64.reshape(4, C), target.reshape(-1),
                                                     reduction="sum")
        (ref,) = torch.autograd.grad(ref_loss, x64)
        loss, _, row_max, log_sum, bad = emu.ce_forward(x, target, None, -100, True, False, 2)
        assert bad == NO_BAD_ROW
        got, bad = emu.ce_backward(torch.tensor(1.0), x, target, None, -100, "sum", False,
                                   row_max, log_sum, torch.tensor(4.0), 2)
        assert bad == NO_BAD_ROW
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"scale {scale}: {m}")


@pytest.mark.parametrize("tbf", [False, True], ids=["time-major", "batch-first"])
def test_seq_loss_kernels_record_the_first_bad_row(emu, tbf):
    """A target out of [0, C) that is not ignore_index: every kernel records the smallest such
    row r = t * B + b (the host then raises the CPU's IndexError)."""
    x, target, weight, y, _ = loss_case(LT, LB, LC, torch.float32, tbf, torch.int64, False,
                                        False, 0)
    bad_rows = [(5, 30), (2, 7), (6, 40)]  # (t, b); the smallest r is 2 * 41 + 7
    for t, b in bad_rows:
        if tbf:
            target[b, t] = LC + 3
        else:
            target[t, b] = -1
    want = min(t * LB + b for t, b in bad_rows)
    tw = torch.tensor(1.0)
    for none in (True, False):
        assert emu.nll_forward(x, target, None, IGNORE, none, tbf, 2)[2] == want
        _, _, row_max, log_sum, bad = emu.ce_forward(x, target, None, IGNORE, none, tbf, 2)
        assert bad == want
    gl = torch.tensor(1.0)
    assert emu.nll_backward(gl, x, target, None, IGNORE, "sum", tbf, tw, 2)[1] == want
    grad, bad = emu.ce_backward(gl, x, target, None, IGNORE, "sum", tbf, row_max, log_sum, tw,
                                2)
    assert bad == want
    assert not torch.isnan(grad).any(), "every element of the gradient is written"


# ---------------------------------------------------------------------------------------------
# The host code: csrc/cuda/elman_cuda.cu and seq_nll_cuda.cu, whole (planning, buffers, the
# cuBLAS step loop with ATen's CPU GEMMs standing in for cuBLAS, the persistent launches, the
# fallbacks, the gradients, the capture branches), their CUDA calls emulated by
# tests/cuda_emu/cuda_host_emu.h on a small device (4 SMs of an H200), against the CPU
# operators in float64.

HOST_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
GRAD_NAMES = ("grad_input", "grad_h_0", "grad_weight_ih", "grad_weight_hh", "grad_bias")


@pytest.fixture
def host(emu, monkeypatch):
    """The emulation module on emulated device 0, not capturing, in mode `auto` (each test sets
    its own); restored afterwards. The references are the CPU operators of rnn_ext."""
    pytest.importorskip("rnn_ext", reason="the references are rnn_ext's CPU operators")
    monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", "auto")
    emu.set_device(0)
    emu.set_capturing(False)
    yield emu
    emu.set_device(0)
    emu.set_capturing(False)


def _as64(args):
    return [None if a is None else a.double() for a in args]


def check_host_sequence(emu, T, B, I, H, dtype, act="tanh", reverse=False, lengths=None,
                        bias=True, output_mask=(True, True), seed=0):
    """elman_forward_cuda / elman_backward_cuda against the CPU operators in float64. The
    backward's reference is given the emulated forward's output (for 16-bit types the
    end-to-end float64 reference is ill-conditioned; see isolated_grads in test_cuda.py)."""
    args = make_args(T, B, I, H, dtype, bias, seed)
    tol = REL_TOL[dtype]
    out, h_n = emu.elman_forward(*args, act, reverse, lengths)
    ref_out, ref_h_n = torch.ops.rnn_ext.elman_forward(*_as64(args), act, reverse, lengths)
    assert out.dtype == h_n.dtype == dtype
    assert rel_err(out, ref_out) <= tol, f"output {rel_err(out, ref_out):.2e}"
    assert rel_err(h_n, ref_h_n) <= tol, f"h_n {rel_err(h_n, ref_h_n):.2e}"
    if lengths is not None:
        for b, n in enumerate(lengths.tolist()):
            assert (out[n:, b] == 0).all(), "padded steps must output exactly 0"
    g = torch.Generator().manual_seed(seed + 1)
    gy = torch.randn(T, B, H, generator=g, dtype=torch.float64).to(dtype)
    ghn = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)
    x, h_0, w_ih, w_hh = args[:4]
    got = emu.elman_backward(gy, ghn, x, h_0, w_ih, w_hh, out, act, reverse, lengths,
                             list(output_mask))
    ref = torch.ops.rnn_ext.elman_backward(gy.double(), ghn.double(),
                                           *_as64((x, h_0, w_ih, w_hh)), out.double(), act,
                                           reverse, lengths, list(output_mask))
    for name, a, r in zip(GRAD_NAMES, got, ref):
        if r is None:
            assert a is None, name
            continue
        assert a.dtype == dtype, name
        assert rel_err(a, r) <= tol, f"{name}: {rel_err(a, r):.2e}"


# (T, B, I, H): one block; 15 blocks (5 along B, 3 along H); a plan above the 48 KiB of
# shared memory a kernel gets without cudaFuncSetAttribute (float32: 50592 bytes).
HOST_SHAPES = [(5, 3, 4, 37), (4, 9, 5, 70), (3, 2, 3, 300)]
HOST_CASES = [("tanh", False, None, True), ("relu", True, [3, 1, 2], False),
              ("tanh", True, [3, 2, 1], True)]


@pytest.mark.parametrize("mode", ["off", "require"])
@pytest.mark.parametrize("dtype", HOST_DTYPES, ids=str)
def test_host_sequence_ops(host, monkeypatch, mode, dtype):
    """The cuBLAS step loop (off) and the persistent kernel (require), forward and backward,
    with and without biases, lengths and reverse, against the CPU operators."""
    monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", mode)
    shapes = HOST_SHAPES if dtype in (torch.float32, torch.float64) else HOST_SHAPES[:1]
    for T, B, I, H in shapes:
        if mode == "require" and dtype == torch.float64 and H == 300:
            continue  # no float64 plan fits 4 SMs (tested in test_host_fallbacks)
        for act, reverse, lens, bias in HOST_CASES:
            lengths = None if lens is None else torch.tensor(lens[:B] + [T] * (B - len(lens)))
            lengths = None if lengths is None else lengths.clamp(max=T)
            before = host.launch_counts()
            check_host_sequence(host, T, B, I, H, dtype, act, reverse, lengths, bias,
                                seed=T + B + H)
            launches, cooperative = (n - m for n, m in zip(host.launch_counts(), before))
            if mode == "require":
                assert (launches, cooperative) == (0, 2), "one persistent launch each way"
            else:
                assert cooperative == 0 and launches == 2 * T, "one pointwise launch a step"


def test_host_plans_use_opt_in_shared_memory(host, monkeypatch):
    """The planner raises each persistent kernel's shared-memory limit (cudaFuncSetAttribute)
    before it asks for the occupancy, so plans above the default 48 KiB per block are found
    (without it the driver answers 0 blocks for them), and such a plan launches."""
    like = torch.empty(0, dtype=torch.float32)
    for backward in (False, True):
        plan = host.persistent_plan(like, 2, 300, backward)
        assert plan[0] == 1 and plan[-1] > 48 * 1024, plan
    monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", "require")
    check_host_sequence(host, 3, 2, 3, 300, torch.float32, seed=9)


def test_host_plan_vector_matches_python_fields(host):
    """rnn_ext.ops.cuda_persistent_plan reads the _persistent_plan op's vector by the field
    order in rnn_ext/ops.py (_PLAN_FIELDS), written a second time in persistent_plan_cuda: the
    plan it decodes from the host code must be one of the planner's candidates, field for field
    (shapes with unlike values in every field, so a swap of two fields fails), and no plan
    decodes to None."""
    from rnn_ext import ops

    keys = [k for k in ops._PLAN_FIELDS if k != "padded"]
    decoded = []
    for dtype, acc_size in ((torch.float32, 4), (torch.float64, 8), (torch.bfloat16, 4)):
        like = torch.empty(0, dtype=dtype)
        for B, H in ((3, 37), (64, 96), (1, 200), (16, 5), (512, 64), (128, 128), (256, 32)):
            for backward in (False, True):
                plan = ops._plan_from_vector(host.persistent_plan(like, B, H, backward))
                assert plan is not None, (dtype, B, H, backward)
                assert plan["blocks"] == plan["nbt"] * plan["njt"]
                cands = host.candidate_plans(B, H, acc_size,
                                                              H200_SMEM_PER_BLOCK, 4)
                same = [c for c in cands if all(c[k] == plan[k] for k in keys)
                        and int(c["padded"]) == plan["padded"]]
                assert same, (f"{dtype} B={B} H={H} backward={backward}: {plan} is none of "
                              f"the {len(cands)} candidates")
                decoded.append(plan)
    # A swap of two fields shows only where they differ: every pair does in some plan
    # (padded, always 1 here, against the others).
    for a, b in itertools.combinations(ops._PLAN_FIELDS, 2):
        assert any(p[a] != p[b] for p in decoded), (a, b)
    host.set_device(1)  # no cooperative launch: no plan
    assert ops._plan_from_vector(host.persistent_plan(torch.empty(0), 3, 37, False)) is None
    with pytest.raises(RuntimeError, match="returned 11 values, expected 12"):
        ops._plan_from_vector([1] * 11)


@pytest.mark.parametrize("output_mask", [(True, False), (False, True), (False, False)],
                         ids=str)
@pytest.mark.parametrize("mode", ["off", "require"])
def test_host_backward_output_mask(host, monkeypatch, mode, output_mask):
    monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", mode)
    check_host_sequence(host, 4, 3, 4, 37, torch.float32, output_mask=output_mask, seed=5)


def test_host_fallbacks(host, monkeypatch):
    """auto falls back to the cuBLAS loop, with the same result, when no plan fits (float64,
    H = 300 on 4 SMs), when the device has no cooperative launch (device 1), and when the
    driver refuses the cooperative launch after planning (device 2: the output buffer still
    holds the input projection then); require says why instead."""
    for device, dtype, H, why in [
        (0, torch.float64, 300, "do not fit in the shared memory"),
        (1, torch.float32, 37, "does not support cooperative launches"),
        (2, torch.float32, 37, "driver refused the cooperative launch of 3 blocks"),
    ]:
        host.set_device(device)
        monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", "auto")
        before = host.launch_counts()
        check_host_sequence(host, 4, 3, 4, H, dtype, "tanh", True, torch.tensor([4, 2, 3]))
        assert host.launch_counts()[1] == before[1], f"device {device}: no persistent launch"
        monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", "require")
        args = make_args(4, 3, 4, H, dtype)
        with pytest.raises(RuntimeError, match=f"RNN_EXT_CUDA_PERSISTENT=require, but .*{why}"):
            host.elman_forward(*args, "tanh", False, None)
        like = torch.empty(0, dtype=dtype)
        assert (host.persistent_plan(like, 3, H, False)[0] == 1) == (device == 2)


def test_host_empty_sizes_and_t1(host, monkeypatch):
    """B = 0, I = 0, H = 0 (no launch), and T = 1 (the persistent path only under on/require;
    the backward's step loop does not run), against the CPU operators."""
    for mode in ("auto", "on"):
        monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", mode)
        for T, B, I, H in [(3, 0, 4, 5), (3, 2, 0, 5), (3, 2, 4, 0), (1, 3, 4, 37)]:
            check_host_sequence(host, T, B, I, H, torch.float32, seed=B + I + H)


@pytest.mark.parametrize("mode", ["off", "require"])
def test_host_backward_non_finite_weight_hh_with_lengths(host, monkeypatch, mode):
    """A NaN in W_hh with lengths: the valid steps' gradients are those of the CPU operator,
    NaN for NaN and value for value. The carry into a sequence's last valid step is
    (0 of the padded step) @ W_hh, 0 * NaN = NaN; the kernels spread it into every valid step
    (found by a randomized sweep) until they took only grad_h_n at that step."""
    monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", mode)
    T, B, I, H = 4, 2, 2, 3
    # One valid step each: through more, the NaN (in the forward's output row 0 already)
    # reaches every gradient on the CPU too, leaving nothing finite to compare.
    lengths = torch.tensor([1, 1])
    for reverse in (False,):  # in reverse every first backward step is u = 0: no carry
        args = make_args(T, B, I, H, torch.float64, True, seed=3)
        args[3][0, 1] = float("nan")
        ref_out, _ = torch.ops.rnn_ext.elman_forward(*args, "tanh", reverse, lengths)
        g = torch.Generator().manual_seed(4)
        gy = torch.randn(T, B, H, generator=g, dtype=torch.float64)
        ghn = torch.randn(B, H, generator=g, dtype=torch.float64)
        bw = (gy, ghn, *args[:4], ref_out, "tanh", reverse, lengths, [True, True])
        got = host.elman_backward(*bw)
        ref = torch.ops.rnn_ext.elman_backward(*bw)
        assert ref[2].isfinite().any() and ref[4].isfinite().any()  # values to compare
        for name, a, r in zip(GRAD_NAMES, got, ref):
            torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12, equal_nan=True,
                                       msg=lambda m: f"reverse={reverse} {name}: {m}")


@pytest.mark.parametrize("dtype", HOST_DTYPES, ids=str)
def test_host_cell_ops(host, dtype):
    """elman_cell_forward_cuda / elman_cell_backward_cuda (always the cuBLAS path) against the
    CPU cell operators in float64."""
    x, h, w_ih, w_hh, b_ih, b_hh = make_args(1, 6, 5, 37, dtype, seed=3)
    x = x[0]
    tol = REL_TOL[dtype]
    for act in ("tanh", "relu"):
        hy = host.elman_cell_forward(x, h, w_ih, w_hh, b_ih, b_hh, act)
        ref = torch.ops.rnn_ext.elman_cell_forward(*_as64((x, h, w_ih, w_hh, b_ih, b_hh)), act)
        assert hy.dtype == dtype and rel_err(hy, ref) <= tol
        g = torch.randn(6, 37, generator=torch.Generator().manual_seed(4)).to(dtype)
        got = host.elman_cell_backward(g, x, h, w_ih, w_hh, hy, act)
        want = torch.ops.rnn_ext.elman_cell_backward(g.double(), *_as64((x, h, w_ih, w_hh)),
                                                     hy.double(), act)
        for name, a, r in zip(GRAD_NAMES, got, want):
            assert a.dtype == dtype and rel_err(a, r) <= tol, name


def test_host_grid_barrier_loop(host):
    """_grid_barrier_loop's host code: its bound on the grid (the blocks resident at once:
    8 per SM of 256 threads, 1 per SM with 200 KiB of shared memory), its errors, the count."""
    counter = torch.zeros(2, dtype=torch.int64)
    host.grid_barrier_loop(counter, 32, 3)
    host.grid_barrier_loop(counter, 4, 2, 200 * 1024)
    assert counter.tolist() == [5, 0]
    with pytest.raises(ValueError, match=r"blocks must be in \[1, 32\] .* got 33"):
        host.grid_barrier_loop(counter, 33, 1)
    with pytest.raises(ValueError, match=r"blocks must be in \[1, 4\] .* got 5"):
        host.grid_barrier_loop(counter, 5, 1, 200 * 1024)
    with pytest.raises(ValueError, match=r"smem must be in \[0, 232448\] bytes"):
        host.grid_barrier_loop(counter, 1, 1, 232449)
    host.set_device(1)
    with pytest.raises(RuntimeError, match="does not support cooperative launches"):
        host.grid_barrier_loop(counter, 1, 1)
    assert counter.tolist() == [5, 0]


class NoReadBack(torch.utils._python_dispatch.TorchDispatchMode):
    """Raises on a read-back of a tensor's value to the host (aten::_local_scalar_dense, what
    .item() runs), which CUDA-graph capture forbids; it sees the ATen calls that the
    extension's C++ code makes too. (A copy to the CPU, the other kind of read-back, cannot
    show here: every emulated tensor is on the CPU already.)"""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("a read-back (.item()) during capture")
        return func(*args, **(kwargs or {}))


def test_host_capture_branches(host):
    """While a CUDA graph is being captured (emulated: the capture status the host code reads;
    read-backs forbidden by NoReadBack): the Elman ops check lengths on the device with a
    device-side assert, and the loss ops their targets (on the CPU, at::_assert_async raises at
    once, with its message); without capture, the same bad values give the CPU's errors."""
    args = make_args(3, 2, 4, 5, torch.float32)
    lengths = torch.tensor([3, 1])
    ref = torch.ops.rnn_ext.elman_forward(*args, "tanh", False, lengths)
    x = torch.randn(3, 2, 7).log_softmax(-1)
    good = torch.tensor([[1, 2, 3], [4, 5, -100]])
    bad = torch.tensor([[1, 2, 3], [4, 9, -100]])
    ref_loss = torch.ops.rnn_ext.seq_nll_loss_forward(x, good, None, -100, "mean", True)
    host.set_capturing(True)
    with NoReadBack():
        for lens in (None, lengths):
            out, h_n = host.elman_forward(*args, "tanh", False, lens)
            gx = host.elman_backward(torch.ones_like(out), torch.ones_like(h_n), *args[:4], out,
                                     "tanh", False, lens, [True, True])[0]
            assert gx.shape == args[0].shape
        loss = host.seq_nll_loss_forward(x, good, None, -100, "mean", True)[0]
        with pytest.raises(RuntimeError, match=r"a target value is outside \[0, C\) and is "
                                               "not ignore_index .checked on the device"):
            host.seq_nll_loss_forward(x, bad, None, -100, "mean", True)
        for bad_lengths in ([0, 1], [3, 4]):
            with pytest.raises(RuntimeError, match=r"a length is outside \[1, T\] .checked on "
                                                   "the device"):
                host.lengths_on_device(torch.tensor(bad_lengths), "cpu", 3)
        with pytest.raises(RuntimeError, match="lengths is on cpu, but the current CUDA stream "
                                               "is being captured into a CUDA graph, where it "
                                               "cannot be copied to the device; pass lengths "
                                               "on input's device meta"):
            host.lengths_on_device(lengths, "meta", 3)
    host.set_capturing(False)
    assert rel_err(out, ref[0]) <= 2e-5 and rel_err(h_n, ref[1]) <= 2e-5
    torch.testing.assert_close(loss, ref_loss[0])
    with pytest.raises(IndexError, match="9"):
        host.seq_nll_loss_forward(x, bad, None, -100, "mean", True)
    with pytest.raises(ValueError, match=r"lengths\[0\] = 0"):
        host.lengths_on_device(torch.tensor([0, 1]), "cpu", 3)
    assert host.lengths_on_device(lengths, "meta", 3).device.type == "meta"
    with pytest.raises(AssertionError, match="a read-back"), NoReadBack():
        host.seq_nll_loss_forward(x, good, None, -100, "mean", True)  # the check sees .item()


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_host_loss_ops(host, reduction):
    """The four loss entry points of seq_nll_cuda.cu against the CPU operators: every dtype,
    both target layouts and index types, weights, strided inputs; an out-of-range target
    raises the CPU's IndexError, naming the same value and position."""
    for dtype, tbf, tdt, with_w, strided, seed in loss_cases():
        x, target, weight, _, _ = loss_case(LT, LB, LC, dtype, tbf, tdt, with_w, strided, seed)
        where = f"{dtype}, tbf={tbf}, {tdt}, weight={with_w}, strided={strided}"
        tol = _stored_tol(dtype)
        for kind, fwd, bwd in [
            ("nll", "seq_nll_loss_forward", "seq_nll_loss_backward"),
            ("ce", "seq_cross_entropy_forward", "seq_cross_entropy_backward"),
        ]:
            xx = x.double().log_softmax(-1).to(dtype) if kind == "nll" else x
            fargs = (xx, target, weight, IGNORE, reduction, tbf)
            got = getattr(host, fwd)(*fargs)
            ref = getattr(torch.ops.rnn_ext, fwd)(*fargs)
            for a, r in zip(got, ref):
                assert a.dtype == r.dtype and a.shape == r.shape, where
                torch.testing.assert_close(a.double(), r.double(), rtol=tol, atol=tol,
                                           msg=lambda m: f"{kind} forward, {where}: {m}")
            g = torch.linspace(-1, 1, got[0].numel(), dtype=torch.float64)
            g = g.reshape(got[0].shape).to(dtype)
            extra = tuple(ref[1:])  # the statistics: total_weight (nll); m, log_sum, too (ce)
            ga = getattr(host, bwd)(g, *fargs, *extra)
            gr = getattr(torch.ops.rnn_ext, bwd)(g, *fargs, *extra)
            scale = max(1.0, gr.double().abs().max().item())
            torch.testing.assert_close(ga.double(), gr.double(), rtol=tol, atol=tol * scale,
                                       msg=lambda m: f"{kind} backward, {where}: {m}")
    # C = 0, every target ignored: the statistics are the CPU op's (m = -inf, log_sum = log(0))
    x0, t0 = torch.empty(LT, LB, 0), torch.full((LB, LT), IGNORE)
    got = host.seq_cross_entropy_forward(x0, t0, None, IGNORE, reduction, True)
    ref = torch.ops.rnn_ext.seq_cross_entropy_forward(x0, t0, None, IGNORE, reduction, True)
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, equal_nan=True)
    assert torch.equal(got[2], torch.full((LT, LB), -float("inf")))
    x, target, _, _, _ = loss_case(LT, LB, LC, torch.float32, True, torch.int64, False, False, 1)
    target[3, 5] = LC + 2
    for fwd in ("seq_nll_loss_forward", "seq_cross_entropy_forward"):
        with pytest.raises(IndexError) as got:
            getattr(host, fwd)(x, target, None, IGNORE, reduction, True)
        with pytest.raises(IndexError) as want:
            getattr(torch.ops.rnn_ext, fwd)(x, target, None, IGNORE, reduction, True)
        assert str(got.value).replace("_cuda", "") == str(want.value).replace("_cpu", "")


def test_host_plan_of_huge_shapes_is_none_not_a_wrapped_grid(host):
    """B = 2^31 with H = 1 made a candidate with bt = 1 whose block count wrapped to a
    negative int: it passed the grid checks, won on cost, and would be launched with
    gridDim.x = 2^31 (over CUDA's limit). B * H beyond int64 wrapped to 0 and gave an "ok"
    plan. Such shapes have no plan now (the cuBLAS path runs), and B or H < 1 neither."""
    from rnn_ext import ops

    like = torch.empty(0, dtype=torch.float32)
    for B, H in ((2 ** 31, 1), (2 ** 30, 3), (2 ** 62, 4), (2 ** 61, 8), (1, 2 ** 21)):
        for backward in (False, True):
            assert ops._plan_from_vector(host.persistent_plan(like, B, H, backward)) is None, \
                (B, H, backward)
    # Candidates: every grid in [1, 2^20] blocks; at B = 2^31 none is left (bt = 1 wrapped).
    assert host.candidate_plans(2 ** 31, 1, 4, H200_SMEM_PER_BLOCK, 4) == []
    cands = host.candidate_plans(2 ** 20, 1, 4, H200_SMEM_PER_BLOCK, 4)
    assert cands and all(1 <= c["nbt"] * c["njt"] <= 2 ** 20 for c in cands)
    for B, H in ((0, 8), (8, 0), (-1, 8)):
        with pytest.raises(ValueError, match="B and H must be >= 1"):
            host.persistent_plan(like, B, H, False)


@pytest.mark.parametrize("mode", ["off", "require"])
@pytest.mark.parametrize("reverse", [False, True])
def test_host_nan_padding_never_read(host, monkeypatch, mode, reverse):
    """Both CUDA paths' backward with NaN in the padded steps' input: every gradient finite and
    equal to the CPU operator's (the whole-sequence weight GEMMs read the padded rows as 0).
    With every length T (no padded step) the gradients are bit for bit those without lengths
    (the host code then skips the masks)."""
    monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", mode)
    g = torch.Generator().manual_seed(0)
    T, B, I, H = 5, 3, 4, 37
    lengths = torch.tensor([5, 2, 3])
    x = torch.randn(T, B, I, generator=g)
    for b, n in enumerate(lengths.tolist()):
        x[n:, b] = float("nan")
    h0 = torch.randn(B, H, generator=g)
    w_ih, w_hh = torch.randn(H, I, generator=g) / 3, torch.randn(H, H, generator=g) / 7
    b_ih, b_hh = torch.randn(H, generator=g), torch.randn(H, generator=g)
    out, hn = host.elman_forward(x, h0, w_ih, w_hh, b_ih, b_hh, "tanh", reverse, lengths)
    assert torch.isfinite(out).all() and torch.isfinite(hn).all()
    gy, ghn = torch.randn(T, B, H, generator=g), torch.randn(B, H, generator=g)
    args = (gy, ghn, x, h0, w_ih, w_hh, out, "tanh", reverse)
    got = host.elman_backward(*args, lengths, [True, True])
    ref = torch.ops.rnn_ext.elman_backward(*args, lengths, [True, True])
    for i, (a, r) in enumerate(zip(got, ref)):
        assert torch.isfinite(a).all(), i
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4, msg=lambda m, i=i: f"{i}: {m}")

    x_full = torch.randn(T, B, I, generator=g)
    out, _ = host.elman_forward(x_full, h0, w_ih, w_hh, b_ih, b_hh, "tanh", reverse, None)
    args = (gy, ghn, x_full, h0, w_ih, w_hh, out, "tanh", reverse)
    full = host.elman_backward(*args, torch.full((B,), T), [True, True])
    none = host.elman_backward(*args, None, [True, True])
    assert all(torch.equal(a, b) for a, b in zip(full, none))
